"""Write one benchmark's section of bench/RESULTS.md, between ``<!-- name -->`` and ``<!-- /name -->`` markers."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmark results

Measured on the project's development machine (2 cores, shared and noisy): compare the ratios against the
baseline run side by side in the same run, not absolute figures across runs. Each section says the command that
produced it; re-running a benchmark rewrites its own section.
"""


def machine() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, " \
           f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"


def write_section(name: str, markdown: str) -> None:
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")

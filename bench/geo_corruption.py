"""Corrupt geo databases: how often opening or reading one kills the process, the gate against maxminddb alone.

maxminddb's C reader crashes the process (SIGSEGV) on some corrupt files, where an error was due. The gate opens a
file through checks of its own first (``exportgate.mmdbfile``): the pure-Python reader's metadata and probe lookups,
and map keys that must be text. This flips random bytes in (and sometimes truncates) the test databases built from
geodata/networks.yaml, then, in a child process per file, opens each corrupted file and looks up one address of
every network in networks.yaml: once through the gate's locator, once with ``maxminddb.open_database`` alone (the
baseline). A crash is a child killed by a signal; "at open" if opening alone already kills it. A file that loads is
compared with the intact one: the same country for every address; some lookups failing (the gate refuses those
downloads); some addresses now unknown (the pack's rule for unknown locations decides them); or another country for
some address; for the last two, whether an embargoed country's address is among them. The test databases are tiny (16 networks, about 3 KiB), so the gate's probe lookups
reach most of their data: on a real database they reach far less, and more corruptions go unnoticed until a lookup.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugin"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from exportgate import geodata  # noqa: E402
from results import machine, write_section  # noqa: E402

BUILT = 1764288000  # 2025-11-28: a fixed build date, so the same seed corrupts the same bytes
EMBARGOED = {"CU", "IR", "KP", "SD", "SY"}
FAILED = "lookup failed"
OUTCOMES = ("refused at open", "another error at open", "loaded, same answers", "loaded, some lookups failed",
            "loaded, some now unknown", "unknown: an embargoed country's", "loaded, another country",
            "another: an embargoed country's", "crashed at open", "crashed at a lookup")
SAME, FAILURES, UNKNOWN, UNKNOWN_EMBARGOED, ANOTHER, ANOTHER_EMBARGOED = 0, 5, 6, 7, 8, 9
REFUSED, OTHER_ERROR = 2, 3


def corruptions(good: bytes, count: int, seed: int) -> list[bytes]:
    """``count`` copies of ``good`` with 1 to 8 random bytes changed, a fifth of them also cut short."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(good)
        for _ in range(rnd.choice((1, 2, 4, 8))):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        if rnd.random() < 0.2:
            data = data[: rnd.randrange(len(data))]
        out.append(bytes(data))
    return out


def in_child(action: Callable[[], int]) -> int | None:
    """Run ``action`` in a forked child: the status it returns, or ``None`` if a signal killed the child."""
    pid = os.fork()
    if pid == 0:
        code = OTHER_ERROR
        try:
            code = action()
        except BaseException:  # noqa: BLE001, S110 - an error is an outcome here, not a crash
            pass
        finally:
            os._exit(code if isinstance(code, int) else OTHER_ERROR)  # never back into the parent's code
    _, status = os.waitpid(pid, 0)
    return None if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def compared(answers: Sequence[str | None], expected: Sequence[str | None]) -> int:
    """How the answers from a corrupted file differ from the intact file's, the worst first: another country for
    some address (of an embargoed country's address, or not), an unknown location where there was a country (the
    pack's rule for unknown locations decides those), only lookups failing (the gate refuses those downloads)."""
    pairs = [(a, e) for a, e in zip(answers, expected, strict=True) if a != FAILED and a != e]
    another = [e for a, e in pairs if a is not None]
    if another:
        return ANOTHER_EMBARGOED if EMBARGOED.intersection(another) else ANOTHER
    unknown = [e for a, e in pairs if a is None]
    if unknown:
        return UNKNOWN_EMBARGOED if EMBARGOED.intersection(unknown) else UNKNOWN
    return SAME if FAILED not in answers else FAILURES


def gate_answers(path: Path, addresses: Sequence[str]) -> list[str | None] | None:
    """The country the gate's locator gives each address; ``None`` if it refuses the file."""
    from exportgate.errors import GeoDatabaseError
    from exportgate.geo import build_locator

    try:
        locator = build_locator(database=path, check_interval=3600, cache_size=0)
    except GeoDatabaseError:
        return None
    answers = []
    for address in addresses:
        location = locator.locate(address)
        answers.append(FAILED if location.unknown_reason == "lookup-failed" else location.country)
    return answers


def plain_answers(path: Path, addresses: Sequence[str]) -> list[str | None] | None:
    """The country maxminddb's own reader gives each address; ``None`` if it refuses the file."""
    import maxminddb

    try:
        reader = maxminddb.open_database(str(path))
    except Exception:  # noqa: BLE001 - refused at open
        return None
    answers: list[str | None] = []
    for address in addresses:
        try:
            record = reader.get(address)
        except Exception:  # noqa: BLE001 - an error, not a crash
            answers.append(FAILED)
            continue
        country = record.get("country") if isinstance(record, dict) else None
        answers.append(country.get("iso_code") if isinstance(country, dict) else None)
    return answers


def outcome(read: Callable[[], list[str | None] | None], expected: Sequence[str | None],
            opened: Callable[[], object]) -> list[str]:
    def action() -> int:
        answers = read()
        return REFUSED if answers is None else compared(answers, expected)

    status = in_child(action)
    if status is None:
        return ["crashed at open" if in_child(lambda: (opened(), SAME)[1]) is None else "crashed at a lookup"]
    return {SAME: ["loaded, same answers"], FAILURES: ["loaded, some lookups failed"],
            UNKNOWN: ["loaded, some now unknown"],
            UNKNOWN_EMBARGOED: ["loaded, some now unknown", "unknown: an embargoed country's"],
            ANOTHER: ["loaded, another country"],
            ANOTHER_EMBARGOED: ["loaded, another country", "another: an embargoed country's"],
            REFUSED: ["refused at open"]}.get(status, ["another error at open"])


def addresses_of(networks: Sequence[dict[str, object]]) -> list[str]:
    """One address inside each network (its second), and a few outside all of them."""
    import ipaddress

    inside = [str(ipaddress.ip_network(str(n["network"])).network_address + 1) for n in networks]
    return [*inside, "8.8.4.4", "1.2.3.4", "9.9.9.9", "2001:db8::1", "81.2.69.142"]


def run(args: argparse.Namespace) -> str:
    networks = geodata.load_networks(REPO / "geodata" / "networks.yaml")
    addresses = addresses_of(networks)
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geo-corruption-") as work:
        folder = Path(work)
        for kind in ("Country", "City"):
            intact = geodata.build(networks, folder / f"intact-{kind}.mmdb", kind=kind, build_epoch=BUILT)
            expected = {"gate": gate_answers(intact, addresses), "maxminddb alone": plain_answers(intact, addresses)}
            counts: dict[str, Counter[str]] = {who: Counter() for who in expected}
            path = folder / f"{kind}.mmdb"
            for data in corruptions(intact.read_bytes(), args.files, args.seed):
                path.write_bytes(data)
                counts["gate"].update(outcome(lambda path=path: gate_answers(path, addresses), expected["gate"],
                                              lambda path=path: gate_answers(path, [])))
                counts["maxminddb alone"].update(outcome(lambda path=path: plain_answers(path, addresses),
                                                         expected["maxminddb alone"],
                                                         lambda path=path: plain_answers(path, [])))
            for who, counted in counts.items():
                rows.append((kind, who, counted))
                print(kind, who, dict(counted), flush=True)
    elapsed = time.monotonic() - started
    lines = [
        "## Corrupt geo databases (issue #3: never crash a worker)",
        "",
        (f"`.venv/bin/python bench/geo_corruption.py --files {args.files} --seed {args.seed}` — {machine()}, "
         f"{elapsed:.0f} s"),
        "",
        (f"{args.files:,} corrupted copies of each test database (geodata/networks.yaml built as a Country and a "
         "City database: 1 to 8 random bytes changed, a fifth also cut short), each opened in a child process and "
         f"asked for {len(addresses)} addresses (one in every network, and a few outside): through the gate's "
         "locator, and with `maxminddb.open_database` alone (its C reader)."),
        "",
        "| database | opened by | " + " | ".join(OUTCOMES) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in OUTCOMES) + " |",
    ]
    for kind, who, counted in rows:
        lines.append(f"| {kind} | {who} | " + " | ".join(f"{counted[o]:,}" for o in OUTCOMES) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3000, help="corrupted copies of each database")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    markdown = run(args)
    print(markdown)
    if not args.no_write:
        write_section("geo-corruption", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

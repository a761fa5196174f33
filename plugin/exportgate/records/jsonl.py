"""A sink that writes committed records as JSON lines, for log shippers (Vector, Fluent Bit, …).

One canonical JSON object per record, with its chain, seq, prev_hash and hash, so a copy kept
elsewhere can be checked against the store. Lines are written and flushed once per committed
batch. Give a path (opened for append, created with its directory) or ``"-"`` for standard
output (looked up at each write, so a replaced ``sys.stdout`` is honoured).

Caveat: this is a copy, written after the commit. A failing sink is logged and counted by the
recorder but does not stop downloads; the store is the system of record.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Sequence
from typing import IO

from exportgate.errors import ConfigError
from exportgate.records.chain import Record, canonical_text

_quote = json.encoder.encode_basestring


def record_line(record: Record) -> str:
    """``canonical(record.to_dict())`` plus a newline, reusing the body text already encoded."""
    body_json = record.body_json or canonical_text(record.body)
    # Keys in sorted order, as canonical() would put them.
    return (
        f'{{"at":{_quote(record.at)},"body":{body_json},"chain":{_quote(record.chain)},'
        f'"hash":{_quote(record.hash)},"id":{_quote(record.id)},"kind":{_quote(record.kind)},'
        f'"prev_hash":{_quote(record.prev_hash)},"seq":{int(record.seq)}}}\n'
    )


class JsonLinesSink:
    """Append committed records to a file, or to standard output with ``target="-"``."""

    def __init__(self, target: str) -> None:
        if not isinstance(target, str) or not target:
            raise ConfigError(f"JSON-lines sink target {target!r} must be a path or '-'")
        self.target = target
        self.lines = 0
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if target != "-":
            path = os.path.abspath(target)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                # newline="\n": one record per line on every platform; line-buffering is not
                # wanted, write() flushes once per batch.
                self._file = open(path, "a", encoding="utf-8", newline="\n")  # noqa: SIM115
            except OSError as exc:
                raise ConfigError(
                    f"cannot open JSON-lines sink {target}: {exc.strerror or exc}"
                ) from None

    def write(self, records: Sequence[Record]) -> None:
        text = "".join(map(record_line, records))
        with self._lock:
            out = self._file if self._file is not None else sys.stdout
            out.write(text)  # raises on a closed file or a full disk: the recorder counts it
            out.flush()
            self.lines += len(records)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            elif self.target == "-":
                sys.stdout.flush()

    def __repr__(self) -> str:
        return f"JsonLinesSink({self.target!r})"

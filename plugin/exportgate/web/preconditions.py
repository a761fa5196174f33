"""Conditional and range requests for a file, in the order RFC 9110 (section 13.2.2) evaluates them.

:func:`evaluate` says what static mode answers a ``GET``/``HEAD`` for a file with these validators: the whole file,
one range of it, ``304``, ``412`` or ``416``. Preconditions come before ``Range``: a client resuming a download
with ``If-Match: <old etag>`` after the file was replaced must get ``412``, never the new version's bytes spliced
onto the old ones (werkzeug's ``make_conditional`` answers the range first).

* ``If-Match``: strong comparison, ``*`` matches an existing file; else ``If-Unmodified-Since`` (an invalid date is
  ignored) -> ``412``;
* ``If-None-Match``: weak comparison -> ``304``; else, ``If-Modified-Since`` -> ``304``;
* ``Range`` (``GET`` only, section 14.2): one ``bytes`` range is served (a suffix longer than the file is the whole
  file, section 14.1.3, as is an empty file's suffix); several ranges, another unit or a malformed value (a position
  past 19 digits too) are served as the whole file (a server may ignore ``Range``); a first byte past the end is
  ``416``. ``If-Range`` must match the ETag strongly (a weak
  tag never does) or equal ``Last-Modified``, else the whole file is served.

Pure: no I/O, no web framework.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from werkzeug.http import parse_date, parse_etags

# Positions of at most 19 digits (beyond any file's size); a longer one is no range this server reads: the whole file.
_RANGE = re.compile(r"\s*bytes\s*=\s*(?:(\d{1,19})\s*-\s*(\d{0,19})|-\s*(\d{1,19}))\s*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class FileValidators:
    etag: str
    """The strong entity tag, unquoted."""
    mtime: int
    """Last-Modified, in whole seconds (what the header can say)."""
    size: int


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    """200 (the whole file), 206 (``start``, ``length``), 304, 412 or 416."""
    start: int = 0
    length: int = 0


def evaluate(headers: dict[str, str], method: str, file: FileValidators) -> Answer:
    """What to answer for ``file``; ``headers`` are the request's, by lower-case name."""
    if_match = headers.get("if-match")
    if if_match is not None:
        tags = parse_etags(if_match)
        if not (tags.star_tag or tags.contains(file.etag)):
            return Answer(412)
    else:
        since = _date(headers.get("if-unmodified-since"))
        if since is not None and file.mtime > since:
            return Answer(412)
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = parse_etags(if_none_match)
        if tags.star_tag or tags.contains_weak(file.etag):
            return Answer(304) if method in ("GET", "HEAD") else Answer(412)
    elif method in ("GET", "HEAD"):
        since = _date(headers.get("if-modified-since"))
        if since is not None and file.mtime <= since:
            return Answer(304)
    whole = Answer(200, 0, file.size)
    value = headers.get("range")
    if method != "GET" or value is None or not _if_range_holds(headers.get("if-range"), file):
        return whole
    match = _RANGE.fullmatch(value)
    if match is None:  # several ranges, another unit, or not a range at all: the whole file
        return whole
    first, last, suffix = match.groups()
    if suffix is not None:
        if file.size == 0 and int(suffix) > 0:
            return whole  # the one range an empty file satisfies: all of it (RFC 9110, 14.1.1)
        length = min(int(suffix), file.size)
        if length == 0:
            return Answer(416)
        return Answer(206, file.size - length, length)
    start = int(first)
    if start >= file.size:
        return Answer(416)
    end = file.size - 1 if not last else min(int(last), file.size - 1)
    if end < start:  # "bytes=9-5": not a valid range; ignored
        return whole
    return Answer(206, start, end - start + 1)


def _if_range_holds(value: str | None, file: FileValidators) -> bool:
    if value is None:
        return True
    value = value.strip()
    if value.startswith("W/"):
        return False  # a weak tag never matches (RFC 9110, 13.1.5)
    if value.startswith('"'):
        return value == f'"{file.etag}"'
    since = _date(value)
    return since is not None and since == file.mtime


def _date(value: str | None) -> int | None:
    parsed = parse_date(value) if value else None
    if parsed is None:
        return None
    return int(parsed.replace(tzinfo=parsed.tzinfo or dt.UTC).timestamp())


__all__ = ["Answer", "FileValidators", "evaluate"]

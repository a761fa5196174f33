"""Path globs of the classification manifest: the syntax, and its translation to linear-time regexes.

A manifest ``path`` rule is a glob matched against the whole request path (it starts with ``/``):

- ``*`` — any characters within one segment;
- ``**`` — a whole segment standing for any number of segments (``/a/**`` is everything under ``/a/``;
  ``**`` inside a segment is an error);
- ``?`` — one character;
- ``[abc]``, ``[a-z]``, ``[!abc]`` — one character of a set (never ``/``).

There are no escapes: write ``[*]``, ``[?]``, ``[[]`` for a literal ``*``, ``?``, ``[``.

:func:`compile_glob` checks one glob (a ``ValueError`` whose message is for the manifest author) and returns
a :class:`Glob`: the regular expression source, the specificity counts the catalog ranks globs by (literal
characters, ``**``, other wildcards), and the literal parts :mod:`exportgate.globindex` files it under.

Caveat — speed: a glob meets attacker-chosen paths, so its regex must not backtrack without bound. Each ``*``
and ``**`` commits to the *earliest* match of what follows it (an atomic group), which is always a correct
choice within one segment (and, one level up, between groups of segments), so matching runs in time linear in
the path whatever the number of stars. The translation is the only place that guarantee is kept: change it
with the adversarial tests in ``tests/adversarial/test_catalog_input.py`` at hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Glob:
    """A compiled path glob and its specificity."""

    source: str
    """Regular expression source, anchored at the end (use with ``match``)."""
    literals: int
    double_stars: int
    wildcards: int
    literal_prefix: tuple[str, ...]
    """Leading directories without wildcards: where the glob sits in the index tree."""
    last_head: str
    """Literal characters the last segment starts with ("" if none, or if the glob ends with ``**``)."""
    last_tail: str
    """Literal characters the last segment ends with (likewise)."""
    key_segment: str | None
    """The longest segment without wildcards after ``literal_prefix``, if any: every path the glob matches has
    a segment equal to it."""

    @property
    def exact(self) -> bool:
        return self.wildcards == 0 and self.double_stars == 0


def _check_normalised(glob: str) -> None:
    """Refuse a glob no request path can match: paths are matched after the web layer merged ``//`` and resolved
    ``.`` and ``..`` (:mod:`exportgate.web.paths`), so a rule written with them would never apply, and the
    download it was meant for would fall through to a broader rule."""
    segments = glob[1:].split("/")
    for position, segment in enumerate(segments):
        if segment == "" and position < len(segments) - 1:  # a trailing "/" (a directory) is a path's own form
            merged = re.sub("/{2,}", "/", glob)
            raise ValueError(f"path {glob!r} has an empty segment ('//'): request paths are matched with duplicate "
                             f"slashes merged, so it would never match; write {merged!r}")
        if segment in (".", ".."):
            raise ValueError(f"path {glob!r} has a {segment!r} segment: request paths are matched with dot-segments "
                             "resolved, so it would never match; write the path without it")


def compile_glob(glob: str) -> Glob:
    """Translate one path glob; raises ``ValueError`` with a message for the manifest author.

    Only the translation: the catalog compiles one alternation per index node, not a regex per glob.
    """
    if not glob:
        raise ValueError("path is empty")
    if not glob.startswith("/"):
        raise ValueError(f"path {glob!r} must start with / (it is matched against the request path)")
    if any(c < " " or c == "\x7f" for c in glob):
        raise ValueError(f"path {glob!r} contains a control character")
    _check_normalised(glob)
    segments: list[list[str | None] | None] = []  # None: a "**" segment; in a segment, None is a "*"
    literals = glob.count("/")
    double_stars = wildcards = 0
    prefix: list[str] = []
    prefix_open = True
    head = tail = ""
    key_segment: str | None = None
    for text in glob[1:].split("/"):
        head = tail = ""
        if text == "**":
            prefix_open = False
            if segments and segments[-1] is None:
                continue  # "/**/**/" means the same as "/**/"
            segments.append(None)
            double_stars += 1
            continue
        if "**" in text:
            raise ValueError(f"path {glob!r}: ** must be a whole segment (/a/**/b); use * inside a segment")
        tokens, raw, lit, wild = _segment_tokens(text, glob)
        wild_at = [i for i, c in enumerate(raw) if c is None]
        head = text if not wild_at else "".join(c or "" for c in raw[:wild_at[0]])
        tail = text if not wild_at else "".join(c or "" for c in raw[wild_at[-1] + 1:])
        literals += lit
        wildcards += wild
        segments.append(tokens)
        if prefix_open and wild == 0:
            prefix.append(text)
            continue
        prefix_open = False
        if wild == 0 and (key_segment is None or len(text) > len(key_segment)):
            key_segment = text
    if prefix_open:
        prefix.pop()  # an exact path: no glob index entry needed, but keep the invariant "prefix < whole"
    source = "/" + _glob_regex(segments) + r"\Z"
    return Glob(source, literals, double_stars, wildcards, tuple(prefix), head, tail, key_segment)


def _segment_tokens(text: str, glob: str) -> tuple[list[str | None], list[str | None], int, int]:
    """Regex pieces (``None`` for ``*``), the raw characters (``None`` for any wildcard), and the counts."""
    tokens: list[str | None] = []
    raw: list[str | None] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "*":
            tokens.append(None)
            i += 1
        elif c == "?":
            tokens.append("[^/]")
            i += 1
        elif c == "[":
            cls, i = _char_class(text, i, glob)
            tokens.append(cls)
        else:
            tokens.append(re.escape(c))
            raw.append(c)
            i += 1
            continue
        raw.append(None)
    wildcards = raw.count(None)
    return tokens, raw, len(raw) - wildcards, wildcards


def _char_class(text: str, start: int, glob: str) -> tuple[str, int]:
    i = start + 1
    negate = i < len(text) and text[i] in "!^"
    i += negate
    items: list[str] = []
    first = True
    while True:
        if i >= len(text):
            raise ValueError(f"path {glob!r}: unclosed [ (write [[] for a literal [; a set cannot hold /)")
        c = text[i]
        if c == "]" and not first:
            i += 1
            break
        first = False
        if i + 2 < len(text) and text[i + 1] == "-" and text[i + 2] != "]":
            lo, hi = c, text[i + 2]
            if lo > hi:
                raise ValueError(f"path {glob!r}: range {lo}-{hi} is backwards")
            if not negate and lo <= "/" <= hi:
                raise ValueError(f"path {glob!r}: range {lo}-{hi} includes /, which a set never matches")
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 3
        else:
            items.append(re.escape(c))
            i += 1
    # A negated set must still not match "/": one glob segment is one path segment.
    return ("[^/" if negate else "[") + "".join(items) + "]", i


def _segment_regex(tokens: list[str | None]) -> str:
    """One segment. Each ``*`` commits to the earliest match of the text after it (an atomic group): within one
    segment that is always a correct choice, and it keeps matching linear instead of exponential in the number
    of stars, whatever the request path."""
    chunks: list[list[str]] = [[]]
    for token in tokens:
        if token is None:
            chunks.append([])
        else:
            chunks[-1].append(token)
    out = "".join(chunks[0])
    if len(chunks) == 1:
        return out
    for chunk in chunks[1:-1]:
        out += "(?>[^/]*?" + "".join(chunk) + ")"
    last = "".join(chunks[-1])
    return out + ("(?>[^/]*?" + last + "(?![^/]))" if last else "[^/]*+")


def _glob_regex(segments: list[list[str | None] | None]) -> str:
    """Segments after the leading "/".

    A ``**`` between groups of segments skips whole segments and, like ``*`` within a segment, commits to the
    earliest place the next group matches (correct for the same reason, one level up). The group after the
    last ``**`` has a fixed number of segments and must end the path, so it can only start at one place: jump
    there from the end (greedy ``.*/`` backs off to the right slash) instead of trying every segment, which
    keeps ``/**/x`` cheap on paths with thousands of segments. A trailing ``**`` takes the rest.
    """
    groups: list[list[list[str | None]]] = [[]]
    for segment in segments:
        if segment is None:
            groups.append([])
        else:
            groups[-1].append(segment)
    head = "/".join(_segment_regex(s) for s in groups[0])
    if len(groups) == 1:
        return head
    out = head + "/" if groups[0] else ""
    for group in groups[1:-1]:
        out += "(?>(?:[^/]*/)*?" + "/".join(_segment_regex(s) for s in group) + "/)"
    last = groups[-1]
    if not last:
        return out + ".*"
    slashes = "(?:/[^/]*)" + (f"{{{len(last) - 1}}}" if len(last) > 2 else "") if len(last) > 1 else ""
    return out + f"(?>(?:.*/)?(?=[^/]*{slashes}\\Z))" + "/".join(_segment_regex(s) for s in last)

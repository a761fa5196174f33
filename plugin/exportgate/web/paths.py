"""Which artifact is asked for: the request path, normalised exactly as the origin will resolve it.

The catalog classifies artifacts by path, so the gate must see the path the origin (nginx serving the mirror,
or the WSGI app behind the middleware) will actually open, not the text the client sent. :func:`normalise_path`
does what nginx does to ``$uri`` with ``merge_slashes on`` (``ngx_http_parse_complex_uri``):

* cut the query string at the first ``?`` and the fragment at the first ``#`` (forward-auth gets the original
  URI with its query; ``%3F`` and ``%23`` are literal ``?`` and ``#`` in a file name);
* decode percent-encoding exactly once (``%252e`` is the literal file name text ``%2e``, as for the origin);
* resolve ``.`` and ``..`` segments after decoding (``/a/%2e%2e/b`` is ``/b``), as RFC 3986
  ``remove_dot_segments``; a path that climbs above the root is rejected, as nginx answers it with 400;
* merge runs of ``/``; keep a trailing ``/`` (a directory); optionally fold case for a case-insensitive origin.

Rejected with :class:`PathRejected` (the web layer answers 400), where nginx accepts but another origin could
resolve the path differently, or where the input is simply broken: an encoded ``/`` or ``\\`` (``%2F``,
``%5C``: nginx decodes ``%2F`` into a separator, Apache answers 404 by default, an object store keeps it in the
key: three origins, three artifacts), a raw ``\\`` (an ordinary character to nginx on Unix, a separator to an
origin on Windows or an app that accepts both: ``/files/chat-\\..\\crypto-1.tar.gz`` is a chat client's name to
one and the crypto toolkit to the other), control characters raw or encoded (``%00`` is a 400 in nginx too) and a
raw space, invalid percent-encoding (``%zz``, ``%4``), bytes that are not UTF-8 after decoding (``%ff``,
overlong ``%c0%af``), a path not starting with ``/`` (``*``, absolute-form ``http://…``), and more than
:data:`MAX_PATH_BYTES`.

Input: the request target as the server received it. A ``str`` is read the WSGI way (PEP 3333): one character
per byte, so ``REQUEST_URI``/``RAW_URI`` and headers such as ``X-Original-URI`` pass straight in, and a character
above U+00FF is rejected; ``bytes`` are taken as they are. Never pass ``PATH_INFO``: the server has already
decoded it once, and ``%2F`` in it has become indistinguishable from ``/``.

Caveats: ``;`` path parameters are part of the name (nginx), whereas Java servlet containers strip them. Unicode
is not normalised (NFC/NFD), as Linux file systems do not. Case folding, where asked for, is
:func:`~exportgate.casefolding.fold_case`, as the catalog folds its rules, and a path with a letter that
case-insensitive file systems fold differently (``ß``, ``ſ``, ``ı``, final ``ς``) is rejected (``case-ambiguous``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from ..casefolding import fold_case
from ..errors import ExportGateError

PATH_SAFE = "/:@!$&'()*+,;=-._~"
"""Characters a decided path keeps unescaped when it is written as a request target again (RFC 3986 pchar and
``/``): the proxy's upstream request, the middleware's rewritten target, redirects, a link target decided on."""

MAX_PATH_BYTES = 4096


def wsgi_text(value: str, *, errors: str = "replace") -> str:
    """A WSGI string (PEP 3333: one character per byte) as the UTF-8 text it holds (bytes that are no UTF-8 as
    ``errors`` says); a server that hands decoded text past latin-1 instead has it read as it is. (Decoded text whose
    characters all fit latin-1, ``/mïrror``, cannot be told from PEP 3333 bytes: it is read as bytes.)"""
    try:
        return value.encode("latin-1").decode("utf-8", errors)
    except UnicodeEncodeError:
        return value
"""Longest path accepted, counted before decoding and without the query string (nginx's own limit is the
request line buffer, 8 KiB by default; no mirror has artifact paths anywhere near this)."""

# Why a path is rejected. Stable strings: they end up in logs, metrics and the 400 answer.
TOO_LONG = "too-long"
NOT_ABSOLUTE = "not-absolute"
NOT_BYTES = "not-bytes"
CONTROL_CHARACTER = "control-character"
SPACE = "space"
BAD_PERCENT_ENCODING = "bad-percent-encoding"
ENCODED_SLASH = "encoded-slash"
ENCODED_BACKSLASH = "encoded-backslash"
BACKSLASH = "backslash"
NOT_UTF8 = "not-utf8"
ESCAPES_ROOT = "escapes-root"
CASE_AMBIGUOUS = "case-ambiguous"
REASONS = (TOO_LONG, NOT_ABSOLUTE, NOT_BYTES, CONTROL_CHARACTER, SPACE, BAD_PERCENT_ENCODING, ENCODED_SLASH,
           ENCODED_BACKSLASH, BACKSLASH, NOT_UTF8, ESCAPES_ROOT, CASE_AMBIGUOUS)

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR = re.compile(r"%(?:2[Ff]|5[Cc])")
_RAW_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")  # C0 controls, space and DEL, before decoding
_DECODED_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0 and C1 controls and DEL, after decoding


class PathRejected(ExportGateError, ValueError):
    """The request path cannot be mapped to one artifact with certainty: answer 400."""

    def __init__(self, path: str, reason: str, detail: str) -> None:
        self.path = path
        self.reason = reason
        """One of :data:`REASONS`."""
        self.detail = detail
        readable = wsgi_text(path, errors="backslashreplace")  # shown as the UTF-8 it is, not as mojibake
        shown = readable if len(readable) <= 80 else readable[:77] + "..."
        super().__init__(f"rejected path {shown!r}: {detail}")


@dataclass(frozen=True, slots=True, kw_only=True)
class NormalisedPath:
    """A request path as the origin resolves it."""

    path: str
    """Decoded, dot-segments resolved, slashes merged, starting with ``/``; what the catalog classifies."""

    raw: str
    """The path as it arrived: still percent-encoded, without the query string and fragment (which may carry
    access tokens and have no place in decision records). WSGI text: one character per byte."""


_new = object.__new__
_set_path = NormalisedPath.__dict__["path"].__set__
_set_raw = NormalisedPath.__dict__["raw"].__set__


def origin_form(target: str) -> str:
    """The path and query of a request target as sent: an absolute-form target (``http://host:8080/a?b``, which a
    server must accept, RFC 9112 section 3.2.2) without its scheme and authority, ``/`` for an empty path; any other
    target unchanged (``normalise_path`` refuses what is not a path)."""
    head = target[:8].lower()
    if not (head.startswith("http://") or head.startswith("https://")):
        return target
    start = target.index("//") + 2
    end = min((i for i in (target.find(c, start) for c in "/?#") if i >= 0), default=len(target))
    rest = target[end:]
    return rest if rest.startswith("/") else "/" + rest


def normalise_path(raw: str | bytes | bytearray, *, case_insensitive: bool = False) -> NormalisedPath:
    """Normalise a request target's path as nginx resolves ``$uri``; raise :class:`PathRejected` otherwise."""
    if raw.__class__ is not str:
        if not isinstance(raw, (bytes, bytearray)):
            raise TypeError(f"expected str or bytes, got {type(raw).__name__}")
        raw = raw.decode("latin-1")
    path = raw
    if "?" in path:
        path = path.partition("?")[0]
    if "#" in path:
        path = path.partition("#")[0]
    # Fast path: the common clean path needs no decoding and has no dot-segment or empty segment to resolve.
    # isprintable() is False for every control character; space is printable and checked on its own.
    if (
        path[:1] == "/"
        and "%" not in path
        and "//" not in path
        and "/." not in path
        and " " not in path
        and "\\" not in path
        and path.isascii()
        and path.isprintable()
        and len(path) <= MAX_PATH_BYTES
    ):
        return _fast_value(path.lower() if case_insensitive else path, path)  # ASCII: lower() is fold_case()
    return _normalise(path, case_insensitive)


def _fast_value(path: str, raw: str) -> NormalisedPath:
    # A frozen dataclass's __init__ sets each field through object.__setattr__, which costs more than all the
    # checks of the fast path together; the slots' own descriptors set the same fields at a third of the cost.
    value = _new(NormalisedPath)
    _set_path(value, path)
    _set_raw(value, raw)
    return value


def _normalise(path: str, case_insensitive: bool) -> NormalisedPath:
    """The general case (also the reference the fast path must agree with)."""
    if len(path) > MAX_PATH_BYTES:
        raise PathRejected(path, TOO_LONG, f"longer than {MAX_PATH_BYTES} bytes")
    if not path.startswith("/"):
        raise PathRejected(path, NOT_ABSOLUTE, "does not start with '/'")
    if not path.isascii() and max(path) > "\xff":
        raise PathRejected(path, NOT_BYTES, f"contains U+{ord(max(path)):04X}: a request target is bytes "
                                            "(pass bytes, WSGI latin-1 text, or percent-encode it)")
    raw_bad = _RAW_FORBIDDEN.search(path)
    if raw_bad:
        if raw_bad.group() == " ":
            raise PathRejected(path, SPACE, "contains a raw space (it must be sent as %20)")
        raise PathRejected(path, CONTROL_CHARACTER, f"contains the control character {raw_bad.group()!r}")
    if "\\" in path:
        raise PathRejected(path, BACKSLASH, "contains '\\', a separator to some origins and part of a name to others")
    if "%" in path:
        bad = _BAD_PERCENT.search(path)
        if bad:
            shown = path[bad.start(): bad.start() + 3]
            raise PathRejected(path, BAD_PERCENT_ENCODING, f"{shown!r} is not a valid percent-escape")
        separator = _ENCODED_SEPARATOR.search(path)
        if separator:
            if separator.group()[1] == "2":
                raise PathRejected(path, ENCODED_SLASH, f"contains {separator.group()!r}, an encoded '/'")
            raise PathRejected(path, ENCODED_BACKSLASH, f"contains {separator.group()!r}, an encoded '\\'")
    # One character per byte (checked above), so latin-1 gives back the bytes the client sent.
    decoded_bytes = unquote_to_bytes(path.encode("latin-1")) if "%" in path else path.encode("latin-1")
    try:
        decoded = decoded_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = "" if path.isascii() else "; a str is read as WSGI text, one character per byte: pass bytes"
        raise PathRejected(path, NOT_UTF8, f"is not UTF-8 after decoding ({exc.reason} at byte {exc.start}{hint})") \
            from None
    control = _DECODED_CONTROL.search(decoded)
    if control:
        raise PathRejected(path, CONTROL_CHARACTER,
                           f"decodes to the control character U+{ord(control.group()):04X}")
    segments: list[str] = []
    directory = False
    for segment in decoded.split("/")[1:]:
        # Each step says whether the path so far names a directory: "/a/", "/a/." and "/a/b/.." all do.
        if segment == "" or segment == ".":
            directory = True
        elif segment == "..":
            if not segments:
                raise PathRejected(path, ESCAPES_ROOT, "climbs above the root with '..'")
            segments.pop()
            directory = True
        else:
            segments.append(segment)
            directory = False
    normalised = "/" + "/".join(segments)
    if directory and segments:
        normalised += "/"
    if case_insensitive:
        normalised = fold_path(normalised, path)
    return NormalisedPath(path=normalised, raw=path)


def fold_path(path: str, raw: str) -> str:
    """``path`` case-folded for a case-insensitive origin (:func:`~exportgate.casefolding.fold_case`); a letter that
    case-insensitive file systems fold differently (``ß``, ``ſ``, ``ı``, final ``ς``…) is refused: one origin opens
    the file a rule names, another a different one, and either guess could serve the wrong artifact."""
    folded = fold_case(path)
    if folded != path.lower():
        odd = next((c for c in path if fold_case(c) != c.lower()), None)
        shown = f"{odd!r} (U+{ord(odd):04X})" if odd is not None else "a letter"
        raise PathRejected(raw, CASE_AMBIGUOUS, f"contains {shown}, which case-insensitive file systems fold "
                                                "differently")
    return folded

"""Request paths: the artifact the gate classifies must be the one the origin serves."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exportgate.errors import ExportGateError
from exportgate.web.paths import (
    BAD_PERCENT_ENCODING,
    CONTROL_CHARACTER,
    BACKSLASH,
    ENCODED_BACKSLASH,
    ENCODED_SLASH,
    ESCAPES_ROOT,
    MAX_PATH_BYTES,
    NOT_ABSOLUTE,
    NOT_BYTES,
    NOT_UTF8,
    REASONS,
    SPACE,
    TOO_LONG,
    NormalisedPath,
    PathRejected,
    _normalise,
    normalise_path,
)

ACCEPTED = [
    pytest.param("/pypi/simple/requests/", "/pypi/simple/requests/", id="clean directory"),
    pytest.param("/a/b-1.0.tar.gz", "/a/b-1.0.tar.gz", id="clean file"),
    pytest.param("/", "/", id="root"),
    pytest.param("/a/b/../c", "/a/c", id="dot-dot"),
    pytest.param("/a/./b", "/a/b", id="dot"),
    pytest.param("/./", "/", id="dot at root"),
    pytest.param("/a/.", "/a/", id="trailing dot is a directory"),
    pytest.param("/a/b/..", "/a/", id="trailing dot-dot is a directory"),
    pytest.param("/a/..", "/", id="back to the root"),
    pytest.param("/a/%2e%2e/b", "/b", id="%2e%2e is dot-dot"),
    pytest.param("/a/%2E%2e/", "/", id="%2E%2e/ mixed case"),
    pytest.param("/a/.%2e/b", "/b", id="half-encoded dot-dot"),
    pytest.param("/a/%2e/b", "/a/b", id="%2e is dot"),
    pytest.param("//a///b//", "/a/b/", id="duplicate slashes merged"),
    pytest.param("/a//../b", "/b", id="merge then dot-dot (nginx order)"),
    pytest.param("/a/b/", "/a/b/", id="trailing slash kept"),
    pytest.param("/a/...", "/a/...", id="three dots are a name"),
    pytest.param("/a/..b/.c", "/a/..b/.c", id="dot-prefixed names"),
    pytest.param("/a/b.", "/a/b.", id="trailing dot in a name"),
    pytest.param("/a?x=../../etc", "/a", id="query string dropped"),
    pytest.param("/a?", "/a", id="empty query"),
    pytest.param("/a#frag", "/a", id="fragment dropped"),
    pytest.param("/a#x?y", "/a", id="fragment before question mark"),
    pytest.param("/a?x#y", "/a", id="query then fragment"),
    pytest.param("/a/..?x", "/", id="dot-dot before query"),
    pytest.param("/a%3Fb%23c", "/a?b#c", id="encoded ? and # are literal"),
    pytest.param("/%252e%252e/x", "/%2e%2e/x", id="double encoding decoded once"),
    pytest.param("/a%252fb", "/a%2fb", id="double-encoded slash is a literal name"),
    pytest.param("/%25", "/%", id="encoded percent"),
    pytest.param("/caf%C3%A9", "/café", id="utf-8 encoded"),
    pytest.param(b"/caf\xc3\xa9", "/café", id="raw utf-8 bytes"),
    pytest.param("/caf\xc3\xa9", "/café", id="raw utf-8 as WSGI text"),
    pytest.param("/%E2%82%AC/%F0%9F%93%A6", "/€/📦", id="multi-byte utf-8"),
    pytest.param("/a%20b", "/a b", id="encoded space"),
    pytest.param("/a+b", "/a+b", id="plus is literal"),
    pytest.param("/a;jsessionid=1/b", "/a;jsessionid=1/b", id="path parameter kept"),
    pytest.param("/%41%62", "/Ab", id="needlessly encoded letters"),
    pytest.param("/%e2%80%8f", "/\u200f", id="format character is not a control character"),
    pytest.param("/" + "a" * (MAX_PATH_BYTES - 1), "/" + "a" * (MAX_PATH_BYTES - 1), id="longest"),
    pytest.param("/" + "a" * (MAX_PATH_BYTES - 1) + "?" + "q" * 10_000, "/" + "a" * (MAX_PATH_BYTES - 1),
                 id="long query does not count"),
]


@pytest.mark.parametrize(("raw", "expected"), ACCEPTED)
def test_accepted(raw: str | bytes, expected: str) -> None:
    result = normalise_path(raw)
    assert result.path == expected
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    assert result.raw == text.partition("?")[0].partition("#")[0]


REJECTED = [
    pytest.param("/a%2fb", ENCODED_SLASH, id="%2f"),
    pytest.param("/a%2Fb", ENCODED_SLASH, id="%2F"),
    pytest.param("/a/..%2f..%2fetc", ENCODED_SLASH, id="encoded slash with dot-dot"),
    pytest.param("/a%5cb", ENCODED_BACKSLASH, id="%5c"),
    pytest.param("/a%5C..%5Cb", ENCODED_BACKSLASH, id="%5C"),
    pytest.param("/..", ESCAPES_ROOT, id="dot-dot at root"),
    pytest.param("/../x", ESCAPES_ROOT, id="escaping root"),
    pytest.param("/a/../../x", ESCAPES_ROOT, id="escaping root after one level"),
    pytest.param("/%2e%2e/x", ESCAPES_ROOT, id="encoded escaping root"),
    pytest.param("//../x", ESCAPES_ROOT, id="merged slashes then escaping"),
    pytest.param("/%00", CONTROL_CHARACTER, id="%00"),
    pytest.param("/a%00.tar.gz", CONTROL_CHARACTER, id="NUL truncation trick"),
    pytest.param("/a%0d%0aX-Injected:1", CONTROL_CHARACTER, id="encoded CRLF"),
    pytest.param("/a%7f", CONTROL_CHARACTER, id="encoded DEL"),
    pytest.param("/a%c2%85", CONTROL_CHARACTER, id="encoded C1 NEL"),
    pytest.param("/a\x00", CONTROL_CHARACTER, id="raw NUL"),
    pytest.param("/a\tb", CONTROL_CHARACTER, id="raw tab"),
    pytest.param("/a\nb", CONTROL_CHARACTER, id="raw newline"),
    pytest.param("/a\x7f", CONTROL_CHARACTER, id="raw DEL"),
    pytest.param("/a b", SPACE, id="raw space"),
    # A separator to an origin on Windows (or an app accepting both), part of a name to nginx on Unix.
    pytest.param("/a\\..\\b", BACKSLASH, id="raw backslash"),
    pytest.param("/files/chat-\\..\\crypto-1.tar.gz", BACKSLASH, id="backslash traversal behind an allowed name"),
    pytest.param("/a%2e%2e\\b", BACKSLASH, id="backslash after encoded dots"),
    pytest.param("/a%zz", BAD_PERCENT_ENCODING, id="%zz"),
    pytest.param("/a%4", BAD_PERCENT_ENCODING, id="truncated %4"),
    pytest.param("/a%", BAD_PERCENT_ENCODING, id="lone %"),
    pytest.param("/a%%41", BAD_PERCENT_ENCODING, id="%%41"),
    pytest.param("/a%u002e", BAD_PERCENT_ENCODING, id="IIS %u escape"),
    pytest.param("/%ff", NOT_UTF8, id="%ff"),
    pytest.param("/caf%e9", NOT_UTF8, id="latin-1 encoded"),
    pytest.param("/%c0%af", NOT_UTF8, id="overlong slash"),
    pytest.param("/%c0%ae%c0%ae/x", NOT_UTF8, id="overlong dots"),
    pytest.param("/%ed%a0%80", NOT_UTF8, id="encoded surrogate"),
    pytest.param(b"/caf\xe9", NOT_UTF8, id="raw latin-1 byte"),
    pytest.param("/café", NOT_UTF8, id="unicode text is read as WSGI bytes"),
    pytest.param("/€", NOT_BYTES, id="character above U+00FF"),
    pytest.param("", NOT_ABSOLUTE, id="empty"),
    pytest.param("a/b", NOT_ABSOLUTE, id="relative"),
    pytest.param("*", NOT_ABSOLUTE, id="asterisk form"),
    pytest.param("http://mirror/a", NOT_ABSOLUTE, id="absolute form"),
    pytest.param("%2fa", NOT_ABSOLUTE, id="encoded leading slash"),
    pytest.param("?/a", NOT_ABSOLUTE, id="query only"),
    pytest.param("/" + "a" * MAX_PATH_BYTES, TOO_LONG, id="too long"),
    pytest.param("/" + "%41" * MAX_PATH_BYTES, TOO_LONG, id="too long before decoding"),
]


@pytest.mark.parametrize(("raw", "reason"), REJECTED)
def test_rejected(raw: str | bytes, reason: str) -> None:
    with pytest.raises(PathRejected) as caught:
        normalise_path(raw)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ExportGateError)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(("raw", "expected"), [
    pytest.param("/Pypi/Simple/Requests/", "/pypi/simple/requests/", id="fast path"),
    pytest.param("/A/./B/../C", "/a/c", id="slow path"),
    pytest.param("/%C3%89T%C3%89", "/été", id="non-ascii"),
    pytest.param("/a/%2E%2E/B?Q=1", "/b", id="encoded dots and query"),
])
def test_case_insensitive(raw: str, expected: str) -> None:
    assert normalise_path(raw, case_insensitive=True).path == expected
    assert normalise_path(raw).path.lower() == expected


def test_bytes_like_and_wrong_type() -> None:
    assert normalise_path(bytearray(b"/a/../b")).path == "/b"
    for wrong in (None, memoryview(b"/a"), ["/a"]):
        with pytest.raises(TypeError):
            normalise_path(wrong)  # type: ignore[arg-type]


def test_value_is_an_ordinary_frozen_value() -> None:
    fast = normalise_path("/a/b")
    assert fast == NormalisedPath(path="/a/b", raw="/a/b")
    assert hash(fast) == hash(NormalisedPath(path="/a/b", raw="/a/b"))
    with pytest.raises(AttributeError):
        fast.path = "/other"  # type: ignore[misc]


# -- nginx as the reference ----------------------------------------------------------------------------------

USUAL, SLASH, DOT, DOT_DOT, QUOTED, QUOTED_SECOND = range(6)
HEX = b"0123456789abcdefABCDEF"


def nginx_uri(target: bytes) -> bytes | None:
    """What nginx makes of a request target's path with ``merge_slashes on`` (Unix), or None for 400.

    A model written from ``ngx_http_parse_request_line`` (raw control characters and space end or break the
    request) and the state machine of ``ngx_http_parse_complex_uri``: a decoded character is fed back into the
    state it was decoded in, except ``%``, ``#`` and ``?`` which become literal; a decoded NUL is a 400.
    """
    if any(byte <= 0x20 or byte == 0x7F for byte in target) or not target.startswith(b"/"):
        return None
    out = bytearray()
    state = quoted_state = USUAL
    decoded = 0
    position = 0
    again: int | None = None
    while True:
        if again is not None:
            ch, again = again, None
        elif position < len(target):
            ch = target[position]
            position += 1
        else:
            break
        c = chr(ch)
        if state == QUOTED:
            if ch not in HEX:
                return None
            decoded, state = int(c, 16), QUOTED_SECOND
            continue
        if state == QUOTED_SECOND:
            if ch not in HEX:
                return None
            ch = decoded * 16 + int(c, 16)
            if ch in b"%#?":
                out.append(ch)
                state = USUAL
            elif ch == 0:
                return None
            else:
                state, again = quoted_state, ch
            continue
        if c == "%":
            quoted_state, state = state, QUOTED
            continue
        if c in "?#":
            break
        if state == USUAL:
            out.append(ch)
            if c == "/":
                state = SLASH
        elif state == SLASH:
            if c == ".":
                out.append(ch)
                state = DOT
            elif c != "/":  # merge_slashes: a second "/" is dropped
                out.append(ch)
                state = USUAL
        elif state == DOT:
            if c == "/":
                out.pop()
                state = SLASH
            else:
                out.append(ch)
                state = DOT_DOT if c == "." else USUAL
        elif state == DOT_DOT:
            if c == "/":
                cut = out.rfind(b"/", 0, len(out) - 3)
                if cut < 0:
                    return None
                del out[cut + 1:]
                state = SLASH
            else:
                out.append(ch)
                state = USUAL
    if state in (QUOTED, QUOTED_SECOND):
        return None
    if state == DOT:
        out.pop()
    elif state == DOT_DOT:
        cut = out.rfind(b"/", 0, len(out) - 3)
        if cut < 0:
            return None
        del out[cut + 1:]
    return bytes(out)


@pytest.mark.parametrize(("target", "expected"), [
    pytest.param(b"/a/b/../c", b"/a/c", id="dot-dot"),
    pytest.param(b"/a/%2e%2E/", b"/", id="encoded dot-dot"),
    pytest.param(b"/a%2fb", b"/a/b", id="nginx decodes %2f into a separator"),
    pytest.param(b"/../x", None, id="escaping root"),
    pytest.param(b"/a/..?x", b"/", id="dot-dot before query"),
    pytest.param(b"/%00", None, id="NUL"),
    pytest.param(b"/%25%3f", b"/%?", id="literal percent and question mark"),
])
def test_nginx_model_itself(target: bytes, expected: bytes | None) -> None:
    """The model agrees with what nginx is documented and known to do."""
    assert nginx_uri(target) == expected


# Stricter than nginx, on purpose: nginx serves these, but another origin could resolve them differently.
STRICTER = {ENCODED_SLASH, ENCODED_BACKSLASH, BACKSLASH, CONTROL_CHARACTER, NOT_UTF8, NOT_BYTES, TOO_LONG}

VALID_TOKENS = [
    "/", "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", "%25", "%252e", "a", "B", "x.y", "\\", ";", "+", "~",
    "%20", "%41", "%C3%A9", "\xc3\xa9", "%3f", "%3F", "%23", "?", "#", "?a=../b",
]
HOSTILE_TOKENS = ["%2f", "%2F", "%5c", "%", "%4", "%zz", "%ff", "%c0%af", "%00", "%0a", "\x01", " ", "é", "€"]
PATHS = st.one_of(
    st.lists(st.sampled_from(VALID_TOKENS), max_size=25).map(lambda parts: "/" + "".join(parts)),
    st.lists(st.sampled_from(VALID_TOKENS), min_size=1, max_size=25).map("".join),
    st.lists(st.sampled_from(VALID_TOKENS + HOSTILE_TOKENS), max_size=25).map(lambda parts: "/" + "".join(parts)),
    st.text(max_size=60),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60).map(lambda t: "/" + t),
)


def _outcome(raw: str | bytes, case_insensitive: bool = False) -> NormalisedPath | str:
    try:
        return normalise_path(raw, case_insensitive=case_insensitive)
    except PathRejected as rejected:
        assert rejected.reason in REASONS
        return rejected.reason


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=PATHS)
@example(raw="/a/%2e%2e%2f")
@example(raw="/.%2e")
@example(raw="/%2e./x")
def test_matches_nginx_or_is_stricter(raw: str) -> None:
    outcome = _outcome(raw)
    try:
        # Both stop at the first '?' or '#', so the path part is all nginx needs to see.
        target = raw.partition("?")[0].partition("#")[0].encode("latin-1")
    except UnicodeEncodeError:
        assert isinstance(outcome, str), "a character above U+00FF is not a request target"
        return
    reference = nginx_uri(target)
    if isinstance(outcome, NormalisedPath):
        assert reference is not None, f"nginx answers 400 for {raw!r}, the gate accepted it"
        assert outcome.path.encode("utf-8") == reference
    elif reference is not None:
        assert outcome in STRICTER, f"nginx serves {raw!r} as {reference!r}; the gate said {outcome}"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(PATHS, st.binary(max_size=60).map(lambda b: b"/" + b)), case_insensitive=st.booleans())
def test_result_is_normal_and_stable(raw: str | bytes, case_insensitive: bool) -> None:
    """Accepted paths start with '/', have no empty, '.' or '..' segment and no control character; and the
    output, percent-encoded again (it is decoded text), normalises to itself. That is the idempotence the gate
    can promise: the decoded output itself is not a request target (a literal '%41' in a name would decode)."""
    outcome = _outcome(raw, case_insensitive)
    if isinstance(outcome, str):
        return
    path = outcome.path
    assert path.startswith("/")
    inner = path[1:-1] if path.endswith("/") else path[1:]
    assert path == "/" or all(segment not in ("", ".", "..") for segment in inner.split("/"))
    assert "//" not in path and "/./" not in path and "/../" not in path
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path)
    if case_insensitive:
        assert path == path.lower()
    again = quote(path, safe="/\\")
    assert _outcome(again, case_insensitive) == NormalisedPath(path=path, raw=again)


@settings(max_examples=600, deadline=None)
@given(raw=PATHS, case_insensitive=st.booleans())
def test_fast_path_agrees_with_the_general_case(raw: str, case_insensitive: bool) -> None:
    path = raw.partition("?")[0].partition("#")[0]
    try:
        general: NormalisedPath | str = _normalise(path, case_insensitive)
    except PathRejected as rejected:
        general = rejected.reason
    assert _outcome(raw, case_insensitive) == general


@pytest.mark.parametrize("raw", ["/a%C3%9F", "/%C5%BFecret", "/b%C4%B1tcoin", "/%CE%91%CE%A3"])
def test_letters_file_systems_fold_differently_are_rejected_when_case_does_not_matter(raw: str) -> None:
    from exportgate.web.paths import CASE_AMBIGUOUS

    with pytest.raises(PathRejected) as info:
        normalise_path(raw, case_insensitive=True)
    assert info.value.reason == CASE_AMBIGUOUS
    assert normalise_path(raw).path  # an ordinary name where case matters

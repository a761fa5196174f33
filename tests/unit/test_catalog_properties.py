"""Property tests: globs match like a plain reference matcher, and precedence is what the manual says.

The references here are written from docs/classification-manifest.md, deliberately naive (recursion over
segments, fnmatch per segment, a loop over every rule) so they can be trusted by reading them.
"""

from __future__ import annotations

import itertools
from fnmatch import fnmatchcase

from exportgate.catalog import parse_catalog
from exportgate.packagenames import ECOSYSTEMS, normalize_name, package_of
from hypothesis import assume, given, settings
from hypothesis import strategies as st

# --------------------------------------------------------------------------------------------------------------
# Reference glob matcher and specificity


def ref_match(glob: str, path: str) -> bool:
    return _ref(glob[1:].split("/"), path[1:].split("/")) if path.startswith("/") else False


def _ref(globs: list[str], segments: list[str]) -> bool:
    if not globs:
        return not segments
    head, rest = globs[0], globs[1:]
    if head == "**":
        if not rest:  # a trailing ** is everything under the directory: at least one (possibly empty) segment
            return len(segments) >= 1
        return any(_ref(rest, segments[i:]) for i in range(len(segments) + 1))
    return bool(segments) and fnmatchcase(segments[0], head) and _ref(rest, segments[1:])


def ref_specificity(glob: str) -> tuple[int, int, int]:
    """(literal characters, ``**`` count, other wildcards) for the token set generated below."""
    literals, double, wild = glob.count("/"), 0, 0
    for segment in glob[1:].split("/"):
        if segment == "**":
            double += 1
            continue
        i = 0
        while i < len(segment):
            if segment[i] == "[":
                i = segment.index("]", i + 2) + 1
                wild += 1
            elif segment[i] in "*?":
                wild += 1
                i += 1
            else:
                literals += 1
                i += 1
    return literals, double, wild


# --------------------------------------------------------------------------------------------------------------
# Strategies

TOKENS = ["a", "b", "*", "?", "[ab]", "[!a]", "[]a]", "."]


def normal(glob: str) -> bool:
    """Whether a rule is written as request paths are matched (no '//', '.' or '..' segment): others are refused."""
    segments = glob[1:].split("/")
    return all(s not in (".", "..") for s in segments) and all(segments[:-1])


@st.composite
def segment_globs(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4))
    text = "".join(tokens)
    assume("**" not in text and text not in (".", ".."))
    return text


@st.composite
def globs(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.one_of(segment_globs(), st.just("**")), min_size=1, max_size=4))
    assume(all(not (x == y == "**") for x, y in itertools.pairwise(segments)))
    return "/" + "/".join(segments)


paths = st.lists(st.sampled_from(["a", "b", "ab", "ba", "", "aa", "a.b", "]", "*"]), min_size=1, max_size=6).map(
    lambda segments: "/" + "/".join(segments))

PACKAGE_PATHS = [
    "/packages/a/foo-1.0.tar.gz", "/packages/a/Foo-1.0-py3-none-any.whl", "/simple/bar/", "/simple/foo/",
    "/pool/main/f/foo/bar_1.0_all.deb", "/pool/main/f/foo/foo_1.0.dsc", "/x/foo-1.0-1.noarch.rpm",
    "/npm/foo/-/foo-1.0.0.tgz", "/a/bar-2.0.exe", "/a/b/foo-1.0.zip",
]
PACKAGE_GLOBS = ["/**", "/packages/**", "/simple/*/", "/**/*.deb", "/pool/**", "/a/**", "/*/foo-*", "/a/b/*"]


@st.composite
def rule_sets(draw: st.DrawFn) -> list[tuple[str, str, str | None]]:
    """Rules as (kind, text, ecosystem), no two with the same matcher (those are manifest errors)."""
    globs_drawn = draw(st.lists(st.one_of(globs(), st.sampled_from(PACKAGE_GLOBS)), max_size=6, unique=True))
    exact = draw(st.lists(st.one_of(paths, st.sampled_from(PACKAGE_PATHS)), max_size=2, unique=True))
    packages = draw(st.lists(st.tuples(st.sampled_from(["foo", "bar"]), st.sampled_from([None, *ECOSYSTEMS])),
                             max_size=5, unique=True))
    rules: list[tuple[str, str, str | None]] = [("path", g, None) for g in globs_drawn]
    rules += [("path", p, None) for p in exact if p not in globs_drawn and normal(p)]
    rules += [("package", name, eco) for name, eco in packages]
    return draw(st.permutations(rules))


def manifest(rules: list[tuple[str, str, str | None]]) -> str:
    out = ["manifest: prop", "version: 1", "artifacts:" if rules else "artifacts: []"]
    for i, (kind, text, eco) in enumerate(rules):
        out.append(f"  - {kind}: {text!r}")
        if eco:
            out.append(f"    ecosystem: {eco}")
        out.append("    class: other")
        out.append(f"    note: '{i}'")
    return "\n".join(out) + "\n"


def is_exact(glob: str) -> bool:
    return not any(c in glob for c in "*?[")


def ref_order(rules: list[tuple[str, str, str | None]], path: str) -> list[int]:
    """Indexes of every rule matching ``path``, in the documented precedence order."""
    candidates = package_of(path)
    keyed = []
    for i, (kind, text, eco) in enumerate(rules):
        if kind == "path":
            if is_exact(text):
                if text == path:
                    keyed.append(((0,), i))
            elif ref_match(text, path):
                literals, double, wild = ref_specificity(text)
                keyed.append(((3, -literals, double, wild, i), i))
            continue
        names = [(e, normalize_name(e, text)) for e in ((eco,) if eco else ECOSYSTEMS)]
        positions = [candidates.index(n) for n in names if n in candidates]
        if positions:
            keyed.append(((1 if eco else 2, min(positions)), i))
    return [i for _, i in sorted(keyed)]


# --------------------------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=300, deadline=None)
@given(glob=globs(), path=paths)
def test_glob_matches_like_the_reference(glob: str, path: str) -> None:
    catalog = parse_catalog(manifest([("path", glob, None)]))
    assert catalog.classify(path).classified == ref_match(glob, path)


@settings(max_examples=250, deadline=None)
@given(rules=rule_sets(), path=st.one_of(paths, st.sampled_from(PACKAGE_PATHS)))
def test_classify_and_explain_follow_the_documented_precedence(rules: list[tuple[str, str, str | None]],
                                                               path: str) -> None:
    catalog = parse_catalog(manifest(rules))
    expected = ref_order(rules, path)
    explanation = catalog.explain(path)
    assert [int(m.rule.classification.note) for m in explanation.matches] == expected
    c = catalog.classify(path)
    assert c is explanation.classification
    assert (int(c.note) if c.classified else None) == (expected[0] if expected else None)
    if expected:
        assert c is explanation.winner.rule.classification  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(rules=rule_sets(), path=st.one_of(paths, st.sampled_from(PACKAGE_PATHS)), data=st.data())
def test_winner_does_not_depend_on_the_order_of_rules(rules: list[tuple[str, str, str | None]], path: str,
                                                      data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(rules))
    first = parse_catalog(manifest(rules)).explain(path)
    second = parse_catalog(manifest(shuffled)).explain(path)
    if first.winner is None:
        assert second.winner is None
        return
    w1, w2 = first.winner.rule, second.winner.rule  # type: ignore[union-attr]
    if w1.matcher != w2.matcher:
        # only file order may differ, and only between equally specific globs
        assert w1.path and w2.path and ref_specificity(w1.path) == ref_specificity(w2.path)
        assert "earlier in the manifest" in (first.matches[1].lost_because or "")


def literal_positions(glob: str) -> list[int]:
    """Where the glob has a literal character other than "/" (outside sets)."""
    out, i = [], 0
    while i < len(glob):
        if glob[i] == "[":
            i = glob.index("]", i + 2) + 1
        elif glob[i] in "*?/":
            i += 1
        else:
            out.append(i)
            i += 1
    return out


@settings(max_examples=200, deadline=None)
@given(rules=rule_sets(), path=st.one_of(paths, st.sampled_from(PACKAGE_PATHS)), extra=globs(), data=st.data())
def test_a_less_specific_glob_never_changes_the_winner(rules: list[tuple[str, str, str | None]], path: str,
                                                       extra: str, data: st.DataObject) -> None:
    before = parse_catalog(manifest(rules)).explain(path)
    if before.winner is None:
        return
    winner = before.winner.rule
    if winner.path is not None and not is_exact(winner.path):
        # Generalise the winning glob: one literal character becomes "?". It still matches the path, and has
        # fewer literal characters, so it must lose.
        positions = literal_positions(winner.path)
        if not positions:
            return
        at = data.draw(st.sampled_from(positions))
        extra = winner.path[:at] + "?" + winner.path[at + 1:]
        assert ref_match(extra, path)
    if is_exact(extra) or any(text == extra for _, text, _ in rules):
        return  # an exact path is not a glob: it outranks everything
    after = parse_catalog(manifest([*rules, ("path", extra, None)])).classify(path)
    assert after.rule == winner.classification.rule

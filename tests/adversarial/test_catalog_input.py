"""Hostile request paths and hostile manifests: the catalog answers (or refuses with file:line), never crashes
and never takes long.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest
from exportgate.catalog import Catalog, load_catalog, parse_catalog
from exportgate.classification import Classification
from exportgate.errors import ConfigErrors
from exportgate.packagenames import package_of
from hypothesis import given, settings
from hypothesis import strategies as st

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "catalog.yaml"

# Globs that make a naive backtracking translation (fnmatch, or ".*" for "**") take exponential or high
# polynomial time on the paths below.
NASTY_GLOBS = [
    "/**/a*a*a*a*a*a*a*b",
    "/*a*a*a*a*a*a*a*a*b",
    "/**/a/**/a/**/a/**/a/**/b",
    "/**/*a*/**/*a*/**/*a*/**/c",
    "/**/[ab]*[ab]*[ab]*[ab]*c/**",
    "/a/**/**/**/**/b",
    "/" + "*a" * 200 + "b",
]
NASTY_PATHS = [
    "/" + "a" * 20_000,
    "/a" * 10_000,
    "/" + "/".join(["a" * 50] * 400),
    "/" + "a/" * 5_000 + "x",
    "/" + "ab" * 10_000 + "/",
    "/" + "a" * 300 + "/" + "a" * 300 + "c",
]


def catalog_of(*globs: str, case_sensitive: bool = True) -> Catalog:
    lines = ["manifest: hostile", "version: 1", "artifacts:"]
    for g in globs:
        lines += [f"  - path: {g!r}", "    class: other"]
    return parse_catalog("\n".join(lines) + "\n", case_sensitive=case_sensitive)


HOSTILE_PATHS = [
    pytest.param("", id="empty"),
    pytest.param("relative/path", id="relative"),
    pytest.param("/" * 10_000, id="only slashes"),
    pytest.param("/downloads//vpn-pro//x.exe", id="double slashes"),
    pytest.param("/downloads/vpn-pro/../../etc/passwd", id="dot dot left over"),
    pytest.param("/downloads/vpn-pro/./x", id="dot left over"),
    pytest.param("/downloads/vpn-pro/", id="trailing slash"),
    pytest.param("/downloads/100%25%2F..%2fx", id="literal percent signs"),
    pytest.param("/downloads/a\x00b.exe", id="NUL"),
    pytest.param("/downloads/a\nb/c\r\n", id="newlines"),
    pytest.param("/downloads/\u0130\u212a\u00df/\U0001f600-1.0.exe", id="unicode that changes length when folded"),
    pytest.param("/downloads/\udcff\udc80.exe", id="lone surrogates"),
    pytest.param("/packages/" + "x" * 100_000 + "-1.0-py3-none-any.whl", id="very long wheel name"),
    pytest.param("/debian/pool/main/a/" + "a" * 70_000 + "/", id="very long pool directory"),
    pytest.param("/npm/" + "/-" * 5_000 + "/x-1.tgz", id="many npm separators"),
    pytest.param("/simple/../simple/foo/", id="simple with dot dot"),
    pytest.param("/simple/*/", id="glob characters in path"),
    pytest.param("/simple/[a-z]/", id="set characters in path"),
    pytest.param("/x/" + "-1" * 120 + ".tar.gz", id="dashes and digits"),
    pytest.param("/x/a" + "-a" * 120 + ".rpm", id="many dashes rpm"),
    pytest.param("/x/" + "a_" * 120 + "1_amd64.deb", id="many underscores deb"),
]


@pytest.mark.parametrize("case_sensitive", [True, False], ids=["case-sensitive", "case-insensitive"])
@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_paths_never_crash(path: str, case_sensitive: bool) -> None:
    catalog = load_catalog(EXAMPLE, case_sensitive=case_sensitive)
    c = catalog.classify(path)
    assert isinstance(c, Classification)
    assert catalog.explain(path).classification is c
    assert isinstance(package_of(path), list)


def test_leftover_dot_segments_match_literally() -> None:
    # The web layer must resolve ".." before the catalog sees the path; if it did not, the catalog matches the
    # text as it is, never the directory the origin would serve.
    catalog = load_catalog(EXAMPLE)
    assert catalog.classify("/downloads/vpn-pro/../docs/x").price == "fee"
    assert catalog.classify("/downloads/docs/../vpn-pro/x").eccn == "not-subject-to-ear"


def test_percent_is_not_decoded_again() -> None:
    catalog = catalog_of("/a/b%2Fc")
    assert catalog.classify("/a/b%2Fc").classified
    assert not catalog.classify("/a/b/c").classified


@pytest.mark.parametrize("glob", NASTY_GLOBS)
def test_no_catastrophic_backtracking(glob: str) -> None:
    catalog = catalog_of(glob, "/**/zzz")
    for path in NASTY_PATHS:
        start = time.perf_counter()
        catalog.classify(path)
        catalog.explain(path)
        elapsed = time.perf_counter() - start
        assert elapsed < 0.5, f"{glob} on a path of {len(path)} characters took {elapsed:.2f} s"


def test_nasty_globs_still_match_correctly() -> None:
    catalog = catalog_of(*NASTY_GLOBS[:5])
    assert catalog.classify("/x/aaaaaaab").classified
    assert not catalog.classify("/x/aaaaaa").classified
    assert catalog.classify("/a/q/a/a/a/b").classified
    assert catalog.classify("/x/a/ya/a/c").classified


def test_cache_stays_bounded() -> None:
    catalog = parse_catalog("manifest: m\nversion: 1\nartifacts:\n  - path: /a/**\n    class: other\n",
                            cache_size=100)
    for i in range(5_000):
        catalog.classify(f"/a/{i}")
    info = catalog.cache_info()
    assert info.currsize <= 100 and info.maxsize == 100


@functools.cache
def example_catalog() -> Catalog:
    return load_catalog(EXAMPLE, cache_size=0)


@settings(max_examples=300, deadline=None)
@given(path=st.text(max_size=300))
def test_any_text_is_classified_without_error(path: str) -> None:
    catalog = example_catalog()
    c = catalog.classify(path)
    assert catalog.explain(path).classification is c
    assert all(isinstance(e, str) and isinstance(n, str) for e, n in package_of(path))


@settings(max_examples=200, deadline=None)
@given(path=st.lists(st.sampled_from(["packages", "simple", "pool", "main", "-", "@s", "a", "foo", "",
                                      "foo-1.0.tar.gz", "foo_1.0_all.deb", "foo-1.0-1.x86_64.rpm",
                                      "foo-1.0.0.tgz", "index.html", "json", "pypi", "..", "%2f"]),
                     max_size=8).map(lambda s: "/" + "/".join(s)))
def test_layout_fragments_in_any_order(path: str) -> None:
    for eco, name in package_of(path):
        assert name and "/" not in name.removeprefix("@").partition("/")[2]


# --------------------------------------------------------------------------------------------------------------
# Hostile manifests

HOSTILE_MANIFESTS = [
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: !!python/object:os.system x\n    class: other\n",
                 "YAML", id="python object tag"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - ? [a, b]\n    : x\n", "plain value",
                 id="unhashable key"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - 1: x\n    path: /a\n    class: other\n",
                 "unknown key 1", id="number key"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    class: anti-censorship\n",
                 "duplicate key", id="duplicate key overrides"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    kinds: chat\n",
                 "kinds apply only", id="kinds as text"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    publicly_available: 1\n",
                 "true or false", id="publicly available as number"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: [other]\n", "class must be text",
                 id="class list"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    eccn: 5D002\n"
                 "    eccn: EAR99\n", "duplicate key", id="eccn twice"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: \"/a/\\0\"\n    class: other\n",
                 "control character", id="NUL in glob"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    eccn: \"5D002\\n\"\n",
                 "is not an ECCN", id="newline in eccn"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: \"foo\\u0000\"\n    class: other\n",
                 "not a valid package name", id="NUL in package name"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: \"../../etc\"\n    class: other\n",
                 "not a valid package name", id="path as package name"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: \"" + "a" * 300 + "\"\n    class: other\n",
                 "not a valid package name", id="overlong package name"),
    pytest.param("manifest: m\nversion: 1\nartifacts: &a\n  - *a\n", "recursive", id="recursive alias"),
    # Eight levels of nine: about 1 KB of YAML, 48 million values once expanded (a "billion laughs").
    pytest.param("manifest: m\nversion: 1\nx0: &x0 [a, a, a, a, a, a, a, a, a]\n"
                 + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]\n" for i in range(1, 8))
                 + "artifacts:\n  - path: /a\n    class: other\n    eccn: [*x7]\n", "aliases expand",
                 id="billion laughs"),
    pytest.param("\ufeffmanifest: m\nversion: 1\nartifacts:\n  - path: /a\n", "missing required key 'class'",
                 id="byte order mark"),
]


@pytest.mark.parametrize(("text", "fragment"), HOSTILE_MANIFESTS)
def test_hostile_manifests_are_refused_with_a_location(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigErrors) as info:
        load_catalog(path)
    assert any(fragment in str(e) for e in info.value.errors), [str(e) for e in info.value.errors]
    assert all(e.file == str(path) for e in info.value.errors)


def test_alias_expansion_does_not_multiply_rules(tmp_path: Path) -> None:
    # YAML aliases repeat a rule by reference; a repeated rule is a duplicate, reported, not silently expanded.
    text = ("manifest: m\nversion: 1\nartifacts:\n  - &r {path: /a, class: other}\n" + "  - *r\n" * 1000)
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigErrors) as info:
        load_catalog(path)
    assert len(info.value.errors) == 1000 and "duplicate rule" in info.value.errors[0].message


def test_many_rules_and_long_globs_compile(tmp_path: Path) -> None:
    lines = ["manifest: big", "version: 1", "artifacts:"]
    for i in range(1500):
        lines += [f"  - path: '/d{i % 7}/{'x' * (i % 50)}{i}/**/*.{i % 13}'", "    class: other"]
    lines += ["  - path: '/" + "/".join(["*"] * 300) + "'", "    class: other"]
    path = tmp_path / "big.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    catalog = load_catalog(path)
    assert catalog.classify("/d3/" + "x" * 10 + "10/a/b/c.10").classified
    assert catalog.classify("/" + "/".join(["q"] * 300)).classified
    assert not catalog.classify("/d3/zzz").classified

"""The classification manifest: package names from paths, validation with file:line, precedence, explain."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest
from exportgate.catalog import (
    TIER_NAMES,
    Catalog,
    check_catalog,
    compile_glob,
    load_catalog,
    parse_catalog,
)
from exportgate.classification import UNCLASSIFIED
from exportgate.errors import ConfigErrors
from exportgate.packagenames import normalize_name, package_of

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "catalog.yaml"
DOC = ROOT / "docs" / "classification-manifest.md"


def write(tmp_path: Path, body: str, *, head: str = "manifest: test\nversion: 1\nartifacts:\n") -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(head + textwrap.dedent(body), encoding="utf-8")
    return path


def rules(*items: str) -> str:
    """Manifest text with one rule per item: "package: x" / "path: /y" plus a distinct class per rule."""
    out = ["manifest: test", "version: 1", "artifacts:"]
    for i, item in enumerate(items):
        out.append(f"  - {item}")
        out.append("    class: other")
        out.append(f"    note: rule{i}")
        out.append(f"    eccn: {['EAR99', '5D002', '5D992', '4D994', '5D991'][i % 5]}")
        out.append(f"    price: {['no-cost', 'fee'][i // 5 % 2]}")
    return "\n".join(out) + "\n"


def matcher_of(catalog: Catalog, path: str) -> str | None:
    """The winning rule's matcher ("path /a/**"), independent of where the rule is in the file."""
    rule = catalog.classify(path).rule
    return rule.split(" (", 1)[1] if rule else None


def winner_note(catalog: Catalog, path: str) -> str | None:
    c = catalog.classify(path)
    return c.note if c.classified else None


# --------------------------------------------------------------------------------------------------------------
# package_of: the layouts

LAYOUTS = [
    pytest.param("/packages/ab/cd/ef0123/Signal_Desktop-7.0.0-py3-none-any.whl", [("pypi", "signal-desktop")],
                 id="wheel"),
    pytest.param("/packages/ab/cd/signal_desktop-7.0.0-1-cp311-cp311-manylinux_2_17_x86_64.whl",
                 [("pypi", "signal-desktop")], id="wheel with build tag"),
    pytest.param("/pypi/packages/ab/cd/foo-1.0-py3-none-any.whl.metadata", [("pypi", "foo")],
                 id="PEP 658 metadata"),
    pytest.param("/downloads/foo-1.0-py3-none-any.whl", [("pypi", "foo")], id="wheel outside packages"),
    pytest.param("/packages/source/s/signal.desktop/signal.desktop-7.0.tar.gz", [("pypi", "signal-desktop")],
                 id="sdist tar.gz"),
    pytest.param("/packages/ab/cd/Signal-Desktop-7.0.zip", [("pypi", "signal-desktop")], id="sdist zip"),
    # What pypiserver lists and serves under a project besides PEP 625 sdists: each read as that project (and as
    # the generic download it was read as before).
    *[pytest.param(f"/packages/{name}", [("pypi", project), ("generic", project)], id=case) for name, project, case in [
        ("cryptopkg-1.1.tar.bz2", "cryptopkg", "sdist tar.bz2"),
        ("cryptopkg-1.1.tgz", "cryptopkg", "sdist tgz"),
        ("cryptopkg-1.1.tar.xz", "cryptopkg", "sdist tar.xz"),
        ("Cryptopkg-1.1.TAR.GZ", "cryptopkg", "sdist suffix in upper case"),
        ("cryptopkg-1.1.ZIP", "cryptopkg", "zip suffix in upper case"),
        ("cryptopkg-0.7-beta.tar.gz", "cryptopkg", "version outside PEP 440"),
        ("cryptopkg-1.0-py3.11.egg", "cryptopkg", "egg"),
        ("crypto_pkg-1.0-py3.8-linux-x86_64.egg", "crypto-pkg", "egg platform"),
        ("cryptopkg-1.0.linux-x86_64.tar.gz", "cryptopkg", "bdist_dumb"),
        ("cryptopkg-1.0-py3.8-linux-x86_64.tar.gz", "cryptopkg", "bdist_dumb with python tag"),
        ("cryptopkg-1.0.win-amd64-py3.8.exe", "cryptopkg", "bdist_wininst"),
        ("cryptopkg-1.0.win-amd64.msi", "cryptopkg", "bdist_msi"),
    ]],
    pytest.param("/packages/chatpkg-2fa-1.0.tar.bz2", [], id="legacy archive with two possible versions"),
    pytest.param("/downloads/openssl-3.0.13.tar.gz", [("generic", "openssl")],
                 id="tarball outside packages is generic"),
    pytest.param("/simple/SIGNAL-desktop/", [("pypi", "signal-desktop")], id="simple page"),
    pytest.param("/pypi/simple/signal_desktop/index.html", [("pypi", "signal-desktop")], id="simple index.html"),
    pytest.param("/simple/", [], id="simple root index"),
    pytest.param("/pypi/Signal.Desktop/json", [("pypi", "signal-desktop")], id="json api"),
    pytest.param("/pypi/signal-desktop/7.0/json", [("pypi", "signal-desktop")], id="json api version"),
    pytest.param("/debian/pool/main/s/signal-desktop/signal-desktop_7.0.0-1_amd64.deb",
                 [("debian", "signal-desktop")], id="deb same as source"),
    pytest.param("/debian/pool/main/o/openssl/libssl3_3.0.11-1~deb12u2_amd64.deb",
                 [("debian", "libssl3"), ("debian", "openssl")], id="deb binary then source"),
    pytest.param("/debian/pool/main/o/openssl/openssl_3.0.11-1.dsc", [("debian", "openssl")], id="dsc"),
    pytest.param("/debian/pool/main/o/openssl/openssl_3.0.11.orig.tar.gz", [("debian", "openssl")],
                 id="orig tarball"),
    pytest.param("/debian/pool/main/o/openssl/openssl_3.0.11.orig.tar.gz.asc", [("debian", "openssl")],
                 id="orig tarball signature"),
    pytest.param("/debian/pool/main/o/openssl/openssl_3.0.11-1.debian.tar.xz", [("debian", "openssl")],
                 id="debian tarball"),
    pytest.param("/debian-security/pool/updates/main/libs/libsignal/libsignal_1.0_all.deb",
                 [("debian", "libsignal")], id="nested component lib prefix"),
    pytest.param("/debian/pool/main/t/thunderbird/", [("debian", "thunderbird")], id="pool listing"),
    # A download that is no Debian file, under a pool directory: its own name first, the directory's after.
    pytest.param("/mirror/pool/main/c/chatpkg/cryptopkg-2.0-setup.exe", [("generic", "cryptopkg"),
                                                                         ("debian", "chatpkg")],
                 id="generic file in a pool directory"),
    pytest.param("/debian/pool/main/x/thunderbird/README", [], id="pool prefix mismatch"),
    pytest.param("/fedora/40/x86_64/signal-desktop-7.0.0-1.fc40.x86_64.rpm", [("rpm", "signal-desktop")],
                 id="rpm"),
    pytest.param("/centos/SRPMS/firefox-115.9.1-1.el9.src.rpm", [("rpm", "firefox")], id="source rpm"),
    pytest.param("/npm/lodash/-/lodash-4.17.21.tgz", [("npm", "lodash")], id="npm"),
    pytest.param("/@signalapp/libsignal-client/-/libsignal-client-0.40.1-beta.1.tgz",
                 [("npm", "@signalapp/libsignal-client")], id="npm scoped"),
    pytest.param("/npm/lodash/-/underscore-1.0.0.tgz", [], id="npm name mismatch"),
    pytest.param("/downloads/vpn-pro/vpn-pro-2.1.0.exe", [("generic", "vpn-pro")], id="generic"),
    pytest.param("/downloads/Signal_Desktop-v7.0.0-x64.dmg", [("generic", "signal-desktop")], id="generic v"),
    # Two places a version could start: chatpkg-2fa 1.0, or chatpkg 2fa-1.0? No name rather than another project's.
    pytest.param("/downloads/chatpkg-2fa-1.0.tar.gz", [], id="generic with two possible versions"),
    pytest.param("/downloads/chatpkg-v2ray-plugin-1.2.0.zip", [], id="generic with a v-digit word in the name"),
    pytest.param("/root/pypi/+f/ab1/cd2/chatpkg-2fa-1.0.tar.gz", [], id="devpi sdist read as generic, ambiguous"),
    pytest.param("/downloads/app-1.2.3-2.exe", [], id="generic with a build number: ambiguous too"),
    # PEP 427/625 names are ASCII; packaging folds the Kelvin sign (U+212A) into "k".
    pytest.param("/packages/ab/chatp\u212ag-1.0-py3-none-any.whl", [], id="wheel name with a Kelvin sign"),
    pytest.param("/packages/ab/chatp\u212ag-1.0.tar.gz", [], id="sdist name with a Kelvin sign"),
    pytest.param("/downloads/readme.txt", [], id="no version"),
    pytest.param("/", [], id="root"),
    pytest.param("", [], id="empty"),
]


@pytest.mark.parametrize(("path", "expected"), LAYOUTS)
def test_package_of_layouts(path: str, expected: list[tuple[str, str]]) -> None:
    assert package_of(path) == expected


@pytest.mark.parametrize("path", [
    pytest.param("/packages/ab/foo-1.0-invalid.whl", id="wheel with too few tags"),
    pytest.param("/packages/ab/foo-bar.whl", id="wheel without version"),
    pytest.param("/packages/ab/foo-not.a.version.tar.gz", id="sdist with bad version"),
    pytest.param("/packages/ab/-1.0.tar.gz", id="sdist without name"),
    pytest.param("/debian/Foo_1.0_amd64.deb", id="deb upper case"),
    pytest.param("/x/noversion.rpm", id="rpm without version"),
    pytest.param("/x/a-b.x86 64.rpm", id="rpm with space"),
    pytest.param("/x/--.rpm", id="rpm dashes only"),
])
def test_unparseable_names_give_no_candidate(path: str) -> None:
    assert package_of(path) == []


@pytest.mark.parametrize("name", ["Signal_Desktop", "signal.desktop", "SIGNAL-desktop", "signal--desktop",
                                  "Signal._-Desktop"])
def test_pep503_normalisation(name: str) -> None:
    assert normalize_name("pypi", name) == "signal-desktop"
    assert package_of(f"/packages/x/{name}-1.0.tar.gz") == [("pypi", "signal-desktop")]
    assert package_of(f"/simple/{name}/") == [("pypi", "signal-desktop")]


@pytest.mark.parametrize(("ecosystem", "name", "expected"), [
    pytest.param("debian", "Signal", None, id="debian is lower case"),
    pytest.param("debian", "libssl3", "libssl3", id="debian"),
    pytest.param("rpm", "Signal-Desktop", "Signal-Desktop", id="rpm keeps case"),
    pytest.param("npm", "@scope/name", "@scope/name", id="npm scoped"),
    pytest.param("npm", "@scope/", None, id="npm empty scoped name"),
    pytest.param("pypi", "-x", None, id="pypi leading dash"),
    pytest.param("pypi", "a b", None, id="pypi space"),
    pytest.param("generic", "x" * 256, None, id="too long"),
])
def test_normalize_name(ecosystem: str, name: str, expected: str | None) -> None:
    assert normalize_name(ecosystem, name) == expected


# --------------------------------------------------------------------------------------------------------------
# Loading: values, identity, the example


def test_example_manifest_loads_and_classifies() -> None:
    catalog = load_catalog(EXAMPLE)
    digest = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()[:12]
    assert catalog.manifest == f"acme-mirror v7 sha256:{digest}"
    c = catalog.classify("/packages/3f/1c/0a9b/matrix_nio-0.24.0-py3-none-any.whl")
    assert (c.category, c.kinds, c.eccn, c.price, c.publicly_available) == (
        "personal-communications", ("chat", "instant-messaging"), "5D992.c", "no-cost", True)
    assert c.manifest == catalog.manifest
    assert c.rule is not None and c.rule.endswith("(package matrix-nio in pypi)")
    assert catalog.classify("/debian/pool/main/o/openssl/libssl3_3.0.11-1_amd64.deb").eccn == "not-subject-to-ear"
    assert catalog.classify("/npm/@matrix-org/olm/-/olm-3.2.15.tgz").category == "personal-communications"
    assert catalog.classify("/rpm/40/x86_64/firefox-125.0-1.fc40.x86_64.rpm").kinds == ("web-browsing",)
    assert catalog.classify("/downloads/vpn-pro/vpn-pro-2.0.exe").price == "fee"
    assert catalog.classify("/downloads/vpn-pro/vpn-pro-lite-2.0.exe").price == "no-cost"
    assert catalog.classify("/downloads/vpn-pro/README.txt").category == "other"
    assert catalog.classify("/downloads/signal-desktop-7.0.0.dmg").kinds == ("instant-messaging",)
    assert check_catalog(EXAMPLE) == []


def test_rule_and_manifest_strings(tmp_path: Path) -> None:
    path = write(tmp_path, """\
      - package: Signal_Desktop
        ecosystem: pypi
        class: personal-communications
        kinds: [instant-messaging, chat]
        eccn: 5D992.c
        price: no-cost
        publicly_available: true
        note: free messenger
      - path: /downloads/**
        class: other
    """, head="manifest: acme\nversion: 2024.02\nartifacts:\n")
    catalog = load_catalog(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    c = catalog.classify("/simple/signal-desktop/")
    assert c.to_dict() == {
        "classified": True, "category": "personal-communications", "kinds": ["instant-messaging", "chat"],
        "eccn": "5D992.c", "price": "no-cost", "publicly_available": True, "note": "free messenger",
        "rule": f"{path}:4 (package Signal_Desktop in pypi)", "manifest": f"acme v2024.02 sha256:{digest}",
    }
    g = catalog.classify("/downloads/x")
    assert g.rule == f"{path}:12 (path /downloads/**)"
    assert (g.eccn, g.price, g.publicly_available, g.kinds, g.note) == (None, None, None, (), "")


def test_same_object_for_same_rule_and_cache() -> None:
    catalog = parse_catalog(rules("path: /a/**", "package: foo"))
    first = catalog.classify("/a/x")
    assert catalog.classify("/a/y") is first
    assert catalog.classify("/a/x") is first
    assert catalog.classify("/packages/x/foo-1.0.tar.gz") is catalog.classify("/simple/Foo/")
    assert catalog.cache_info().hits >= 1
    long_path = "/a/" + "x" * 5000  # classified, not cached
    assert catalog.classify(long_path) is first


def test_unclassified_names_the_manifest() -> None:
    catalog = parse_catalog(rules("path: /a/**"))
    c = catalog.classify("/b")
    assert not c.classified and c.rule is None and c.manifest == catalog.manifest
    assert catalog.classify("/c") is c


def test_empty_catalog() -> None:
    catalog = Catalog.empty()
    assert catalog.classify("/anything") is UNCLASSIFIED
    assert catalog.explain("/simple/foo/").to_dict()["matches"] == []
    assert len(catalog) == 0


def test_empty_artifacts_list_is_valid() -> None:
    catalog = parse_catalog("manifest: m\nversion: '1'\nartifacts: []\n")
    assert not catalog.classify("/x").classified


@pytest.mark.parametrize(("version", "shown"), [
    pytest.param("7", "7", id="int"),
    pytest.param("2024.02", "2024.02", id="float"),
    pytest.param("2024.10", "2024.10", id="float ending in 0, as written"),
    pytest.param("1.10", "1.10", id="1.10 is not 1.1"),
    pytest.param("2024-02-01", "2024-02-01", id="unquoted date"),
    pytest.param("'r7-beta'", "r7-beta", id="text"),
])
def test_version_forms(version: str, shown: str) -> None:
    catalog = parse_catalog(f"manifest: m\nversion: {version}\nartifacts: []\n")
    assert catalog.manifest is not None and catalog.manifest.startswith(f"m v{shown} sha256:")


def test_case_insensitive_origin() -> None:
    text = rules("path: /Downloads/VPN/**", "path: /docs/Guide.PDF", "package: Foo", "package: Bar\n    ecosystem: rpm")
    insensitive = parse_catalog(text, case_sensitive=False)
    assert winner_note(insensitive, "/downloads/vpn/x.exe") == "rule0"
    assert winner_note(insensitive, "/DOWNLOADS/Vpn/X.EXE") == "rule0"
    assert winner_note(insensitive, "/DOCS/guide.pdf") == "rule1"
    assert winner_note(insensitive, "/x/BAR-1.0-1.x86_64.rpm") == "rule3"
    sensitive = parse_catalog(text)
    assert winner_note(sensitive, "/downloads/vpn/x.exe") is None
    assert winner_note(sensitive, "/docs/guide.pdf") is None
    assert winner_note(sensitive, "/x/BAR-1.0-1.x86_64.rpm") is None
    assert winner_note(sensitive, "/simple/FOO/") == "rule2"  # PyPI names ignore case anyway


@pytest.mark.parametrize("path", [
    pytest.param("/tools/SECRET-KIT-1.0.tar.gz", id="upper"),
    pytest.param("/tools/\u017fecret-kit-1.0.tar.gz", id="long s"),
    pytest.param("/tools/\u017fECRET-KIT-1.0.TAR.GZ", id="long s upper"),
    pytest.param("/tool\u017f/secret-kit-1.0.tar.gz", id="long s in a directory"),
    pytest.param("/tools/secret-k\u0131t-1.0.tar.gz", id="dotless i"),
    pytest.param("/tools/secret-\u212ait-1.0.tar.gz", id="kelvin sign"),
])
def test_case_insensitive_origin_folds_every_spelling_of_a_letter(path: str) -> None:
    """``lower()`` keeps ſ apart from s and ı apart from i; a case-insensitive origin (NTFS, APFS) opens the same
    file for both, so the rule written for it must win, not a broader one."""
    text = rules("path: /tools/secret-kit-1.0.tar.gz", "path: /tools/**")
    assert winner_note(parse_catalog(text, case_sensitive=False), path) == "rule0"
    assert winner_note(parse_catalog(text), path) in ("rule1", None)  # case-sensitive: another file


# --------------------------------------------------------------------------------------------------------------
# Precedence

PRECEDENCE = [
    pytest.param(["path: /downloads/foo-1.0.tar.gz", "package: foo\n    ecosystem: generic", "package: foo",
                  "path: /downloads/**"], "/downloads/foo-1.0.tar.gz", "rule0", id="exact beats package"),
    pytest.param(["package: foo", "package: foo\n    ecosystem: pypi", "path: /packages/**"],
                 "/packages/a/foo-1.0-py3-none-any.whl", "rule1", id="ecosystem beats any"),
    pytest.param(["package: foo\n    ecosystem: debian", "package: foo"],
                 "/packages/a/foo-1.0-py3-none-any.whl", "rule1", id="other ecosystem does not match"),
    pytest.param(["path: /packages/a/foo-*.whl", "package: foo"],
                 "/packages/a/foo-1.0-py3-none-any.whl", "rule1", id="package beats specific glob"),
    pytest.param(["package: openssl\n    ecosystem: debian", "package: libssl3\n    ecosystem: debian"],
                 "/debian/pool/main/o/openssl/libssl3_3.0_amd64.deb", "rule1", id="own name before source"),
    pytest.param(["package: libssl3", "package: openssl\n    ecosystem: debian"],
                 "/debian/pool/main/o/openssl/libssl3_3.0_amd64.deb", "rule1",
                 id="source with ecosystem beats binary any"),
    pytest.param(["path: /downloads/**", "path: /downloads/**/*.dmg"], "/downloads/a/b.dmg", "rule1",
                 id="more literals"),
    pytest.param(["path: /d/**/x", "path: /d/*/x"], "/d/a/x", "rule1", id="fewer double stars"),
    pytest.param(["path: /d/?/x*", "path: /d/a/*"], "/d/a/xy", "rule1", id="more literals beat fewer wildcards"),
    pytest.param(["path: /d/*?", "path: /d/*"], "/d/ab", "rule1", id="fewer wildcards"),
    pytest.param(["path: /d/[ab]", "path: /d/?"], "/d/a", "rule0", id="same specificity file order"),
    pytest.param(["path: /d/?", "path: /d/[ab]"], "/d/a", "rule0", id="same specificity file order reversed"),
    pytest.param(["path: /**", "path: /*"], "/x", "rule1", id="star beats double star at equal literals"),
    pytest.param(["path: /a/b/c/**", "path: /**/c/d"], "/a/b/c/d", "rule0", id="across index nodes"),
    pytest.param(["path: /a/**", "path: /**/d.exe"], "/a/b/c/d.exe", "rule1", id="root node beats deeper node"),
    pytest.param(["path: /a/**"], "/a", None, id="trailing double star needs the slash"),
    pytest.param(["path: /a/**"], "/a/", "rule0", id="trailing double star matches the directory"),
    pytest.param(["path: /a/**/b"], "/a/b", "rule0", id="double star matches zero segments"),
    pytest.param(["path: /a/*/b"], "/a/b", None, id="star needs a segment"),
    pytest.param(["path: /a/*/b"], "/a//b", "rule0", id="star matches an empty segment"),
    pytest.param(["path: /a/*"], "/a/b/c", None, id="star stays in its segment"),
    pytest.param(["path: /a/[!b]"], "/a//", None, id="negated set never matches slash"),
    pytest.param(["path: /a/x?"], "/a/x/", None, id="question mark never matches slash"),
    pytest.param(["path: /100%25/*"], "/100%25/a", "rule0", id="percent is literal"),
    pytest.param(["path: /a/[*]"], "/a/*", "rule0", id="literal star"),
    pytest.param(["path: /a/[*]"], "/a/b", None, id="literal star only"),
    pytest.param(["path: /a/[[]x]"], "/a/[x]", "rule0", id="literal bracket"),
    pytest.param(["path: /a/[]x]"], "/a/]", "rule0", id="bracket first in set"),
    pytest.param(["path: /a/x-[0-9].*"], "/a/x-7.tar", "rule0", id="range"),
    pytest.param(["path: /a/*.tar.*"], "/a/x\n.tar.gz", "rule0", id="newline in path"),
]


@pytest.mark.parametrize(("items", "path", "expected"), PRECEDENCE)
def test_precedence(items: list[str], path: str, expected: str | None) -> None:
    catalog = parse_catalog(rules(*items))
    assert winner_note(catalog, path) == expected
    explanation = catalog.explain(path)
    assert explanation.classification is catalog.classify(path)
    assert (explanation.winner.rule.classification.note if explanation.winner else None) == expected
    # the same rule wins whatever order the rules are written in (except between equally specific globs)
    if not any("earlier in the manifest" in (m.lost_because or "") for m in explanation.matches):
        backwards = parse_catalog(rules(*reversed(items)))
        assert matcher_of(backwards, path) == matcher_of(catalog, path)


def test_explain_lists_every_match_with_reasons(tmp_path: Path) -> None:
    path = write(tmp_path, """\
      - path: /downloads/**
        class: other
      - package: vpn-pro
        class: anti-censorship
      - path: /downloads/vpn-pro-2.0.exe
        class: anti-censorship
        eccn: 5D002
      - path: /downloads/*.exe
        class: other
        eccn: EAR99
      - package: vpn-pro
        ecosystem: generic
        class: anti-censorship
        eccn: 5D992.c
    """)
    catalog = load_catalog(path)
    e = catalog.explain("/downloads/vpn-pro-2.0.exe")
    assert [m.rule.line for m in e.matches] == [8, 14, 6, 11, 4]
    assert [m.tier for m in e.matches] == [TIER_NAMES[0], TIER_NAMES[1], TIER_NAMES[2], TIER_NAMES[3],
                                           TIER_NAMES[3]]
    assert [m.won for m in e.matches] == [True, False, False, False, False]
    assert [m.lost_because for m in e.matches] == [
        None,
        "an exact path beats a package rule for this ecosystem",
        "an exact path beats a package rule for any ecosystem",
        "an exact path beats a path glob",
        "an exact path beats a path glob",
    ]
    assert e.packages == (("generic", "vpn-pro"),)
    d = e.to_dict()
    assert d["classification"]["eccn"] == "5D002"
    assert d["matches"][1]["via"] == ["generic", "vpn-pro"]
    assert d["matches"][0]["rule"] == f"{path}:8"
    text = "\n".join(e.lines())
    assert "<- wins" in text and f"{path}:14 package vpn-pro in generic" in text
    # between globs, the reason names the measure that decided
    e2 = catalog.explain("/downloads/other.exe")
    assert [m.lost_because for m in e2.matches] == [None, "more literal characters (15 vs 11)"]
    e3 = parse_catalog(rules("path: /d/[ab]", "path: /d/?")).explain("/d/a")
    assert e3.matches[1].lost_because == "equally specific, and earlier in the manifest (line 4 vs 9)"
    assert "no rule matched" in "\n".join(catalog.explain("/nowhere").lines())


# --------------------------------------------------------------------------------------------------------------
# Bad manifests: every error with its line

BAD = [
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    colour: red\n",
                 [(6, "unknown key 'colour'")], id="unknown rule key"),
    pytest.param("manifest: m\nversion: 1\nartifacts: []\nextra: 1\n", [(4, "unknown key 'extra'")],
                 id="unknown top key"),
    pytest.param("version: 1\nartifacts: []\n", [(1, "missing required key 'manifest'")], id="no name"),
    pytest.param("manifest: '  '\nversion: 1\nartifacts: []\n", [(1, "name must not be empty")],
                 id="blank name"),
    pytest.param("manifest: m\nartifacts: []\n", [(1, "missing required key 'version'")], id="no version"),
    pytest.param("manifest: m\nversion: true\nartifacts: []\n", [(2, "version must be a number or text")],
                 id="bool version"),
    pytest.param("manifest: m\nversion: [1]\nartifacts: []\n", [(2, "version must be a number or text")],
                 id="list version"),
    pytest.param("manifest: m\nversion: 1\n", [(1, "missing required key 'artifacts'")], id="no artifacts"),
    pytest.param("manifest: m\nversion: 1\nartifacts: {a: 1}\n", [(3, "artifacts must be a list")],
                 id="artifacts mapping"),
    pytest.param("manifest: m\nversion: 1\nartifacts: nope\n", [(3, "artifacts must be a list")],
                 id="artifacts text"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - just text\n", [(4, "must be a mapping")],
                 id="rule not a mapping"),
    pytest.param("", [(1, "the manifest is empty")], id="empty file"),
    pytest.param("- a\n- b\n", [(1, "the manifest is a Sequence")], id="top level list"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    class: fee\n",
                 [(6, "duplicate key 'class'")], id="yaml duplicate key"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: [/a\n", [(None, "YAML syntax error")],
                 id="yaml syntax"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - class: other\n", [(4, "needs package")],
                 id="neither package nor path"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: a\n    path: /a\n    class: other\n",
                 [(4, "either package or path, not both")], id="both package and path"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    ecosystem: pypi\n    class: other\n",
                 [(5, "ecosystem applies to package rules only")], id="ecosystem with path"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: a\n    ecosystem: cargo\n    class: other\n",
                 [(5, "ecosystem must be one of pypi, debian, rpm, npm, generic")], id="unknown ecosystem"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: ''\n    class: other\n",
                 [(4, "package is empty")], id="empty package"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: signal-*\n    class: other\n",
                 [(4, "use path for a pattern")], id="package with wildcard"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: Foo\n    ecosystem: debian\n    class: other\n",
                 [(4, "not a valid debian package name")], id="invalid debian name"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: [a]\n    class: other\n",
                 [(4, "package must be text")], id="package list"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: ''\n    class: other\n",
                 [(4, "path is empty")], id="empty glob"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: a/**\n    class: other\n",
                 [(4, "must start with /")], id="relative glob"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a**\n    class: other\n",
                 [(4, "** must be a whole segment")], id="double star in segment"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a/***\n    class: other\n",
                 [(4, "** must be a whole segment")], id="triple star"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a/[bc\n    class: other\n",
                 [(4, "unclosed [")], id="unclosed set"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a/[/]\n    class: other\n",
                 [(4, "unclosed [")], id="slash in set"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a/[z-a]\n    class: other\n",
                 [(4, "range z-a is backwards")], id="backwards range"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a/[+-0]\n    class: other\n",
                 [(4, "includes /")], id="range over slash"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: \"/a/\\tb\"\n    class: other\n",
                 [(4, "control character")], id="control character"),
    # Request paths are matched with // merged and dot-segments resolved: a rule spelled otherwise never applies,
    # and the artifact it was written for would fall through to a broader rule.
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /tools//secret-1.0.tar.gz\n    class: other\n",
                 [(4, "empty segment ('//')")], id="double slash"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: //tools/**\n    class: other\n",
                 [(4, "write '/tools/**'")], id="leading double slash"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /tools/./vault/**\n    class: other\n",
                 [(4, "'.' segment")], id="dot segment"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /tools/x/../vault.tar.gz\n    class: other\n",
                 [(4, "'..' segment")], id="dot-dot segment"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /tools/vault/.\n    class: other\n",
                 [(4, "'.' segment")], id="trailing dot segment"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n", [(4, "missing required key 'class'")],
                 id="no class"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: malware\n",
                 [(5, "class must be one of")], id="unknown class"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    kinds: [chat]\n",
                 [(6, "kinds apply only to class personal-communications")], id="kinds on other"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: personal-communications\n",
                 [(5, "needs kinds")], id="personal communications without kinds"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: personal-communications\n"
                 "    kinds: []\n", [(6, "needs kinds")], id="empty kinds"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: personal-communications\n"
                 "    kinds: [telepathy]\n", [(6, "kind 'telepathy' is not one of")], id="unknown kind"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: personal-communications\n"
                 "    kinds: [chat, chat]\n", [(6, "listed twice")], id="kind twice"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    eccn: 5d992.c\n",
                 [(6, "did you mean 5D992.c?")], id="eccn lower case"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    eccn: ear99\n",
                 [(6, "did you mean EAR99?")], id="ear99 lower case"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    eccn: 5X002\n",
                 [(6, "is not an ECCN")], id="eccn bad group"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    eccn: 5D002..a\n",
                 [(6, "is not an ECCN")], id="eccn empty paragraph"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    price: free\n",
                 [(6, "price must be one of no-cost, fee")], id="unknown price"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n"
                 "    publicly_available: 'yes'\n", [(6, "publicly_available must be true or false")],
                 id="publicly available text"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    note: [x]\n",
                 [(6, "note must be text")], id="note list"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a/*\n    class: other\n"
                 "  - path: /a/*\n    class: other\n",
                 [(6, "duplicate rule: path /a/* is already classified the same way at line 4")],
                 id="duplicate glob"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - path: /a\n    class: other\n    eccn: EAR99\n"
                 "  - path: /a\n    class: other\n    eccn: 5D002\n",
                 [(7, "contradictory rule: path /a is classified at")], id="contradictory exact path"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: Signal_Desktop\n    ecosystem: pypi\n"
                 "    class: other\n  - package: signal.desktop\n    ecosystem: pypi\n    class: anti-censorship\n",
                 [(7, "the same package as package Signal_Desktop in pypi")], id="contradiction by PEP 503"),
    pytest.param("manifest: m\nversion: 1\nartifacts:\n  - package: foo\n    class: other\n    note: a\n"
                 "  - package: foo\n    class: other\n    note: b\n",
                 [(7, "duplicate rule: package foo")], id="duplicate with different note"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_manifest(tmp_path: Path, text: str, expected: list[tuple[int | None, str]]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigErrors) as info:
        load_catalog(path)
    errors = info.value.errors
    assert [(e.line if line is not None else None) for e, (line, _) in zip(errors, expected)] == \
        [line for line, _ in expected], [str(e) for e in errors]
    assert len(errors) == len(expected), [str(e) for e in errors]
    for error, (line, fragment) in zip(errors, expected):
        assert error.file == str(path)
        assert fragment in error.message, str(error)
        if line is not None:
            assert str(error).startswith(f"{path}:{line}: ")
    assert check_catalog(path) == errors or [str(e) for e in check_catalog(path)] == [str(e) for e in errors]


def test_all_errors_of_a_file_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, """\
      - path: /a
        class: other
        eccn: 5d002
        price: gratis
      - package: x
        path: /x
        class: nope
      - path: /ok/**
        class: other
      - path: /ok/**
        class: anti-censorship
    """, head="manifest: m\nartifacts:\n")
    errors = check_catalog(path)
    assert [e.line for e in errors] == [1, 5, 6, 7, 9, 12], "\n".join(map(str, errors))
    assert "is classified at line 10 with class other; this rule says class anti-censorship" in str(errors[-1])


@pytest.mark.parametrize(("setup", "message"), [
    pytest.param(lambda p: None, "manifest file not found", id="missing"),
    pytest.param(lambda p: p.mkdir(), "is a directory", id="directory"),
    pytest.param(lambda p: p.write_bytes(b"manifest: \xff\n"), "not UTF-8", id="not utf-8"),
])
def test_unreadable_file(tmp_path: Path, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    setup(path)
    with pytest.raises(ConfigErrors) as info:
        load_catalog(path)
    assert info.value.errors[0].file == str(path) and message in info.value.errors[0].message


def test_same_name_in_two_ecosystems_is_not_a_conflict() -> None:
    catalog = parse_catalog(rules("package: foo\n    ecosystem: pypi", "package: foo\n    ecosystem: npm",
                                  "package: foo"))
    assert winner_note(catalog, "/npm/foo/-/foo-1.0.0.tgz") == "rule1"
    assert winner_note(catalog, "/simple/foo/") == "rule0"
    assert winner_note(catalog, "/x/foo-1.0-1.noarch.rpm") == "rule2"


def test_any_ecosystem_names_conflict_where_an_ecosystem_equates_them() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_catalog(rules("package: Foo_Bar", "package: foo-bar"))
    assert "the same package as package Foo_Bar" in str(info.value)
    # in RPM the two are different names, so each still matches its own there when scoped
    catalog = parse_catalog(rules("package: Foo_Bar\n    ecosystem: rpm", "package: foo-bar\n    ecosystem: rpm"))
    assert winner_note(catalog, "/x/Foo_Bar-1-1.noarch.rpm") == "rule0"
    assert winner_note(catalog, "/x/foo-bar-1-1.noarch.rpm") == "rule1"


# --------------------------------------------------------------------------------------------------------------
# Globs and the documentation


@pytest.mark.parametrize(("glob", "literals", "double_stars", "wildcards", "prefix"), [
    pytest.param("/downloads/**", 11, 1, 0, ("downloads",), id="trailing double star"),
    pytest.param("/downloads/**/*.dmg", 16, 1, 1, ("downloads",), id="double star and star"),
    pytest.param("/a/b/[ch]?x", 6, 0, 2, ("a", "b"), id="set and question mark"),
    pytest.param("/a/**/**/b", 6, 1, 0, ("a",), id="repeated double star collapses"),
    pytest.param("/*/a/b", 5, 0, 1, (), id="wild first segment"),
    pytest.param("/a/b", 4, 0, 0, ("a",), id="exact"),
])
def test_glob_specificity(glob: str, literals: int, double_stars: int, wildcards: int,
                          prefix: tuple[str, ...]) -> None:
    g = compile_glob(glob)
    assert (g.literals, g.double_stars, g.wildcards, g.literal_prefix) == (literals, double_stars, wildcards, prefix)


def test_doc_covers_every_key_and_value() -> None:
    from exportgate import catalog as mod
    from exportgate.classification import CLASSES, PERSONAL_COMMUNICATIONS_KINDS, PRICES
    from exportgate.packagenames import ECOSYSTEMS

    doc = DOC.read_text(encoding="utf-8")
    for word in (*mod._TOP_KEYS, *mod._RULE_KEYS, *CLASSES, *PERSONAL_COMMUNICATIONS_KINDS, *PRICES, *ECOSYSTEMS):
        assert f"`{word}`" in doc, word
    # the doc's explain sample is what the code prints for the example manifest
    lines = load_catalog(EXAMPLE).explain("/downloads/vpn-pro/vpn-pro-lite-2.0.exe").lines()
    for line in lines[2:]:
        assert line.replace(str(EXAMPLE), "examples/catalog.yaml") in doc, line


def test_describe_for_check() -> None:
    catalog = load_catalog(EXAMPLE)
    assert catalog.describe() == {"manifest": catalog.manifest, "rules": 12, "exact_paths": 1, "package_rules": 8,
                                  "globs": 3, "case_sensitive": True}
    assert Catalog.empty().describe()["manifest"] is None

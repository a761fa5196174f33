"""Which package a mirror path belongs to: ``package_of("/packages/…/Signal_Desktop-7.0-py3-none-any.whl")``.

The catalog uses this to match manifest rules written by package name. :func:`package_of` reads the common
layouts and returns candidate ``(ecosystem, name)`` pairs, best first (the file's own name, then the source
package it belongs to); :func:`normalize_name` is how a name written in the manifest is put in the same form, so
a rule and a path meet in one dict lookup.

=========  =====================================================================  ================================
ecosystem  recognised                                                             name form
=========  =====================================================================  ================================
pypi       ``*.whl`` (and PEP 658 ``*.whl.metadata``) anywhere; sdists            PEP 503 (``canonicalize_name``)
           ``name-ver.tar.gz``/``.zip`` (any case, other compressions, eggs,
           bdist_dumb/wininst builds) under a ``packages`` directory;
           ``…/simple/<name>/`` (or ``/index.html``); ``…/pypi/<name>[/<ver>]/json``
debian     ``name_ver_arch.deb``/``.udeb``/``.ddeb``, ``name_ver.dsc``,            as written (Debian names are
           ``name_ver.orig[-comp].tar.*[.asc]``, ``name_ver.debian.tar.*``,        lower case by policy)
           ``name_ver.diff.gz``; any file or listing under
           ``…/pool/<component>/<prefix>/<source>/`` also gives ``<source>``
rpm        ``name-version-release.arch.rpm``                                     as written (RPM is case-sensitive)
npm        ``…/<name>/-/<name>-<ver>.tgz``, ``…/@scope/name/-/name-<ver>.tgz``    as written, scoped ``@scope/name``
generic    ``name-1.2.3.ext`` (also ``name-v1.2.3.ext``), only when no other       PEP 503-style: case and runs of
           layout recognised the path                                            ``-_.`` do not matter
=========  =====================================================================  ================================

Caveat: this is a reading of file names, not of file contents. A name that does not parse gives no candidate
(never a guess), and a file with an ecosystem's own extension (``.whl``, ``.deb``, ``.rpm``, an npm tarball)
that does not parse is not offered to the generic reading either: an unclassified artifact is the fail-closed
answer. Sdists outside a ``packages`` directory are read as generic downloads, because ``openssl-3.0.tar.gz``
on a downloads page is not a PyPI project.
"""

from __future__ import annotations

import re

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

PYPI, DEBIAN, RPM, NPM, GENERIC = "pypi", "debian", "rpm", "npm", "generic"
ECOSYSTEMS = (PYPI, DEBIAN, RPM, NPM, GENERIC)

# File names longer than this are not package files (file systems stop at 255 bytes); refusing them early also
# keeps every regex below linear in practice.
MAX_NAME = 255
MAX_PATH = 8192

_VALID = {
    PYPI: re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"),  # PEP 508 project names
    DEBIAN: re.compile(r"[a-z0-9][a-z0-9+.-]+"),  # Debian policy 5.6.1
    RPM: re.compile(r"[A-Za-z0-9._+][A-Za-z0-9._+-]*"),
    # npm: lower case since 2017, but legacy names with capitals exist and are still served.
    NPM: re.compile(r"(?:@[A-Za-z0-9~-][A-Za-z0-9._~-]*/)?[A-Za-z0-9~-][A-Za-z0-9._~-]*"),
    GENERIC: re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*"),
}

_DEB_BINARY = re.compile(r"(?P<name>[a-z0-9][a-z0-9+.-]+)_[0-9][A-Za-z0-9.+~:-]*_[a-z0-9-]+\.[ud]?deb")
_DEB_SOURCE = re.compile(
    r"(?P<name>[a-z0-9][a-z0-9+.-]+)_[0-9][A-Za-z0-9.+~:-]*"
    r"(?:\.dsc|\.orig(?:-[A-Za-z0-9-]+)?\.tar\.(?:gz|xz|bz2|lzma|zst)(?:\.asc)?"
    r"|\.debian\.tar\.(?:gz|xz|bz2|lzma|zst)|\.diff\.gz)"
)
_DEB_NATIVE = re.compile(r"(?P<name>[a-z0-9][a-z0-9+.-]+)_[0-9][A-Za-z0-9.+~:-]*\.tar\.(?:gz|xz|bz2|lzma|zst)")
_RPM_ARCH = re.compile(r"[A-Za-z0-9_]+")
_RPM_PART = re.compile(r"[A-Za-z0-9._+~^]+")
_NPM_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]*")
# A generic download: a name, a dash, a version that starts with a digit (optionally after "v"), an extension.
# A dash inside the name is allowed only when a digit does not follow it, so the first "-1…" starts the version.
_GENERIC = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._+~]|-(?![vV]?[0-9]))*)-(?P<version>[vV]?[0-9][A-Za-z0-9._+~-]*)"
    r"\.[A-Za-z0-9]+"
)
# Another place in the version where one could start: then the name is not known (chatpkg-2fa-1.0 is chatpkg 2fa-1.0
# or chatpkg-2fa 1.0), and the file names no package rather than a guess that could be another project's.
_ANOTHER_VERSION_START = re.compile(r"-[vV]?[0-9]")
# What pypiserver (and PyPI, for older uploads) serves as a project's files besides wheels, compared in lower case.
_PYPI_ARCHIVES = (".tar.gz", ".zip", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar.zst", ".tar", ".egg",
                  ".exe", ".msi")
_ECOSYSTEM_EXTENSIONS = (".whl", ".whl.metadata", ".deb", ".udeb", ".ddeb", ".dsc", ".rpm")


def normalize_name(ecosystem: str, name: str) -> str | None:
    """``name`` in the form ``ecosystem`` compares names in, or ``None`` if it is not a valid name there."""
    if len(name) > MAX_NAME or not _VALID[ecosystem].fullmatch(name):
        return None
    if ecosystem in (PYPI, GENERIC):
        return canonicalize_name(name)
    return name


def package_of(path: str) -> list[tuple[str, str]]:
    """Candidate ``(ecosystem, name)`` pairs for a normalised request path, best first; ``[]`` when none.

    Pure and total: any text gives a list (possibly empty), never an exception.
    """
    if len(path) > MAX_PATH:
        return []
    segments = path.split("/")
    filename = segments[-1]
    directories = segments[:-1]
    found: list[tuple[str, str]] = []
    if len(filename) <= MAX_NAME:
        _pypi_file(filename, directories, found)
        _debian_file(filename, directories, found)
        _rpm_file(filename, found)
        _npm_file(filename, directories, found)
        # The file's own name before any a directory gives (a pool's source package): a generic download stored
        # under pool/…/chatpkg/ named cryptopkg-2.0-setup.exe is cryptopkg first.
        if not found and not _claimed(filename, directories):
            _generic_file(filename, found)
    _pypi_pages(segments, found)
    _debian_pool(directories, found)
    unique: list[tuple[str, str]] = []
    for candidate in found:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def _claimed(filename: str, directories: list[str]) -> bool:
    """A file in an ecosystem's own form: if it did not parse, it is not a generic download either."""
    npm_tarball = filename.endswith(".tgz") and directories[-1:] == ["-"]
    return npm_tarball or filename.endswith(_ECOSYSTEM_EXTENSIONS)


def _add(found: list[tuple[str, str]], ecosystem: str, name: str) -> None:
    normal = normalize_name(ecosystem, name)
    if normal is not None:
        found.append((ecosystem, normal))


def _pypi_file(filename: str, directories: list[str], found: list[tuple[str, str]]) -> None:
    # PEP 658 metadata files belong to the distribution they describe (pip fetches them first).
    filename = filename.removesuffix(".metadata")
    if not filename.isascii():  # PEP 427/625 names are ASCII; packaging would fold the Kelvin sign into "k"
        return
    if filename.endswith(".whl"):
        try:
            _add(found, PYPI, parse_wheel_filename(filename)[0])
        except ValueError:  # InvalidWheelFilename, InvalidVersion
            pass
        return
    if "packages" not in directories:
        return
    lower = filename.lower()
    suffix = next((s for s in _PYPI_ARCHIVES if lower.endswith(s)), None)
    if suffix is None:
        return
    if suffix in (".tar.gz", ".zip"):
        try:  # a PEP 625 sdist (packaging reads the suffix in lower case only)
            sdist = parse_sdist_filename(filename[: -len(suffix)] + suffix)[0]
        except ValueError:  # InvalidSdistFilename, InvalidVersion: read as below
            pass
        else:
            _add(found, PYPI, sdist)
            if not filename.endswith(suffix):  # .TAR.GZ: also the generic download it was read as before
                _add(found, GENERIC, sdist)
            return
    # What an index still serves under a project beside PEP 625 sdists: an egg (name-1.0-py3.11.egg), bdist_dumb
    # and bdist_wininst builds (name-1.0.linux-x86_64.tar.gz, name-1.0.win32.exe), other compressions, a version
    # outside PEP 440 (name-0.7-beta.tar.gz). The name is read up to the version, as a generic download's is:
    # only where one place could start the version. It stays a generic download too (an installer in a directory
    # that happens to be called packages), as it was read before.
    name = _generic_name(filename)
    if name is not None:
        _add(found, PYPI, name)
        _add(found, GENERIC, name)


def _pypi_pages(segments: list[str], found: list[tuple[str, str]]) -> None:
    n = len(segments)
    # …/simple/<name>/ and …/simple/<name>/index.html (bandersnatch writes the latter)
    if n >= 4 and segments[-3] == "simple" and segments[-1] in ("", "index.html"):
        _add(found, PYPI, segments[-2])
    # The JSON API: …/pypi/<name>/json and …/pypi/<name>/<version>/json
    if segments[-1] == "json":
        if n >= 4 and segments[-3] == "pypi":
            _add(found, PYPI, segments[-2])
        elif n >= 5 and segments[-4] == "pypi":
            _add(found, PYPI, segments[-3])


def _debian_file(filename: str, directories: list[str], found: list[tuple[str, str]]) -> None:
    match = _DEB_BINARY.fullmatch(filename) or _DEB_SOURCE.fullmatch(filename)
    if match is None and "pool" in directories:
        match = _DEB_NATIVE.fullmatch(filename)
    if match is not None:
        _add(found, DEBIAN, match["name"])


def _debian_pool(directories: list[str], found: list[tuple[str, str]]) -> None:
    # pool/<component…>/<prefix>/<source>/: the component may be nested (pool/updates/main on security mirrors),
    # so read the last two directories and require a pool directory above them.
    if len(directories) < 4 or "pool" not in directories[:-3]:
        return
    prefix, source = directories[-2], directories[-1]
    expected = source[:4] if source.startswith("lib") and len(source) > 3 else source[:1]
    if prefix and prefix == expected:
        _add(found, DEBIAN, source)


def _rpm_file(filename: str, found: list[tuple[str, str]]) -> None:
    if not filename.endswith(".rpm"):
        return
    stem, _, arch = filename[: -len(".rpm")].rpartition(".")
    parts = stem.rsplit("-", 2)
    if len(parts) != 3 or not _RPM_ARCH.fullmatch(arch):
        return
    name, version, release = parts
    if _RPM_PART.fullmatch(version) and _RPM_PART.fullmatch(release):
        _add(found, RPM, name)


def _npm_file(filename: str, directories: list[str], found: list[tuple[str, str]]) -> None:
    # <registry>/<name>/-/<name>-<version>.tgz, scoped: <registry>/@scope/<name>/-/<name>-<version>.tgz
    if not filename.endswith(".tgz") or len(directories) < 3 or directories[-1] != "-":
        return
    bare = directories[-2]
    prefix = bare + "-"
    if not bare or not filename.startswith(prefix):
        return
    if not _NPM_VERSION.fullmatch(filename[len(prefix): -len(".tgz")]):
        return
    scope = directories[-3]
    _add(found, NPM, f"{scope}/{bare}" if scope.startswith("@") else bare)


def _generic_file(filename: str, found: list[tuple[str, str]]) -> None:
    name = _generic_name(filename)
    if name is not None:
        _add(found, GENERIC, name)


def _generic_name(filename: str) -> str | None:
    """``name`` of ``name-1.2.3.ext``, or None when none or more than one place could start the version."""
    match = _GENERIC.fullmatch(filename)
    if match is None or _ANOTHER_VERSION_START.search(match["version"]):
        return None
    return match["name"]

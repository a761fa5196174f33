"""Reading the classification manifest: YAML text in, checked :class:`Rule` values out, every fault at once.

The manifest (docs/classification-manifest.md) is a mapping with ``manifest`` (a name), ``version`` and
``artifacts``, a list of rules. Each rule has either ``package`` (optionally with ``ecosystem``) or ``path`` (a
glob, :mod:`exportgate.globs`), and says what the artifact is: ``class``, ``kinds`` (for personal
communications), ``eccn``, ``price``, ``publicly_available`` and a free ``note``. :func:`read_rules` checks all
of it and keeps going after a fault, so a release engineer sees every mistake of a file in one run, each as a
:class:`~exportgate.errors.ConfigError` naming file:line. The manifest's identity — name, version and the first
12 hex digits of the text's SHA-256 — goes into every classification, so a decision record shows exactly which
manifest text classified the download.

Use :func:`exportgate.catalog.load_catalog` or :func:`~exportgate.catalog.parse_catalog`: they read through
here and then compile the rules into a :class:`~exportgate.catalog.Catalog`, which adds the faults only visible
across rules (the same path or package twice).

Caveat: validation refuses what could silently never match — unknown keys, misspelt classes or ECCNs, package
names no ecosystem accepts, malformed globs — because a rule that never matches leaves its artifacts
unclassified, and unclassified gets whatever the policy pack says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import yamlfile
from .classification import (
    CLASSES,
    KNOWN_ECCNS,
    PERSONAL_COMMUNICATIONS,
    PERSONAL_COMMUNICATIONS_KINDS,
    PRICES,
    UNCLASSIFIED,
    Classification,
    is_eccn,
)
from .errors import ConfigError, ConfigErrors
from .globs import compile_glob
from .packagenames import ECOSYSTEMS, normalize_name

TOP_KEYS = ("manifest", "version", "artifacts")
"""The keys of the manifest mapping."""
RULE_KEYS = ("package", "ecosystem", "path", "class", "kinds", "eccn", "price", "publicly_available", "note")
"""The keys of one rule."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One manifest rule: what it matches and the classification it gives."""

    file: str
    """The manifest file the rule is in."""

    line: int
    """Line of the rule in that file."""

    classification: Classification
    """What the rule says; the very object :meth:`~exportgate.catalog.Catalog.classify` returns when the
    rule wins."""

    package: str | None = None
    """The package name as written (a package rule), else ``None``."""

    ecosystem: str | None = None
    """For package rules: the ecosystem the name is restricted to; ``None`` means any."""

    path: str | None = None
    """The path glob as written (a path rule), else ``None``."""

    @property
    def matcher(self) -> str:
        """``package signal-desktop``, ``package signal-desktop in pypi`` or ``path /downloads/**``."""
        if self.package is not None:
            return f"package {self.package}" + (f" in {self.ecosystem}" if self.ecosystem else "")
        return f"path {self.path}"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def read_manifest_file(path: str | Path) -> str:
    """The text of a manifest file; raises :class:`ConfigErrors` naming the file when it cannot be read."""
    file = str(path)
    try:
        data = yamlfile.read_file(path, what="a manifest (YAML)", missing="manifest file not found")
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigErrors([ConfigError(f"not UTF-8 text ({exc.reason})", file=file)]) from None


def read_rules(text: str, *, file: str) -> tuple[str, list[Rule], list[ConfigError]]:
    """``(identity, rules, faults)`` of manifest text: the rules without faults, and the faults of the others.

    Raises :class:`ConfigErrors` at once only when there is nothing to read rules from (not YAML, not a
    mapping). ``file`` is the name used in messages and in each rule.
    """
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    try:
        doc = yamlfile.loads(text, file)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    errors: list[ConfigError] = []
    if not isinstance(doc, dict):
        what = "empty" if doc is None else f"a {type(doc).__name__}"
        raise ConfigErrors([ConfigError(f"the manifest is {what}; expected a mapping with keys "
                                        f"{', '.join(TOP_KEYS)}", file=file, line=getattr(doc, "line", 1))])
    f = yamlfile.Fields(doc, file=file, what="manifest")
    _unknown_keys(f, TOP_KEYS, errors)
    name = _attempt(errors, lambda: f.str("manifest"))
    if name is not None and not name.strip():
        errors.append(f.error("manifest", "manifest: the name must not be empty"))
    version = _attempt(errors, lambda: _version(f))
    artifacts = _attempt(errors, lambda: f.list("artifacts"))
    ident = f"{name} v{version} sha256:{digest[:12]}"
    rules: list[Rule] = []
    if isinstance(artifacts, yamlfile.Sequence):
        for i, item in enumerate(artifacts):
            rule = _rule(item, artifacts.line_of(i), file, ident, errors)
            if rule is not None:
                rules.append(rule)
    elif artifacts is not None:
        errors.append(f.error("artifacts", "manifest: artifacts must be a list of rules"))
    return ident, rules, errors


def bad_package_name(name: str, ecosystem: str | None) -> str:
    """The message for a package name that ``ecosystem`` (or, when None, every ecosystem) refuses."""
    hint = " (package names are exact; use path for a pattern)" if any(c in name for c in "*?[") else ""
    if ecosystem:
        return f"package {name!r} is not a valid {ecosystem} package name{hint}"
    return f"package {name!r} is not a valid package name in any ecosystem ({', '.join(ECOSYSTEMS)}){hint}"



def _attempt(errors: list[ConfigError], read: Any) -> Any:
    try:
        return read()
    except ConfigError as exc:
        errors.append(exc)
        return None


def _unknown_keys(f: yamlfile.Fields, known: tuple[str, ...], errors: list[ConfigError]) -> None:
    for key in f.map:
        if key not in known:
            errors.append(f.error(key, f"{f.what}: unknown key {key!r} (known keys: {', '.join(known)})"))


def _version(f: yamlfile.Fields) -> str:
    value = f.raw("version")
    if value is None:
        raise f.error(None, "manifest: missing required key 'version' (a number or text, e.g. 7 or 2024.02)")
    if hasattr(value, "isoformat") and not isinstance(value, str):  # an unquoted date: keep it as written
        return str(value.isoformat())
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not str(value).strip():
        raise f.error("version", f"manifest: version must be a number or text, got {value!r}")
    return getattr(value, "text", None) or str(value)  # as written: 2024.10 is not 2024.1


def _rule(item: Any, line: int, file: str, ident: str, errors: list[ConfigError]) -> Rule | None:
    before = len(errors)
    try:
        f = yamlfile.Fields(item, file=file, what="artifact", line=line)
    except ConfigError as exc:
        errors.append(exc)
        return None
    _unknown_keys(f, RULE_KEYS, errors)
    package = _attempt(errors, lambda: f.str("package", required=False))
    path = _attempt(errors, lambda: f.str("path", required=False))
    ecosystem = _attempt(errors, lambda: f.str("ecosystem", required=False, choices=ECOSYSTEMS))
    if f.has("package") and f.has("path"):
        errors.append(ConfigError("artifact: give either package or path, not both", file=file, line=line))
    elif not f.has("package") and not f.has("path"):
        errors.append(ConfigError("artifact: needs package (a package name) or path (a path glob)",
                                  file=file, line=line))
    if ecosystem is not None and f.has("path"):
        errors.append(f.error("ecosystem", "artifact: ecosystem applies to package rules only"))
    if package is not None and not package.strip():
        errors.append(f.error("package", "artifact: package is empty"))
    elif package is not None and not any(normalize_name(e, package) for e in ((ecosystem,) if ecosystem else
                                                                                   ECOSYSTEMS)):
        errors.append(f.error("package", f"artifact: {bad_package_name(package, ecosystem)}"))
    if path is not None:
        try:
            compile_glob(path)
        except ValueError as exc:
            errors.append(f.error("path", f"artifact: {exc}"))
    category = _attempt(errors, lambda: f.str("class", choices=CLASSES))
    kinds = _attempt(errors, lambda: _kinds(f, category))
    eccn = _attempt(errors, lambda: _eccn(f))
    price = _attempt(errors, lambda: f.str("price", required=False, choices=PRICES))
    public = _attempt(errors, lambda: f.bool("publicly_available", required=False))
    note = _attempt(errors, lambda: f.str("note", required=False))
    if len(errors) > before:
        return None
    matcher = Rule(file=file, line=line, package=package, ecosystem=ecosystem, path=path,
                   classification=UNCLASSIFIED).matcher
    return Rule(
        file=file, line=line, package=package, ecosystem=ecosystem, path=path,
        classification=Classification(
            classified=True, category=category, kinds=kinds, eccn=eccn, price=price, publicly_available=public,
            note=note or "", manifest=ident, rule=f"{file}:{line} ({matcher})",
        ),
    )


def _kinds(f: yamlfile.Fields, category: str | None) -> tuple[str, ...]:
    raw = f.list("kinds", required=False)
    if category == PERSONAL_COMMUNICATIONS and not raw:
        raise f.error("kinds" if f.has("kinds") else "class",
                      f"artifact: class {PERSONAL_COMMUNICATIONS} needs kinds: one or more of "
                      f"{', '.join(PERSONAL_COMMUNICATIONS_KINDS)}")
    if raw is None:
        return ()
    if category != PERSONAL_COMMUNICATIONS:
        raise f.error("kinds", f"artifact: kinds apply only to class {PERSONAL_COMMUNICATIONS}")
    kinds: list[str] = []
    for value in raw:
        if value not in PERSONAL_COMMUNICATIONS_KINDS:
            raise f.error("kinds", f"artifact: kind {value!r} is not one of "
                                   f"{', '.join(PERSONAL_COMMUNICATIONS_KINDS)}")
        if value in kinds:
            raise f.error("kinds", f"artifact: kind {value!r} is listed twice")
        kinds.append(value)
    return tuple(kinds)


def _eccn(f: yamlfile.Fields) -> str | None:
    value: str | None = f.str("eccn", required=False)
    if value is None or is_eccn(value):
        return value
    close = [k for k in KNOWN_ECCNS if k.lower() == value.lower().strip()]
    hint = f"; did you mean {close[0]}?" if close else ""
    raise f.error("eccn", f"artifact: eccn {value!r} is not an ECCN (like 5D992.c or 4D994), EAR99 or "
                          f"not-subject-to-ear{hint}")

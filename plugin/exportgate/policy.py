"""Policy packs: dated YAML documents that say what each download gets, and why.

A pack is in force from ``effective.from`` (inclusive) until ``effective.until`` (exclusive), both taken as
00:00 UTC. For one request the gate uses the pack in force at the request's time (:meth:`PolicySet.pack_at`); a
time before every pack is :class:`NoPackInForce`, never an allow.

Evaluation of a pack for a (location, classification) pair, in this order:

1. unknown location -> ``defaults.unknown_location``;
2. rules whose ``destinations`` name the location's ISO 3166-2 subdivision, its country, or ``"*"``, in file order;
   the first whose ``when`` matches wins. An unclassified artifact matches only rules with no classification
   condition (e.g. an anonymiser-only rule);
3. destination is one of the pack's ``jurisdictions`` (subdivision before country): unclassified ->
   ``defaults.unclassified`` (citing the program too); otherwise the jurisdiction's ``otherwise`` rule;
4. any other destination -> ``defaults.other_destinations``.

A rule with ``requires_authorization: true`` ("pending Commerce authorization") turns into ``allow`` when a valid
:class:`~exportgate.authorization.Authorization` on file covers the destination and the artifact; the outcome then
cites it. Each rule or pack has a mode: ``enforce``, or ``dry-run`` (decided and recorded, not enforced).

Caveat: packs are data written by people from regulations; they are examples, not legal advice, and every
shipped pack says so in its ``disclaimer``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import iso3166, yamlfile
from .authorization import Authorization, AuthorizationBook
from .classification import Classification
from .conditions import Conditions, parse_conditions, parse_destinations
from .errors import ConfigError, ConfigErrors, NoPackInForce
from .location import Location

ACTIONS = ("allow", "flag", "block")
MODES = ("enforce", "dry-run")
SHIPPED_DIR = Path(__file__).resolve().parent / "policies"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One rule of a pack: where, when, what, and on what legal basis."""

    id: str
    """Stable identifier, quoted in decisions, records, logs and the 451 page."""
    action: str
    """``allow``, ``flag`` or ``block`` (after resolving a pack setting)."""
    citation: str
    """The legal basis, as a person would cite it."""
    destinations: frozenset[str] = frozenset()
    """ISO 3166-1 countries, ISO 3166-2 subdivisions, or ``"*"`` (any known location)."""
    when: Conditions = field(default_factory=Conditions)
    """Conditions on the classification and anonymiser flags; empty means always."""
    mode: str = "enforce"
    requires_authorization: bool = False
    """The outcome is "pending authorization": an authorization on file turns it into ``allow``."""
    note: str = ""
    line: int | None = None
    """Line in the pack file, for ``check`` and ``explain``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Jurisdiction:
    code: str
    name: str
    program: str
    otherwise: Rule
    """What any artifact no rule matched gets here."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What a pack says for one request: the policy half of a :class:`~exportgate.decision.Decision`."""

    action: str
    mode: str
    rule: str
    citation: str
    pack: PackRef
    authorization: str | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PackRef:
    """Which pack decided: id, version and the sha256 of the file's bytes."""

    id: str
    version: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True, kw_only=True)
class PolicyPack:
    """A dated set of rules, loaded from one YAML file."""

    ref: PackRef
    title: str
    effective_from: dt.date
    effective_until: dt.date | None
    sources: tuple[str, ...]
    disclaimer: str
    mode: str
    jurisdictions: Mapping[str, Jurisdiction]
    rules: tuple[Rule, ...]
    unknown_location: Rule
    unclassified: Rule
    other_destinations: Rule
    settings: Mapping[str, Setting]
    file: str = ""
    _index: dict[str, tuple[tuple[int, Rule], ...]] = field(default_factory=dict, repr=False, compare=False)

    _regions: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[tuple[int, Rule]]] = {}
        for position, rule in enumerate(self.rules):
            for destination in rule.destinations:
                index.setdefault(destination, []).append((position, rule))
        self._index.update({k: tuple(v) for k, v in index.items()})
        # The countries whose regions (ISO 3166-2) the pack restricts on their own, and those regions.
        regions: dict[str, set[str]] = {}
        for code in [*self.jurisdictions, *index]:
            if "-" in code:
                regions.setdefault(code.partition("-")[0], set()).add(code)
        self._regions.update({country: tuple(sorted(codes)) for country, codes in regions.items()})

    @property
    def id(self) -> str:
        return self.ref.id

    @property
    def regions(self) -> Mapping[str, tuple[str, ...]]:
        """Country -> the regions of it (ISO 3166-2) the pack restricts on their own."""
        return self._regions

    def in_force(self, at: dt.datetime) -> bool:
        day = at.astimezone(dt.UTC).date()
        return self.effective_from <= day and (self.effective_until is None or day < self.effective_until)

    def candidate_rules(self, location: Location) -> list[Rule]:
        """Rules that name this location (subdivision, country or ``*``), in file order."""
        found: list[tuple[int, Rule]] = []
        for key in (location.subdivision, location.country, "*"):
            if key is not None:
                found.extend(self._index.get(key, ()))
        found.sort(key=lambda item: item[0])
        return [rule for _, rule in found]

    def jurisdiction_of(self, location: Location) -> Jurisdiction | None:
        if location.subdivision is not None and location.subdivision in self.jurisdictions:
            return self.jurisdictions[location.subdivision]
        if location.country is not None:
            return self.jurisdictions.get(location.country)
        return None

    def match(self, location: Location, classification: Classification) -> tuple[Rule, tuple[str, ...]]:
        """The rule that decides, and the reasons in words (no authorization lookup yet).

        A client located in a country whose regions the pack restricts, with no region (country-only geolocation:
        the embedded registry data, a Country database, a City record without a subdivision), may be in one of
        them: it gets the pack's rule for unknown locations where that is stricter than what the country gets
        (never weaker: a country restricted as a whole keeps its own rule)."""
        rule, reasons = self._match(location, classification)
        regions = self._regions.get(location.country or "")
        if not regions or not location.known or _STRICTNESS[self.unknown_location.action] <= _STRICTNESS[rule.action]:
            return rule, reasons
        if location.subdivision is None:
            return self.unknown_location, (
                f"region unknown: this pack restricts regions of {location.country} ({', '.join(regions)}), and "
                "the geolocation data gives no region for this address (a City database gives regions)",)
        if not iso3166.is_subdivision(location.subdivision):
            # A database written with other codes (FIPS 10-4's UA-11 for Crimea): it names a region, but no
            # region this pack could restrict.
            return self.unknown_location, (
                f"region unknown: the geolocation data names {location.subdivision}, which is not an ISO 3166-2 "
                f"code, and this pack restricts regions of {location.country} ({', '.join(regions)})",)
        return rule, reasons

    def _match(self, location: Location, classification: Classification) -> tuple[Rule, tuple[str, ...]]:
        if not location.known:
            return self.unknown_location, (f"location unknown ({location.unknown_reason})",)
        where = location.subdivision or location.country
        for rule in self.candidate_rules(location):
            if rule.when.matches(classification, location):
                return rule, (f"rule {rule.id} matches {where} and {_describe(classification)}",)
        jurisdiction = self.jurisdiction_of(location)
        if jurisdiction is None:
            return self.other_destinations, (f"{where} is not a destination this pack restricts",)
        if not classification.classified:
            rule = self.unclassified
            reason = f"artifact is unclassified and {where} is restricted under {jurisdiction.program}"
            return _with_program(rule, jurisdiction), (reason,)
        reason = f"no general-license rule covers {_describe(classification)} to {jurisdiction.name}"
        return jurisdiction.otherwise, (reason,)

    def evaluate(
        self,
        location: Location,
        classification: Classification,
        at: dt.datetime,
        authorizations: AuthorizationBook | None = None,
    ) -> Outcome:
        rule, reasons = self.match(location, classification)
        return self.outcome(rule, reasons, location, classification, at, authorizations)

    def outcome(
        self,
        rule: Rule,
        reasons: tuple[str, ...],
        location: Location,
        classification: Classification,
        at: dt.datetime,
        authorizations: AuthorizationBook | None,
    ) -> Outcome:
        action, citation, authorization = rule.action, rule.citation, None
        if rule.requires_authorization:
            # A region the pack restricts on its own (UA-43 inside UA) needs a license that names it: one for the
            # country is not one for the region.
            region = location.subdivision if location.subdivision in self.jurisdictions else None
            found = authorizations.covering(location, classification, at, region=region) if authorizations else None
            if found is not None:
                action, authorization = "allow", found.id
                citation = f"{found.basis} (authorization {found.id}); otherwise: {rule.citation}"
                reasons = (*reasons, f"authorization {found.id} on file covers it")
            else:
                reasons = (*reasons, "pending authorization: none on file covers it")
        return Outcome(action=action, mode=rule.mode, rule=rule.id, citation=citation, pack=self.ref,
                       authorization=authorization, reasons=reasons)


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """A documented switch a pack offers to operators (e.g. Cuba software: block or flag)."""

    name: str
    description: str
    choices: tuple[str, ...]
    default: str


_STRICTNESS = {"allow": 0, "flag": 1, "block": 2}


def _with_program(rule: Rule, jurisdiction: Jurisdiction) -> Rule:
    return Rule(id=rule.id, action=rule.action, citation=f"{rule.citation}; {jurisdiction.program}",
                destinations=rule.destinations, when=rule.when, mode=rule.mode,
                requires_authorization=rule.requires_authorization, note=rule.note, line=rule.line)


def _describe(c: Classification) -> str:
    if not c.classified:
        return "an unclassified artifact"
    parts = [c.category or "?", c.eccn or "no ECCN", c.price or "price unknown"]
    if c.publicly_available is not None:
        parts.append("publicly available" if c.publicly_available else "not publicly available")
    return ", ".join(parts)


class PolicySet:
    """All loaded packs, ordered by date; answers which pack is in force and what it decides.

    Evaluation is cached per (pack, location attributes, classification): a mirror sees few distinct
    combinations, and the rule walk is the same each time. Authorizations are looked up after the cache, since
    they depend on the time.
    """

    def __init__(self, packs: Iterable[PolicyPack], authorizations: AuthorizationBook | None = None) -> None:
        self.packs = tuple(sorted(packs, key=lambda p: p.effective_from))
        if not self.packs:
            raise ConfigError("no policy pack loaded")
        self.authorizations = authorizations or AuthorizationBook(())
        self._cache: dict[tuple[object, ...], tuple[Classification, Rule, tuple[str, ...], Outcome | None]] = {}
        self._current: tuple[dt.datetime, dt.datetime | None, PolicyPack] | None = None

    def pack_at(self, at: dt.datetime) -> PolicyPack:
        current = self._current
        if current is not None and current[0] <= at and (current[1] is None or at < current[1]):
            return current[2]
        for pack in self.packs:
            if pack.in_force(at):
                start = _midnight(pack.effective_from)
                end = _midnight(pack.effective_until) if pack.effective_until else None
                self._current = (start, end, pack)
                return pack
        raise NoPackInForce(at.isoformat())

    def evaluate(self, location: Location, classification: Classification, at: dt.datetime) -> Outcome:
        pack = self.pack_at(at)
        # id(classification) is safe as a key: the cached value holds the classification, so the object cannot
        # be freed and its id reused while the entry exists. Hashing the dataclass itself costs a microsecond.
        key = (pack.ref.sha256, location.country, location.subdivision, location.anonymizer,
               location.unknown_reason, id(classification))
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 65536:
                self._cache.clear()
            rule, reasons = pack.match(location, classification)
            fixed = None
            if not rule.requires_authorization:
                fixed = pack.outcome(rule, reasons, location, classification, at, None)
            hit = self._cache[key] = (classification, rule, reasons, fixed)
        if hit[3] is not None:
            return hit[3]
        return pack.outcome(hit[1], hit[2], location, classification, at, self.authorizations)

    def with_authorizations(self, book: AuthorizationBook) -> PolicySet:
        return PolicySet(self.packs, book)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


# --------------------------------------------------------------------------------------------- loading


def load_pack(path: str | Path, settings: Mapping[str, str] | None = None) -> PolicyPack:
    """Load and validate one pack file; ``settings`` are the operator's choices for the pack's switches."""
    path = Path(path)
    raw_bytes = yamlfile.read_file(path, what="a policy pack (YAML)")
    data = yamlfile.loads(_decode(raw_bytes, path), str(path))
    return parse_pack(data, file=str(path), sha256=hashlib.sha256(raw_bytes).hexdigest(), settings=settings or {})


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", file=str(path)) from None


def parse_pack(data: Any, *, file: str, sha256: str, settings: Mapping[str, str]) -> PolicyPack:
    top = yamlfile.Fields(data, file=file, what="policy pack")
    pack_id = top.str("pack")
    version = top.str("version")
    title = top.str("title", required=False) or pack_id
    eff = yamlfile.Fields(top.mapping("effective"), file=file, what="effective")
    effective_from = eff.date("from")
    if "until" not in eff.map:
        raise eff.error(None, "effective: 'until' is required (write `until: null` for open-ended)")
    effective_until = eff.date("until", required=False)
    eff.done()
    if effective_until is not None and effective_until <= effective_from:
        raise top.error("effective", f"effective dates out of order: until {effective_until} is not after "
                                     f"from {effective_from}")
    sources = tuple(str(s) for s in top.list("sources"))
    if not sources:
        raise top.error("sources", "sources: cite at least one source")
    if any(not source.strip() for source in sources):
        raise top.error("sources", "sources: a source is empty; cite each one, or leave it out")
    disclaimer = top.str("disclaimer")
    if "legal advice" not in disclaimer.lower():
        raise top.error("disclaimer", "disclaimer must say the pack is not legal advice")
    mode = top.str("mode", required=False, choices=MODES) or "enforce"
    known_settings = _parse_settings(top, file)
    # Settings are shared by all packs; load_packs reports names that no pack offers.
    chosen = {name: s.default for name, s in known_settings.items()}
    for name, value in settings.items():
        if name in known_settings:
            if value not in known_settings[name].choices:
                raise ConfigError(f"policy setting {name} must be one of {', '.join(known_settings[name].choices)};"
                                  f" got {value!r}", file=file, line=top.line("settings"))
            chosen[name] = value

    def rule_from(value: Any, *, what: str, default_id: str | None = None,
                  destinations: bool = True, line: int | None = None) -> Rule:
        """A rule; ``destinations=False``: a jurisdiction's ``otherwise`` or a default, which is what every artifact
        no rule matched gets, so it has neither destinations nor conditions of its own."""
        f = yamlfile.Fields(value, file=file, what=what, line=line)
        rule_id = f.str("id") if default_id is None else (f.str("id", required=False) or default_id)
        dests = frozenset()
        if destinations:
            dests = parse_destinations(f.list("destinations"), file=file, line=f.line("destinations"),
                                       what=f"rule {rule_id}")
        elif f.has("when"):
            # Ignored, it would have applied the rule to every artifact: `when: {eccn: [EAR99]}` on an allow
            # allowed 5D002 software too.
            raise f.error("when", f"{what} cannot have conditions: it is what every artifact no rule matched gets; "
                                  "write a rule under 'rules:' for the artifacts the conditions name")
        if f.has("when") and f.raw("when") is None:
            # Most likely every condition under it was commented out: read as none at all, it would match
            # everything, unclassified artifacts included.
            raise f.error("when", f"rule {rule_id}: when is empty; give its conditions, or leave out 'when' for a "
                                  "rule that applies to every artifact")
        when = parse_conditions(f.raw("when"), file=file, line=f.line("when"), what=f"rule {rule_id}")
        action = _action(f, rule_id, known_settings, chosen)
        citation = f.str("citation")
        if not citation.strip():
            raise f.error("citation", f"rule {rule_id}: citation is empty; every rule cites its legal basis")
        rule = Rule(
            id=rule_id,
            action=action,
            citation=citation,
            destinations=dests,
            when=when,
            mode=f.str("mode", required=False, choices=MODES) or mode,
            requires_authorization=bool(f.bool("requires_authorization", required=False)),
            note=f.str("note", required=False) or "",
            line=f.line(),
        )
        f.done()
        return rule

    jurisdictions: dict[str, Jurisdiction] = {}
    raw_j = top.mapping("jurisdictions")
    for code, value in raw_j.items():
        line = raw_j.line_of(code) if isinstance(raw_j, yamlfile.Mapping) else None
        parse_destinations([code], file=file, line=line, what="jurisdictions", allow_any=False)
        code_s = str(code)
        jf = yamlfile.Fields(value, file=file, what=f"jurisdiction {code_s}", line=line)
        otherwise = rule_from(jf.mapping("otherwise"), what=f"jurisdiction {code_s} otherwise",
                              destinations=False, line=jf.line("otherwise"))
        otherwise = Rule(**{**_rule_fields(otherwise), "destinations": frozenset({code_s})})
        jurisdictions[code_s] = Jurisdiction(code=code_s, name=jf.str("name"), program=jf.str("program"),
                                             otherwise=otherwise)
        jf.done()

    rules: list[Rule] = []
    raw_rules = top.list("rules", required=False) or []
    seen_ids: dict[str, int | None] = {}
    for i, value in enumerate(raw_rules):
        line = yamlfile.item_line(raw_rules, i)
        rule = rule_from(value, what=f"rule #{i + 1}", line=line)
        if rule.id in seen_ids:
            raise ConfigError(f"duplicate rule id {rule.id!r} (first at line {seen_ids[rule.id]})", file=file,
                              line=rule.line)
        seen_ids[rule.id] = rule.line
        rules.append(rule)
    for j in jurisdictions.values():
        if j.otherwise.id in seen_ids:
            raise ConfigError(f"duplicate rule id {j.otherwise.id!r}", file=file, line=j.otherwise.line)
        seen_ids[j.otherwise.id] = j.otherwise.line
    _check_reachable(rules, file)

    df = yamlfile.Fields(top.mapping("defaults"), file=file, what="defaults")
    defaults = {}
    for name in ("unknown_location", "unclassified", "other_destinations"):
        if not df.has(name):
            raise df.error(None, f"defaults: missing required key {name!r} (a pack must say what "
                                 f"{name.replace('_', ' ')} gets)")
        defaults[name] = rule_from(df.mapping(name), what=f"defaults.{name}", default_id=name.replace("_", "-"),
                                   destinations=False, line=df.line(name))
    df.done()
    top.done()
    return PolicyPack(
        ref=PackRef(id=pack_id, version=version, sha256=sha256),
        title=title,
        effective_from=effective_from,
        effective_until=effective_until,
        sources=sources,
        disclaimer=disclaimer,
        mode=mode,
        jurisdictions=jurisdictions,
        rules=tuple(rules),
        unknown_location=defaults["unknown_location"],
        unclassified=defaults["unclassified"],
        other_destinations=defaults["other_destinations"],
        settings=known_settings,
        file=file,
    )


def _rule_fields(rule: Rule) -> dict[str, Any]:
    return {name: getattr(rule, name) for name in Rule.__dataclass_fields__}


def _parse_settings(top: yamlfile.Fields, file: str) -> dict[str, Setting]:
    raw = top.mapping("settings", required=False) or {}
    result: dict[str, Setting] = {}
    for name, value in raw.items():
        line = raw.line_of(name) if isinstance(raw, yamlfile.Mapping) else None
        f = yamlfile.Fields(value, file=file, what=f"setting {name}", line=line)
        choices = tuple(str(c) for c in f.list("choices"))
        bad = [c for c in choices if c not in ACTIONS]
        if bad or not choices:
            raise f.error("choices", f"setting {name}: choices must be actions ({', '.join(ACTIONS)})")
        default = f.str("default", choices=choices)
        result[str(name)] = Setting(name=str(name), description=f.str("description"), choices=choices,
                                    default=default)
        f.done()
    return result


def _action(f: yamlfile.Fields, rule_id: str, settings: Mapping[str, Setting], chosen: Mapping[str, str]) -> str:
    raw = f.raw("action")
    if isinstance(raw, dict):
        sf = yamlfile.Fields(raw, file=f.file, what=f"rule {rule_id} action")
        name = sf.str("setting")
        sf.done()
        if name not in settings:
            raise f.error("action", f"rule {rule_id}: action refers to unknown setting {name!r}")
        return chosen[name]
    if raw is None:
        raise f.error(None, f"rule {rule_id}: missing required key 'action'")
    if raw not in ACTIONS:
        raise f.error("action", f"rule {rule_id}: action must be one of {', '.join(ACTIONS)}; got {raw!r}")
    return str(raw)


def _check_reachable(rules: list[Rule], file: str) -> None:
    """Reject rules that can never decide because an earlier rule matches everything they match.

    This catches duplicates and contradictions (same destination and conditions, different action): with
    first-match evaluation the later rule is dead, and a dead rule in a pack is a mistake someone will rely on.
    """
    for i, later in enumerate(rules):
        for earlier in rules[:i]:
            if _covers_destinations(earlier.destinations, later.destinations) and earlier.when.covers(later.when):
                verb = "contradicts" if earlier.action != later.action else "repeats"
                raise ConfigError(
                    f"rule {later.id!r} is never reached: rule {earlier.id!r} (line {earlier.line}) matches "
                    f"everything it matches ({verb} it: {earlier.action} vs {later.action})",
                    file=file, line=later.line)


def _covers_destinations(a: frozenset[str], b: frozenset[str]) -> bool:
    """Whether a rule naming ``a`` applies wherever one naming ``b`` does: a country's rule applies in each of its
    subdivisions too (rules are tried for the subdivision and the country alike)."""
    if "*" in a:
        return True
    return all(d in a or d.partition("-")[0] in a for d in b)


def load_packs(paths: Iterable[str | Path], settings: Mapping[str, str] | None = None,
               authorizations: AuthorizationBook | None = None) -> PolicySet:
    """Load packs from files and directories (``*.yaml``/``*.yml`` in a directory), check they fit together.

    Errors of every file are collected and raised together as :class:`ConfigErrors`.
    """
    settings = dict(settings or {})
    files: list[Path] = []
    errors: list[ConfigError] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            # Not hidden files: an editor's lock or backup (emacs' .#pack.yaml, a symlink to nowhere) is no pack,
            # and reading it would refuse every reload while the pack is open in the editor.
            # Any case of the suffix: a pack saved as .YAML, skipped, took its jurisdictions with it.
            found = sorted(f for f in p.iterdir()
                           if f.suffix.lower() in (".yaml", ".yml") and not f.name.startswith("."))
            if not found:
                errors.append(ConfigError("no policy pack (*.yaml) in this directory", file=str(p)))
            files.extend(found)
        else:
            files.append(p)
    packs: list[PolicyPack] = []
    for f in files:
        try:
            packs.append(load_pack(f, settings))
        except ConfigError as exc:
            errors.append(exc)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
    known = {name for pack in packs for name in pack.settings}
    for name in settings:
        # Only once every pack loaded: a pack refused for a setting's value does not offer the setting here.
        if packs and not errors and name not in known:
            errors.append(ConfigError(f"unknown policy setting {name!r}; packs offer: "
                                      f"{', '.join(sorted(known)) or 'none'}"))
    errors.extend(_check_overlaps(packs))
    if errors:
        raise ConfigErrors(errors)
    if not packs:
        raise ConfigErrors([ConfigError("no policy pack loaded")])
    return PolicySet(packs, authorizations)


def _check_overlaps(packs: list[PolicyPack]) -> list[ConfigError]:
    errors = []
    ids: dict[str, PolicyPack] = {}
    for pack in packs:
        if pack.id in ids:
            errors.append(ConfigError(f"pack id {pack.id!r} also in {ids[pack.id].file}", file=pack.file, line=1))
        ids[pack.id] = pack
    ordered = sorted(packs, key=lambda p: p.effective_from)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.effective_until is None or a.effective_until > b.effective_from:
            until = a.effective_until or "open end"
            errors.append(ConfigError(
                f"pack {b.id!r} (from {b.effective_from}) overlaps pack {a.id!r} ({a.file}: from "
                f"{a.effective_from} until {until}); give the earlier pack an `until`", file=b.file, line=1))
    return errors


def coverage(packs: Sequence[PolicyPack], today: dt.date) -> tuple[str | None, list[str]]:
    """What the packs leave undecided: a problem when none is in force ``today`` (every download would be refused,
    503), and warnings for the days between packs and after the last one, and for enforcement turned off
    (``dry-run``: blocks are recorded and served)."""
    ordered = sorted(packs, key=lambda p: p.effective_from)
    problem = None
    if not any(p.in_force(_midnight(today)) for p in ordered):
        spans = ", ".join(f"{p.id} {p.effective_from} .. {p.effective_until or 'open'}" for p in ordered) or "none"
        problem = (f"no policy pack is in force today ({today}): every download would be refused (503). The packs: "
                   f"{spans}")
    warnings = []
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.effective_until is not None and a.effective_until < b.effective_from:
            warnings.append(f"no pack in force from {a.effective_until} until {b.effective_from} (after {a.id}, "
                            f"before {b.id}): decisions for those days are refused")
    if ordered and ordered[-1].effective_until is not None and ordered[-1].effective_until > today:
        last = ordered[-1]
        warnings.append(f"no pack in force from {last.effective_until} (after {last.id}): from that day every "
                        "download is refused until a pack takes over")
    for pack in ordered:
        if pack.mode == "dry-run":
            warnings.append(f"pack {pack.id} is in dry-run mode: its blocks are recorded and served ({pack.file})")
        else:
            every = [*pack.rules, *(j.otherwise for j in pack.jurisdictions.values()), pack.unknown_location,
                     pack.unclassified, pack.other_destinations]
            for rule in every:
                if rule.mode == "dry-run" and rule.action == "block":
                    warnings.append(f"pack {pack.id}, rule {rule.id} is in dry-run mode: its blocks are recorded "
                                    f"and served ({pack.file}:{rule.line})")
    return problem, warnings


def shipped_pack_paths() -> list[Path]:
    return sorted(SHIPPED_DIR.glob("*.yaml"))


def describe_pack(pack: PolicyPack) -> dict[str, Any]:
    return {
        "id": pack.id,
        "version": pack.ref.version,
        "sha256": pack.ref.sha256,
        "title": pack.title,
        "effective": {"from": pack.effective_from.isoformat(),
                      "until": pack.effective_until.isoformat() if pack.effective_until else None},
        "file": pack.file,
        "rules": len(pack.rules),
        "mode": pack.mode,
        "jurisdictions": sorted(pack.jurisdictions),
        "disclaimer": pack.disclaimer,
    }


__all__ = [
    "ACTIONS", "Authorization", "AuthorizationBook", "Jurisdiction", "Outcome", "PackRef", "PolicyPack",
    "PolicySet", "Rule", "Setting", "coverage", "describe_pack", "load_pack", "load_packs", "parse_pack",
    "shipped_pack_paths",
]

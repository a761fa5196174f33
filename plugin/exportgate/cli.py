"""``exportgate …``: the command line ops, release engineers and compliance drive the gate with.

Exit codes: 0 success; 1 a check failed (invalid config, a chain that does not verify); 2 usage errors (click).
Errors in files people wrote print as ``file:line: message``, one per line, so CI logs and editors can jump to them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .authorization import Authorization, load_authorization_file, parse_authorization, parse_time
from .config import GateConfig, bind_addresses, load_config
from .decision import RequestFacts
from .errors import ConfigError, ConfigErrors, ExportGateError
from .gate import format_time
from .policy import coverage, describe_pack


def _fail(exc: BaseException) -> None:
    if isinstance(exc, ConfigErrors):
        for err in exc.errors:
            click.echo(str(err), err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ExportGateError, ValueError) as exc:
            _fail(exc)

    return wrapper


def _config(ctx: click.Context) -> GateConfig:
    cfg = ctx.obj.get("config")
    if cfg is None:
        cfg = ctx.obj["config"] = load_config(ctx.obj.get("config_path"))
    return cfg


def _parse_at(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (2010-03-08) or time (2010-03-08T12:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _request_path(cfg: GateConfig, path: str) -> str:
    """``path`` as the gate reads a request for it (decoded once, ``//`` merged, dot-segments resolved, case folded
    for a case-insensitive origin): ``classify`` and ``explain`` answer for the artifact the gate would decide on,
    so a rule written for one spelling never seems to cover another. A path the gate refuses is an error.
    In static mode the path is that of the file served, as the gate decides on it: a directory's ``index.html``,
    a symlink's target under ``serve.root`` (on a machine without that directory, the name asked for); so in
    forward-auth and proxy modes with a ``serve.root``, for a symlink's target."""
    from .web.paths import normalise_path

    folded = cfg.case_insensitive_paths
    try:
        follows_links = cfg.serve.mode == "static" or bool(cfg.serve.root)  # forward auth and proxy: optional
        if follows_links and not (cfg.serve.root and os.path.isdir(cfg.serve.root)):
            click.echo(f"warning: {cfg.serve.mode} mode, but serve.root {cfg.serve.root!r} is no directory here: "
                       "answering for the path as asked, not for the file the gate would decide on (a symlink's "
                       "target, an index.html)", err=True)
        elif follows_links:
            from .web.mirrorfiles import linked_file, served_file, served_uri

            named = normalise_path(path.encode("utf-8")).path
            root = os.path.realpath(cfg.serve.root)
            if cfg.serve.mode == "static":  # decides on the file it serves (a directory's index.html too)
                served: str | None = served_file(root, named)[2]
            else:  # forward auth and proxy: on what a link leads to, as the gate does
                linked = linked_file(root, named)
                if linked.refused is not None:
                    raise ExportGateError(f"{named}: {linked.refused}: the gate refuses it (403) without a decision")
                served = linked.decide_on
            if served is not None and served != named:
                if cfg.serve.mode == "forward-auth":
                    click.echo(f"note: {named} is a symlink (or a path through one) to {served}: the gate decides "
                               "on the target when the front end asks it; the deploy/ examples serve index pages "
                               "and metadata without asking, so such a name as a link is served undecided "
                               "(deploy/README, rule 4)", err=True)
                return normalise_path(served_uri(served).encode("ascii"), case_insensitive=folded).path
        return normalise_path(path.encode("utf-8"), case_insensitive=folded).path
    except ValueError as exc:  # PathRejected
        raise ExportGateError(f"{exc}: the gate answers such a request with 400, without a decision") from None


def _known(value: object) -> str:
    """A classification value for a person: one the manifest left out is unknown, not "None"."""
    return "unknown" if value is None else str(value)


def _availability(public: bool | None) -> str:
    if public is None:
        return "availability unknown"
    return "publicly available" if public else "not publicly available"


def _read_as(asked: str, path: str) -> str:
    return "" if asked == path else f" (the gate reads {asked!r} as this path)"


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="EXPORTGATE_CONFIG",
              help="gate.yaml (default: $EXPORTGATE_CONFIG, else embedded defaults).")
@click.version_option(__version__, prog_name="exportgate")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """exportgate: apply US sanctions and export rules to every download from a mirror.

    With no config file it runs on embedded defaults: registry geolocation data (iptocc), the shipped policy
    packs, no classification manifest. The shipped packs are examples, not legal advice.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


# ------------------------------------------------------------------------------------------------- check


@main.command()
@click.option("--authorizations", "auth_files", multiple=True, type=click.Path(dir_okay=False),
              help="Also validate an authorization file meant for `authorize import`.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def check(ctx: click.Context, auth_files: tuple[str, ...], as_json: bool) -> None:
    """Validate config, policy packs, manifest, geolocation data and authorizations.

    Prints every problem as file:line: message and exits 1 if there is any.
    """
    from .runtime import open_catalog, open_locator, open_policies

    errors: list[ConfigError] = []
    try:
        cfg = _config(ctx)
    except (ConfigError, ConfigErrors) as exc:
        problems = exc.errors if isinstance(exc, ConfigErrors) else [exc]
        if as_json:
            _emit({"ok": False, "errors": _error_dicts(problems)})
        _fail(ConfigErrors(list(problems)))
    summary: dict[str, Any] = {"config": cfg.file or "(embedded defaults)"}
    pack_regions: set[str] = set()
    for name, opener in (("geo", open_locator), ("catalog", open_catalog), ("policies", open_policies)):
        try:
            obj = opener(cfg)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
            continue
        except ExportGateError as exc:
            errors.append(exc if isinstance(exc, ConfigError) else ConfigError(str(exc)))
            if name == "geo":  # the locator stops at its first file: say what is wrong with the other one too
                errors.extend(_anonymous_ip_problems(cfg))
            continue
        if name == "geo":
            summary["geo"] = obj.describe()
        elif name == "catalog":
            summary["catalog"] = getattr(obj, "describe", lambda: {})()
        else:
            summary["packs"] = [describe_pack(p) for p in obj.packs]
            problem, pack_warnings = coverage(obj.packs, dt.datetime.now(dt.UTC).date())
            if problem is not None:
                errors.append(ConfigError(problem, file=cfg.file))
            summary["pack_warnings"] = pack_warnings
            pack_regions = {country for p in obj.packs for country in p.regions}
    try:
        from .records.store import store_file
        from .runtime import authorization_book, open_store

        path = store_file(cfg.records, file=cfg.file)
        if path is not None and not os.path.exists(path):
            # check makes nothing (run as root before a reload, it would leave a store, its directory and a lock
            # file that the service's user may not open): say whether the gate could create it.
            summary["records"] = {"store": cfg.records, "exists": False, "authorizations": 0}
            parent = _nearest_existing(os.path.dirname(path))
            if not os.path.isdir(parent):
                errors.append(ConfigError(f"record store {path}: {parent} is not a directory", file=cfg.file))
            elif not os.access(parent, os.W_OK | os.X_OK):
                errors.append(ConfigError(f"record store {path} does not exist, and {parent} is not writable: "
                                          "the gate could not create it", file=cfg.file))
        else:
            store = open_store(cfg)
            try:
                book = authorization_book(store)
                # No decision count: on a store of millions of records it is a scan, and check runs in CI.
                summary["records"] = {"store": cfg.records, "exists": True, "authorizations": len(book.all)}
            finally:
                store.close()
    except ConfigError as exc:
        errors.append(exc)
    except ExportGateError as exc:
        errors.append(ConfigError(f"record store {cfg.records}: {exc}", file=cfg.file))
    from .runtime import record_log_problem

    problem = record_log_problem(cfg.record_log)
    if problem is not None:  # every worker would fail to start, the port open all the same
        errors.append(ConfigError(problem, file=cfg.file))
    from .web.serving import check_serving, unused_settings

    try:
        check_serving(cfg)
    except ConfigErrors as exc:
        errors.extend(exc.errors)
    summary["warnings"] = (unused_settings(cfg.serve) + summary.pop("pack_warnings", [])
                           + _region_warnings(summary.get("geo"), pack_regions))
    for f in auth_files:
        try:
            summary.setdefault("authorization_files", {})[f] = len(load_authorization_file(f))
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        if as_json:  # a CI job reading stdout gets the problems too, not an empty document
            _emit({**summary, "ok": False, "errors": _error_dicts(errors)})
        _fail(ConfigErrors(errors))
    if as_json:
        _emit({**summary, "ok": True, "errors": []})
        return
    click.echo(f"config: {summary['config']}")
    geo_info = summary.get("geo", {})
    click.echo(f"geolocation: {geo_info.get('source', '?')}" + (" (STALE)" if geo_info.get("stale") else ""))
    cat = summary.get("catalog") or {}
    click.echo(f"manifest: {cat.get('manifest') or 'none (every artifact unclassified)'}"
               + (f", {cat.get('rules')} rules" if cat.get("rules") is not None else ""))
    rec = summary.get("records") or {}
    if rec.get("exists") is False:
        click.echo(f"records: {rec.get('store')} (not created yet: the gate creates it when it starts)")
    else:
        click.echo(f"records: {rec.get('store')} (writable; {rec.get('authorizations')} authorizations on file)")
    for p in summary.get("packs", []):
        until = p["effective"]["until"] or "open"
        dry_run = ", dry-run: blocks are served" if p["mode"] == "dry-run" else ""
        click.echo(f"pack: {p['id']} v{p['version']} {p['effective']['from']} .. {until} ({p['rules']} rules"
                   f"{dry_run})")
    for warning in summary["warnings"]:
        click.echo(f"warning: {cfg.file or 'config'}: {warning}")
    click.echo("ok")


def _region_warnings(geo: dict[str, Any] | None, packs: set[str]) -> list[str]:
    """Packs that restrict regions of ``packs`` (countries), and geolocation data that gives none: every client in
    those countries is an unknown location (policy.PolicyPack.match)."""
    kind = str((geo or {}).get("database_type") or "").lower()
    if not geo or not packs or "city" in kind or "enterprise" in kind:
        return []
    return [f"packs restrict regions of {', '.join(sorted(packs))}, and the geolocation data ({geo.get('source')}) "
            "gives countries only: every client it places in those countries is decided as an unknown location "
            "(the shipped packs flag it), and a region's network it places in another country is that country's, "
            "until geo.database names a City database"]


def _error_dicts(errors: list[ConfigError]) -> list[dict[str, Any]]:
    return [{"file": e.file, "line": e.line, "message": e.message} for e in errors]


def _anonymous_ip_problems(cfg: GateConfig) -> list[ConfigError]:
    """The anonymous-IP database's own problem, when the country database failed first (and hid it)."""
    from .maxmind import AnonymousIPDatabase

    if cfg.geo.database is None or cfg.geo.anonymous_ip_database is None:
        return []
    try:
        AnonymousIPDatabase(cfg.geo.anonymous_ip_database, max_age_days=cfg.geo.max_age_days).close()
    except ExportGateError as exc:
        return [exc if isinstance(exc, ConfigError) else ConfigError(str(exc))]
    return []


def _nearest_existing(path: str) -> str:
    """``path`` or the nearest of its parents that exists."""
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path or "."


# ------------------------------------------------------------------------------------------------ explain


@main.command()
@click.option("--ip", "ip", required=True, help="Client address, as the gate would see it.")
@click.option("--path", "path", required=True,
              help="Request path, e.g. /packages/x.whl (read as the gate reads it: decoded once, // and dot-segments "
                   "resolved).")
@click.option("--at", "at", help="Decide as of this date or time (UTC), e.g. 2010-03-07. Default: now.")
@click.option("--method", default="GET", show_default=True)
@click.option("--host", default=None, help="Host header, for the record.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@_guarded
def explain(ctx: click.Context, ip: str, path: str, at: str | None, method: str, host: str | None,
            as_json: bool) -> None:
    """Show what the gate would decide for one request, and why. Records nothing."""
    from .runtime import GateRuntime, authorizations_on_file
    from .web.clientaddr import written_address

    cfg = _config(ctx)
    when = _parse_at(at)
    asked, path = path, _request_path(cfg, path)
    with GateRuntime(cfg, record=False) as rt:
        book = authorizations_on_file(cfg)
        if book is not None:
            rt.gate.policies = rt.gate.policies.with_authorizations(book)
        origin = written_address(ip)  # read as the gate reads the client a front end names
        decision = rt.gate.decide(RequestFacts(client=origin.address or "", path=path, method=method, host=host,
                                               client_source="cli", client_error=origin.error), at=when)
    data = decision.summary()
    # A license's dates are its own: one put on file after the date asked covers it here, though the gate's
    # decisions before it was on file did not rely on it. Say so.
    on_file = book.first_on_file(decision.authorization) if book and decision.authorization else None
    if as_json:
        _emit({**data, "path": path, "asked": asked,  # the path decided on, and as written on the command line
               "authorization_on_file_since": format_time(on_file) if on_file else None})
        return
    loc = decision.location
    where = loc.subdivision or loc.country or f"unknown ({loc.unknown_reason})"
    c = decision.classification
    what = (f"{c.category}, eccn {_known(c.eccn)}, price {_known(c.price)}, "
            f"{_availability(c.publicly_available)}" if c.classified else "unclassified")
    click.echo(f"decision:       {decision.action.upper()}" + (" (dry-run: served)" if decision.mode == "dry-run"
                                                                 else ""))
    if asked != path:
        click.echo(f"path:           {path}{_read_as(asked, path)}")
    click.echo(f"rule:           {decision.rule}")
    click.echo(f"citation:       {decision.citation}")
    if decision.authorization:
        late = (f" (on file since {format_time(on_file)}, after this date: the gate's decisions before then did "
                "not rely on it)") if on_file is not None and on_file > decision.at else ""
        click.echo(f"authorization:  {decision.authorization}{late}")
    click.echo(f"pack:           {decision.pack.id} v{decision.pack.version}")
    click.echo(f"as of:          {format_time(decision.at)}")
    click.echo(f"location:       {where} via {loc.source or 'n/a'}"
               + (f" ({loc.form} {loc.address})" if loc.form != "plain" else ""))
    if loc.anonymizer:
        click.echo(f"anonymizer:     {', '.join(sorted(loc.anonymizer))}")
    click.echo(f"classification: {what}" + (f"  [{c.rule}]" if c.rule else ""))
    for reason in decision.reasons:
        click.echo(f"because:        {reason}")


# ----------------------------------------------------------------------------------------------- classify


@main.command()
@click.argument("path")
@click.option("--explain", "show_explain", is_flag=True, help="Show every rule that matched and why one won.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_guarded
def classify(ctx: click.Context, path: str, show_explain: bool, as_json: bool) -> None:
    """Show the export classification of an artifact path, from the manifest.

    PATH is read as the gate reads a request for it: percent-encoding decoded once, // merged, dot-segments
    resolved, case folded for a case-insensitive origin."""
    from .runtime import open_catalog

    cfg = _config(ctx)
    asked, path = path, _request_path(cfg, path)
    catalog = open_catalog(cfg)
    if show_explain:
        explanation = catalog.explain(path)
        if as_json:
            _emit(explanation.to_dict())
        else:
            for line in explanation.lines():
                click.echo(line)
        return
    c = catalog.classify(path)
    if as_json:
        _emit({**c.to_dict(), "path": path, "asked": asked})
        return
    if not c.classified:
        click.echo(f"{path}: unclassified (no manifest rule matches){_read_as(asked, path)}")
        return
    kinds = f" ({', '.join(c.kinds)})" if c.kinds else ""
    click.echo(f"{path}: {c.category}{kinds}, eccn {_known(c.eccn)}, price {_known(c.price)}, "
               f"{_availability(c.publicly_available)}{_read_as(asked, path)}")
    click.echo(f"  rule: {c.rule}")
    if c.note:
        click.echo(f"  note: {c.note}")


# ---------------------------------------------------------------------------------------------- authorize


@main.group()
def authorize() -> None:
    """Authorizations on file (licenses, license exceptions): add, list, revoke, import.

    Kept in the record store, append-only: revoking adds a revocation entry, it deletes nothing.
    """


def _recorder(cfg: GateConfig, store: Any = None) -> tuple[Any, Any]:
    """``(store, recorder)`` for the commands that record; ``store``: one already open (else it is opened)."""
    from .records import Recorder
    from .runtime import open_store

    store = open_store(cfg) if store is None else store
    return store, Recorder(store, instance=f"{cfg.instance}:cli")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@authorize.command("add")
@click.option("--id", "auth_id", required=True, help="Your reference, e.g. the license number.")
@click.option("--basis", required=True, help="Legal basis, e.g. 'License Exception CCD, 15 CFR 740.19'.")
@click.option("--destination", "destinations", multiple=True, required=True,
              help="ISO 3166-1 country or ISO 3166-2 subdivision (repeat for several).")
@click.option("--class", "categories", multiple=True, help="Artifact class it covers (repeatable).")
@click.option("--kind", "kinds", multiple=True, help="Personal-communications kind it covers (repeatable).")
@click.option("--eccn", "eccns", multiple=True, help="ECCN it covers (repeatable).")
@click.option("--price", "prices", multiple=True, help="no-cost or fee (repeatable).")
@click.option("--valid-from", "valid_from", required=True, help="First day it is valid (YYYY-MM-DD).")
@click.option("--valid-until", "valid_until", default=None, help="Day it stops being valid (exclusive).")
@click.option("--note", default="")
@click.pass_context
@_guarded
def authorize_add(ctx: click.Context, auth_id: str, basis: str, destinations: tuple[str, ...],
                  categories: tuple[str, ...], kinds: tuple[str, ...], eccns: tuple[str, ...],
                  prices: tuple[str, ...], valid_from: str, valid_until: str | None, note: str) -> None:
    """Record a new authorization."""
    when = {k: list(v) for k, v in (("class", categories), ("kinds", kinds), ("eccn", eccns),
                                    ("price", prices)) if v}
    body = {"id": auth_id, "basis": basis, "destinations": list(destinations), "when": when or None,
            "valid_from": valid_from, "valid_until": valid_until, "note": note}
    auth = parse_authorization(body, file="command line", line=None)
    cfg = _config(ctx)
    _record_authorizations(cfg, [auth])
    # Which store: the gate reads only its own, and one added to another (no --config) would never count.
    click.echo(f"recorded authorization {auth.id} in {cfg.records}"
               + ("" if when else " (no conditions: it covers every artifact to its destinations)"))


def _record_authorizations(cfg: GateConfig, auths: list[Authorization]) -> None:
    from .records import NotCommitted

    store, recorder = _recorder(cfg)
    try:
        at = format_time(_now())
        try:
            recorder.record_many(("authorization", f"authorization:{auth.id}:{at}", at, auth.to_dict())
                                 for auth in auths)
        except NotCommitted as exc:
            recorded = [r.body.get("id") for r in exc.committed]
            raise ExportGateError(f"{exc.count} of {len(auths)} authorization(s) not recorded ({exc}); recorded: "
                                  f"{', '.join(map(str, recorded)) or 'none'}") from None
    finally:
        recorder.close()
        store.close()


@authorize.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
@_guarded
def authorize_import(ctx: click.Context, file: str) -> None:
    """Record every authorization of a YAML file (`authorizations:` list), in one transaction.

    All are checked before any is recorded; if the store fails, none is (or, past the recorder's largest
    transaction, the error names those that were)."""
    auths = load_authorization_file(file)
    cfg = _config(ctx)
    _record_authorizations(cfg, auths)
    click.echo(f"recorded {len(auths)} authorization(s) from {file} in {cfg.records}")


@authorize.command("revoke")
@click.argument("auth_id")
@click.option("--reason", required=True, help="Why it is withdrawn (kept in the record).")
@click.pass_context
@_guarded
def authorize_revoke(ctx: click.Context, auth_id: str, reason: str) -> None:
    """Withdraw an authorization from now on (decisions before stay as they were)."""
    from .runtime import authorization_book, existing_store

    cfg = _config(ctx)
    found = existing_store(cfg)  # nothing to revoke, and no store to make, where there is none
    if found is None:
        raise ExportGateError(f"no authorization {auth_id!r} on file: no record store at {cfg.records}")
    store, recorder = _recorder(cfg, found)
    try:
        book = authorization_book(store)
        auth = book.get(auth_id)
        if auth is None:
            raise ExportGateError(f"no authorization {auth_id!r} on file")
        if auth.revoked_at is not None:
            raise ExportGateError(f"authorization {auth_id!r} was already revoked at {format_time(auth.revoked_at)}")
        at = format_time(_now())
        recorder.record("revocation", f"revocation:{auth_id}:{at}", at, {"authorization": auth_id, "reason": reason})
    finally:
        recorder.close()
        store.close()
    click.echo(f"revoked authorization {auth_id}")


@authorize.command("list")
@click.option("--at", "at", help="Status as of this date (default: now).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_guarded
def authorize_list(ctx: click.Context, at: str | None, as_json: bool) -> None:
    """List authorizations on file with their status (valid, expired, revoked, replaced, not yet valid)."""
    from .authorization import AuthorizationBook
    from .runtime import authorizations_on_file

    when = _parse_at(at) or _now()
    # Listing makes no store where there is none (a mistyped path).
    book = authorizations_on_file(_config(ctx)) or AuthorizationBook(())
    rows = []
    for auth in sorted(book.all, key=lambda a: a.id):
        row = auth.to_dict()
        row["status"] = auth.status_at(when)
        row["revoked_at"] = format_time(auth.revoked_at) if auth.revoked_at else None
        row["revoked_reason"] = auth.revoked_reason or None
        row["replaced_at"] = format_time(auth.replaced_at) if auth.replaced_at else None
        row["added_at"] = format_time(auth.added_at) if auth.added_at else None
        rows.append(row)
    if as_json:
        _emit(rows)
        return
    if not rows:
        click.echo("no authorizations on file")
    for row in rows:
        until = row["valid_until"] or "no end"
        click.echo(f"{row['id']}: {row['status']}; {', '.join(row['destinations'])}; "
                   f"{row['valid_from']} .. {until}; {row['basis']}")


# -------------------------------------------------------------------------------------------------- audit


@main.group()
def audit() -> None:
    """Decision records: verify the hash chains."""


_EARLIEST_HEADS = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _read_heads(path: str) -> tuple[dict[str, tuple[int, str]], dt.datetime | None]:
    """A heads file written by ``--save-heads``: the chain heads, and when they were saved (``None`` in a file
    from before the time was saved, whose flat ``{chain: [seq, hash]}`` is still read)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        saved_at = None
        if isinstance(raw, dict) and set(raw) == {"saved_at", "chains"}:  # chain ids always hold a ':'
            saved_at = parse_time(raw["saved_at"])
            if not _EARLIEST_HEADS <= saved_at <= _now() + dt.timedelta(days=1):
                raise ValueError(f"saved_at {raw['saved_at']!r} is not a time heads could have been saved at")
            raw = raw["chains"]
        heads = {}
        for chain, head in raw.items():
            if ":" not in chain or not isinstance(head, list) or len(head) != 2 or type(head[0]) is not int \
                    or not isinstance(head[1], str):
                raise ValueError(f"{chain!r}: {head!r} is not a chain id and its [seq, hash]")
            heads[chain] = (head[0], head[1])
        return heads, saved_at
    except (OSError, ValueError, TypeError, IndexError, AttributeError, KeyError) as exc:
        raise ExportGateError(f"{path}: not a chain-heads file written by --save-heads ({exc})") from None


@audit.command("verify")
@click.option("--heads", "heads_file", type=click.Path(dir_okay=False),
              help="Chain heads saved earlier (--save-heads): also detects records cut from a chain's end, and "
                   "records written since the save but dated before it.")
@click.option("--save-heads", "save_heads", type=click.Path(dir_okay=False),
              help="Write the current chain heads to this file, for a later --heads.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_guarded
def audit_verify(ctx: click.Context, heads_file: str | None, save_heads: str | None, as_json: bool) -> None:
    """Check every hash chain; name each altered, deleted, inserted or reordered record. Exit 1 if any."""
    from .records import verify
    from .runtime import existing_store

    cfg = _config(ctx)
    store = existing_store(cfg)
    if store is None:  # never create an empty store and call it verified
        raise ExportGateError(f"no record store at {cfg.records}: a store that was moved or deleted does not verify")
    try:
        expected, saved_at = _read_heads(heads_file) if heads_file else (None, None)
        report = verify(store, expected_heads=expected, heads_saved_at=saved_at)
        if save_heads and report.ok:  # heads of a store that failed would make its damage the new normal
            heads = report.heads  # what was checked, not what was appended meanwhile
            Path(save_heads).write_text(json.dumps({
                "saved_at": format_time(report.started_at),
                "chains": {k: list(v) for k, v in heads.items()},
            }, indent=2), encoding="utf-8")
    finally:
        store.close()
    if as_json:
        _emit({**report.to_dict(), "heads_checked": expected is not None,
               "heads_saved_at": format_time(saved_at) if saved_at else None})
    else:
        for line in report.lines():
            click.echo(line)
        if report.ok and expected is None:
            click.echo("(without --heads, records cut from a chain's end or a whole chain removed cannot be seen)")
        elif expected is not None and saved_at is None:
            click.echo(f"({heads_file} does not say when it was saved, so records backdated since cannot be "
                       "seen: save heads again with this version)")
        if save_heads and not report.ok:
            click.echo(f"heads not saved to {save_heads}: the store did not verify", err=True)
    if not report.ok:
        sys.exit(1)


# -------------------------------------------------------------------------------------------------- serve


@main.command()
@click.option("--bind", help="Address to listen on, e.g. 127.0.0.1:8451 (default from config).")
@click.option("--mode", type=click.Choice(["forward-auth", "proxy", "static"]), help="How the gate sits in front "
              "of the mirror.")
@click.option("--upstream", help="Proxy mode: the mirror to forward allowed downloads to.")
@click.option("--root", type=click.Path(file_okay=False),
              help="Static mode: the directory to serve. Forward-auth and proxy modes (optional): the directory the "
                   "front end or upstream serves, on this host: decisions follow its symlinks to the files opened.")
@click.option("--trust-proxy", "trust_proxy", multiple=True, help="CIDR of a proxy whose X-Forwarded-For is "
              "believed (repeatable). Default: none, only the TCP peer counts.")
@click.option("--admin-from", "admin_from", multiple=True, help="CIDR (or 'unix') of the clients that may read "
              "/readyz and /metrics (repeatable). Default: loopback, private networks and unix sockets.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads per worker (gunicorn, proxy and static modes).")
@click.option("--fail-open", "fail_open", is_flag=True, default=None,
              help="Serve downloads even when the decision cannot be recorded (default: refuse with 503).")
@click.option("--server", type=click.Choice(["auto", "gunicorn", "granian"]), help="HTTP server. auto (default): "
              "gunicorn (an event-loop worker for forward-auth, threads for proxy and static); granian: forward-auth "
              "only.")
@click.pass_context
@_guarded
def serve(ctx: click.Context, **options: Any) -> None:
    """Run the gate: forward-auth endpoint, proxy or static server, with /healthz, /readyz and /metrics."""
    import dataclasses

    from .serve import run, server_for

    from .web.serving import MODE_SETTINGS

    cfg = _config(ctx)
    changes = {k: v for k, v in options.items() if v not in (None, ())}
    mode = changes.get("mode", cfg.serve.mode)
    for name in changes:
        if mode not in MODE_SETTINGS.get(name, (mode,)):
            # Typed on this very command line: a mistake, not a setting left over in a file.
            raise click.UsageError(f"--{name.replace('_', '-')} is for {' and '.join(MODE_SETTINGS[name])} mode, "
                                   f"and this gate would run in {mode} mode (--mode, or serve.mode in the config)")
    for many in ("trust_proxy", "admin_from"):
        if many in changes:
            changes[many] = tuple(changes[many])
    cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, **changes))
    bind_addresses(cfg.serve.bind)  # --bind "a," or "": refused before anything starts (gunicorn: 0.0.0.0:8000)
    server_for(cfg)  # a server that cannot serve this mode safely: refused before anything starts
    # run() loads the manifest and packs and checks the serve settings once, in the master, before any server
    # starts: a broken config fails there with file:line, not in every worker (exportgate.reloading).
    run(cfg)


# -------------------------------------------------------------------------------------------------- packs


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_guarded
def packs(ctx: click.Context, as_json: bool) -> None:
    """List the policy packs loaded, their dates and settings."""
    from .runtime import open_policies

    cfg = _config(ctx)
    policy_set = open_policies(cfg)
    data = []
    for p in policy_set.packs:
        d = describe_pack(p)
        # "value": what this gate's policy_settings (or EXPORTGATE_POLICY_SETTINGS__*) make of it, not only the default
        d["settings"] = {name: {"choices": list(s.choices), "default": s.default, "description": s.description,
                                "value": cfg.policy_settings.get(name, s.default)}
                         for name, s in p.settings.items()}
        data.append(d)
    if as_json:
        _emit(data)
        return
    for d in data:
        until = d["effective"]["until"] or "open"
        click.echo(f"{d['id']} v{d['version']}  {d['effective']['from']} .. {until}  {d['title']}")
        click.echo(f"  {d['file']}")
        if d["mode"] == "dry-run":
            click.echo("  mode: dry-run (blocks are recorded and served)")
        for name, s in d["settings"].items():
            click.echo(f"  setting {name}: {s['value']} (of {' | '.join(s['choices'])}; default {s['default']})")
        click.echo(f"  {d['disclaimer']}")


if __name__ == "__main__":
    main()

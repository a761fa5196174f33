"""What a blocked client sees: the HTTP 451 page (RFC 7725), in HTML or JSON by ``Accept``.

RFC 7725: 451 means access is denied as a consequence of a legal demand; the ``Link: <…>; rel="blocked-by"``
header identifies the entity *implementing* the block (the operator of this gate), not the authority mandating it;
the body explains the legal basis. 451 is cacheable by default, so every gated response here carries
``Cache-Control: no-store``: a shared cache must never replay one client's decision to another client.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

from ..decision import Decision
from ..gate import format_time
from ..policy import describe_pack

NO_STORE = ("Cache-Control", "no-store")
POLICY_PATH = "/exportgate/policy"
"""Where the gate serves its policy document (:func:`policy_document`): the ``blocked-by`` link unless
``policy_url`` names another page."""

# Caching headers that CDNs and nginx obey ahead of Cache-Control (RFC 9213 CDN-Cache-Control and its vendor forms,
# Surrogate-Control, nginx's X-Accel-Expires): on a gated answer they would let a cache replay one client's
# download to another, whatever no-store says.
_CACHE_OVERRIDES = frozenset({"surrogate-control", "x-accel-expires", "edge-control"})


def overrides_no_store(name: str) -> bool:
    """Whether a response header (lower case) would make a cache keep a gated answer despite ``no-store``: the
    targeted cache-control fields (RFC 9213: ``CDN-Cache-Control``, ``Akamai-Cache-Control``, any
    ``*-Cache-Control``), Surrogate-Control, Akamai's Edge-Control (``!no-store`` overrides no-store) and nginx's
    X-Accel-Expires."""
    return name in _CACHE_OVERRIDES or (name.endswith("-cache-control") and name != "cache-control")


@dataclass(frozen=True, slots=True, kw_only=True)
class Operator:
    """Who runs this gate, for the 451 page: from ``operator``, ``contact`` and ``policy_url`` in gate.yaml."""

    name: str = "the operator of this mirror"
    contact: str | None = None
    policy_url: str | None = None


def policy_document(packs: Any, operator: Operator) -> bytes:
    """Who blocks and under which packs (JSON): what the default ``blocked-by`` link points at."""
    described = [describe_pack(p) for p in packs]
    for d in described:
        d.pop("file", None)  # where the pack lies on the gate's disk is not the public's business
    data = {"operator": operator.name, "contact": operator.contact, "packs": described}
    return json.dumps(data, indent=2).encode()


def decision_headers(decision: Decision) -> list[tuple[str, str]]:
    """Headers every gated answer carries, for the front end's access log."""
    return [
        ("X-Exportgate-Decision", decision.enforced_action),
        ("X-Exportgate-Decision-Id", decision.id),
        ("X-Exportgate-Rule", decision.rule),
        NO_STORE,
    ]


def wants_json(accept: str | None) -> bool:
    """JSON when the client prefers it over HTML (package managers, scripts); HTML for browsers and by default."""
    if not accept:
        return False
    best_json = best_html = -1.0
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media in ("application/json", "application/problem+json") or media.endswith("+json"):
            best_json = max(best_json, q)
        elif media in ("text/html", "application/xhtml+xml", "*/*", "text/*"):
            best_html = max(best_html, q)
    return best_json > 0 and best_json > best_html


def _where(subdivision: str | None, country: str | None, unknown_reason: str | None) -> str:
    """Where the client was located, as precisely as the data says: a region a pack restricts on its own
    (``UA-43``) is what the block is about, and its ISO 3166-2 code names the country too."""
    return subdivision or country or f"unknown ({unknown_reason})"


def page_facts(decision: Decision) -> dict[str, Any]:
    """What the 451 page says, from a fresh decision."""
    return {
        "decision_id": decision.id,
        "decided_at": format_time(decision.at),
        "rule": decision.rule,
        "citation": decision.citation,
        "pack": {"id": decision.pack.id, "version": decision.pack.version},
        "path": decision.request.path,
        "location": _where(decision.location.subdivision, decision.location.country,
                           decision.location.unknown_reason),
    }


def page_facts_from_record(record_id: str, at: str, body: dict[str, Any]) -> dict[str, Any]:
    """What the 451 page says, from a committed decision record (nginx asks for the page after the decision)."""
    location = body.get("location") or {}
    pack = body.get("pack") or {}
    return {
        "decision_id": record_id,
        "decided_at": at,
        "rule": body.get("rule"),
        "citation": body.get("citation"),
        "pack": {"id": pack.get("id"), "version": pack.get("version")},
        "path": (body.get("request") or {}).get("path"),
        "location": _where(location.get("subdivision"), location.get("country"), location.get("unknown_reason")),
    }


def blocked_body(decision: Decision, operator: Operator, accept: str | None) -> tuple[str, bytes]:
    """``(content type, body)`` of the 451 page for ``decision``."""
    return render(page_facts(decision), operator, accept)


def render(facts: dict[str, Any], operator: Operator, accept: str | None) -> tuple[str, bytes]:
    if wants_json(accept):
        data = {"status": 451, "title": "Unavailable For Legal Reasons", "blocked_by": operator.name,
                "contact": operator.contact, **facts, "appeal": "Quote the decision id when you contact us."}
        return "application/json", json.dumps(data, indent=2).encode()
    e = html.escape
    if operator.contact and "@" in operator.contact and "://" not in operator.contact:
        contact = (f'<p>Questions or an appeal: <a href="mailto:{e(operator.contact)}">{e(operator.contact)}</a>. ')
    elif operator.contact:
        contact = f"<p>Questions or an appeal: {e(operator.contact)}. "
    else:
        contact = "<p>"
    pack = facts.get("pack") or {}
    if facts.get("rule") is None:  # the decision's record could not be read: say so, not "Rule None"
        rule = "<dd>not available (the decision's record could not be read; the operator has it)</dd>"
        decided = "<dd>not available</dd>"
    else:
        rule = (f'<dd><code>{e(str(facts.get("rule")))}</code> in policy pack <code>{e(str(pack.get("id")))}</code>\n'
                f'version {e(str(pack.get("version")))}</dd>')
        decided = f'<dd>{e(str(facts.get("decided_at")))}</dd>'
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>451 Unavailable For Legal Reasons</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:3rem auto;padding:0 1rem;color:#222}}
dt{{font-weight:600}}dd{{margin:0 0 .6rem 0}}code{{background:#f3f3f3;padding:.1rem .3rem}}</style></head>
<body><h1>451 Unavailable For Legal Reasons</h1>
<p>This download is not available from your location. It is blocked by <strong>{e(operator.name)}</strong>
to comply with export-control and sanctions rules.</p>
<dl>
<dt>Legal basis</dt><dd>{e(str(facts.get("citation")))}</dd>
<dt>Rule</dt>{rule}
<dt>Decided</dt>{decided}
<dt>Decision id</dt><dd><code>{e(str(facts.get("decision_id")))}</code></dd>
</dl>
{contact}Quote the decision id above.</p>
</body></html>
"""
    return "text/html; charset=utf-8", page.encode()


def blocked_headers(decision: Decision, operator: Operator, content_type: str, length: int) -> list[tuple[str, str]]:
    headers = [("Content-Type", content_type), ("Content-Length", str(length)), *decision_headers(decision)]
    if operator.policy_url:
        headers.append(("Link", f'<{operator.policy_url}>; rel="blocked-by"'))
    return headers


def send_blocked(start_response: Any, decision: Decision, operator: Operator, environ: dict[str, Any]) -> list[bytes]:
    """Answer a blocked download with the 451 page (no body for HEAD): the one way every serving mode refuses."""
    content_type, body = blocked_body(decision, operator, environ.get("HTTP_ACCEPT"))
    start_response("451 Unavailable For Legal Reasons", blocked_headers(decision, operator, content_type, len(body)))
    return [body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

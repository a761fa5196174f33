"""Who may read the gate's state: ``/readyz`` and ``/metrics`` answer clients in ``serve.admin_from`` only.

In proxy and static modes the gate is the mirror's public address: decision counts by rule and the store's health
are for its operators. A client outside ``admin_from`` gets what the mode serves at that path (the mirror's own
file, decided and recorded like any download; a 404 in forward-auth mode). The client is located as a download's
client is: through the trusted proxies only, so a spoofed ``X-Forwarded-For`` buys nothing. ``/healthz`` (alive,
nothing more) stays open to all. Real app and store, through werkzeug's test client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from werkzeug.test import Client, TestResponse

from conftest import US_CLIENT, write_config
from exportgate.cli import main
from exportgate.config import DEFAULT_ADMIN_FROM, load_config
from exportgate.web.app import GateApp, create_app
from exportgate.web.clientaddr import Networks

MIRROR_METRICS = b"the mirror's own file at /metrics\n"
PROMETHEUS = "exportgate_decisions"
FRONT_END = "127.0.0.1"


@pytest.fixture
def static_gate(tmp_path: Path) -> Iterator[Any]:
    """``static_gate(**serve)`` -> a test client of a static-mode gate whose mirror has files /metrics and /readyz."""
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "metrics").write_bytes(MIRROR_METRICS)
    (root / "readyz").write_bytes(b"the mirror's own readyz\n")
    opened: list[GateApp] = []

    def make(**serve: Any) -> Client:
        directory = tmp_path / f"gate{len(opened)}"
        directory.mkdir()
        config = load_config(write_config(directory, serve={"mode": "static", "root": str(root), **serve}), env={})
        app = create_app(config)
        opened.append(app)
        return Client(app)

    yield make
    for app in opened:
        app.runtime.close()


def get(client: Client, path: str, peer: str, **headers: str) -> TestResponse:
    return client.get(path, headers=headers, environ_base={"REMOTE_ADDR": peer}, buffered=True)


def is_gate_state(r: TestResponse, path: str) -> bool:
    text = r.get_data(as_text=True)
    return PROMETHEUS in text if path == "/metrics" else '"checks"' in text


@pytest.mark.parametrize("path", ["/metrics", "/readyz"])
@pytest.mark.parametrize(("peer", "headers", "admin"), [
    pytest.param("127.0.0.1", {}, True, id="loopback"),
    pytest.param("::1", {}, True, id="IPv6 loopback"),
    pytest.param("::ffff:10.1.2.3", {}, True, id="IPv4-mapped private"),
    pytest.param("192.168.7.7", {}, True, id="private network"),
    pytest.param("fd00::7", {}, True, id="IPv6 unique local"),
    pytest.param("203.0.113.9", {}, False, id="internet client"),
    pytest.param("2001:db8::9", {}, False, id="IPv6 internet client"),
    pytest.param("", {}, True, id="unix socket peer"),
    pytest.param("not-an-address", {}, False, id="garbage peer"),
    pytest.param("fe80::1%eth0", {}, False, id="link-local with zone"),
    # No proxy is trusted here: the header is the client's own claim.
    pytest.param("203.0.113.9", {"X-Forwarded-For": "127.0.0.1"}, False, id="spoofed XFF from the internet"),
])
def test_only_admin_clients_read_the_gate_state(static_gate: Any, path: str, peer: str,
                                                headers: dict[str, str], admin: bool) -> None:
    client = static_gate()
    r = get(client, path, peer, **headers)
    if admin:
        assert is_gate_state(r, path), r.get_data(as_text=True)
    else:
        assert not is_gate_state(r, path)
        # The mirror's own file, answered as a download: decided (US documentation addresses are test overrides,
        # anything else is an unknown location the packs flag) and recorded.
        assert r.status_code == 200
        assert r.get_data() == (MIRROR_METRICS if path == "/metrics" else b"the mirror's own readyz\n")
        assert r.headers["X-Exportgate-Decision"] in ("allow", "flag")
        assert r.headers["X-Exportgate-Decision-Id"]


@pytest.mark.parametrize(("xff", "admin"), [
    pytest.param(US_CLIENT, False, id="the proxy's client is on the internet"),
    pytest.param("10.0.0.5", True, id="the proxy's client is on the private network"),
    pytest.param(f"127.0.0.1, {US_CLIENT}", False, id="a client claiming loopback to the proxy"),
    pytest.param("garbage", False, id="unreadable header from the proxy"),
])
def test_behind_a_trusted_proxy_the_client_it_names_counts(static_gate: Any, xff: str, admin: bool) -> None:
    """Behind a load balancer every peer is private: the client the balancer names decides, as for a download."""
    client = static_gate(trust_proxy=[f"{FRONT_END}/32"])
    assert is_gate_state(get(client, "/metrics", FRONT_END, **{"X-Forwarded-For": xff}), "/metrics") is admin


def test_admin_from_replaces_the_default(static_gate: Any) -> None:
    client = static_gate(admin_from=["203.0.113.0/24"])
    assert is_gate_state(get(client, "/metrics", "203.0.113.9"), "/metrics")
    assert not is_gate_state(get(client, "/metrics", "127.0.0.1"), "/metrics")
    assert get(client, "/healthz", "198.51.100.1").get_data() == b"ok\n"  # alive, and nothing more: open to all


def test_forward_auth_mode_answers_404_to_others(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, serve={"trust_proxy": [f"{FRONT_END}/32"]}), env={})
    app = create_app(config)
    try:
        client = Client(app)
        assert get(client, "/metrics", "203.0.113.9").status_code == 404
        assert get(client, "/readyz", "203.0.113.9").status_code == 404
        assert get(client, "/readyz", FRONT_END).status_code == 200
    finally:
        app.runtime.close()


def test_the_default_is_loopback_private_networks_and_unix() -> None:
    networks = Networks(DEFAULT_ADMIN_FROM, what="x")
    assert all(a in networks for a in ("127.0.0.2", "::1", "10.9.9.9", "172.31.0.1", "192.168.0.1", "fd12::1", ""))
    assert not any(a in networks for a in ("8.8.8.8", "172.32.0.1", "100.64.0.1", "2001:4860::8888", "fe80::1"))


@pytest.mark.parametrize(("text", "line", "message"), [
    pytest.param("serve:\n  admin_from:\n    - 10.0.0.0/8\n    - intranet\n", 4, "serve.admin_from entry 'intranet'",
                 id="not a network"),
    pytest.param("serve:\n  admin_from: [10.0.0.1/8]\n", 2, "10.0.0.1/8", id="host bits set"),
])
def test_check_rejects_bad_admin_from(tmp_path: Path, text: str, line: int, message: str) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text(text + f"records: sqlite://{tmp_path / 'records.db'}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "check"], env={})
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert f"{config}:{line}:" in result.output


def test_serve_takes_admin_from_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exportgate import serve

    seen: list[Any] = []
    monkeypatch.setattr(serve, "run", seen.append)
    result = CliRunner().invoke(main, ["--config", str(write_config(tmp_path)), "serve", "--admin-from", "10.1.0.0/16",
                                       "--admin-from", "unix"], env={})
    assert result.exit_code == 0, result.output
    assert tuple(seen[0].serve.admin_from) == ("10.1.0.0/16", "unix")

"""The RSGI adapter's pure parts (the endpoint itself runs under granian in tests/integration/test_granian_rsgi.py)."""

from __future__ import annotations

from typing import Any

import pytest

from exportgate.errors import ExportGateError
from exportgate.serve import granian_options, server_for
from exportgate.web.rsgi import peer_address


@pytest.mark.parametrize(("client", "peer"), [
    ("192.0.2.10:5678", "192.0.2.10"),
    ("[2001:db8::1]:5678", "2001:db8::1"),
    ("[::ffff:192.0.2.10]:80", "::ffff:192.0.2.10"),
    # Unbracketed IPv6 with a port is ambiguous: kept whole (unparseable), never split by a guess.
    ("2001:db8::1:5678", "2001:db8::1:5678"),
    ("[2001:db8::1]", "[2001:db8::1]"),
    ("[2001:db8::1]:x", "[2001:db8::1]:x"),
    ("192.0.2.10", "192.0.2.10"),
    ("", ""),
    ("garbage", "garbage"),  # not an address: the client-address resolver calls it unparseable
])
def test_peer_address(client: str, peer: str) -> None:
    assert peer_address(client) == peer


@pytest.mark.parametrize(("server", "mode", "chosen"), [
    ("auto", "forward-auth", "gunicorn"),  # the event-loop worker
    ("auto", "proxy", "gunicorn"),  # needs the raw request target
    ("auto", "static", "gunicorn"),
    ("granian", "forward-auth", "granian"),
])
def test_which_server_serves(gate_config: Any, server: str, mode: str, chosen: str) -> None:
    config = gate_config(serve={"server": server, "mode": mode, "root": "/srv/mirror", "upstream": "http://m"})
    assert server_for(config) == chosen


@pytest.mark.parametrize("mode", ["proxy", "static"])
def test_granian_is_refused_where_it_would_weaken_path_checks(gate_config: Any, mode: str) -> None:
    config = gate_config(serve={"server": "granian", "mode": mode, "root": "/srv/mirror", "upstream": "http://m"})
    with pytest.raises(ExportGateError, match="already-decoded path"):
        server_for(config)


def test_granian_options_for_forward_auth(gate_config: Any) -> None:
    options = granian_options(gate_config(serve={"bind": "[::1]:8451", "workers": 3}))
    assert (options["address"], options["port"], options["workers"]) == ("::1", 8451, 3)
    assert options["respawn_failed_workers"] is True


@pytest.mark.parametrize("bind", ["127.0.0.1:1,127.0.0.1:2", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000"])
def test_granian_refuses_binds_it_cannot_serve(gate_config: Any, bind: str) -> None:
    with pytest.raises(ExportGateError):
        granian_options(gate_config(serve={"bind": bind}))

"""The manager's listeners take their address family from resolving the host, not from
its spelling: a name with only an IPv6 address was bound as IPv4 (and refused)."""

from __future__ import annotations

import socket

import pytest

from fleet import server
from fleet.errors import FleetError
from tests import fake_names
from tests.fake_names import NOWHERE, V6_ONLY


@pytest.fixture
def v6_only_name(monkeypatch: pytest.MonkeyPatch) -> str:
    fake_names.install(monkeypatch)
    return V6_ONLY


def test_a_name_with_only_an_ipv6_address_binds_ipv6(v6_only_name: str) -> None:
    sock = server._bind(f"{v6_only_name}:0")
    try:
        assert sock.family == socket.AF_INET6 and sock.getsockname()[0] == "::1"
        port = sock.getsockname()[1]
        with socket.create_connection(("::1", port), timeout=5):
            pass  # it listens where the name points
    finally:
        sock.close()


def test_the_grpc_check_resolves_the_same_way(v6_only_name: str) -> None:
    probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    probe.bind(("::1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server._check_free(f"{v6_only_name}:{port}")  # free on ::1: no error
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as held:
        held.bind(("::1", port))
        held.listen(1)
        with pytest.raises(FleetError, match=rf"cannot listen on {v6_only_name}:{port}: "):
            server._check_free(f"{v6_only_name}:{port}")


def test_a_name_that_does_not_resolve_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_names.install(monkeypatch)
    with pytest.raises(FleetError, match=r"cannot listen on nowhere\.invalid:0: Name or service"):
        server._bind(f"{NOWHERE}:0")

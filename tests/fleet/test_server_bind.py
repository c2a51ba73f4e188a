"""The manager's listeners take their address family from resolving the host, not from
its spelling: a name with only an IPv6 address was bound as IPv4 (and refused)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from fleet import server
from fleet.errors import FleetError

V6_ONLY = "v6only.edgeflix.test"  # the resolver below gives it ::1 alone
NOWHERE = "nowhere.invalid"  # and this one nothing, without asking DNS
_real_getaddrinfo = socket.getaddrinfo


def _resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    if host == V6_ONLY:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", int(port), 0, 0))]
    if host == NOWHERE:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _real_getaddrinfo(host, port, *args, **kwargs)


@pytest.fixture
def v6_only_name(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver)
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
    monkeypatch.setattr(socket, "getaddrinfo", _resolver)
    with pytest.raises(FleetError, match=r"cannot listen on nowhere\.invalid:0: Name or service"):
        server._bind(f"{NOWHERE}:0")

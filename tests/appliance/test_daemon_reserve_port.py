"""The serving port the daemon reserves for its workers takes its address family from
resolving the host, as the workers' own sockets do (edgeflix.http.server.bind): a name
with only an IPv6 address was reserved as IPv4 (and refused)."""

from __future__ import annotations

import socket

import pytest

from appliance.daemon import _reserve_port
from appliance.supervisor import DaemonError
from edgeflix.http.server import bind
from tests import fake_names
from tests.fake_names import NOWHERE, V6_ONLY


def test_a_name_with_only_an_ipv6_address_is_reserved_as_ipv6(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_names.install(monkeypatch)
    reserved, port = _reserve_port(V6_ONLY, 0)
    try:
        assert reserved.family == socket.AF_INET6 and reserved.getsockname()[0] == "::1"
        worker = bind(V6_ONLY, port, reuse_port=True)  # as each serving worker binds
        worker.close()
    finally:
        reserved.close()


def test_a_name_that_does_not_resolve_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_names.install(monkeypatch)
    with pytest.raises(DaemonError, match=r"cannot listen on nowhere\.invalid:0: Name or service"):
        _reserve_port(NOWHERE, 0)


def test_an_ipv6_literal_is_named_in_brackets() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as held:
        held.bind(("::1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        with pytest.raises(DaemonError, match=rf"cannot listen on \[::1\]:{port}: "):
            _reserve_port("::1", port)

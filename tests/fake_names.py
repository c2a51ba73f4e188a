"""Made-up host names for address tests, answered without asking DNS: this machine has no
name that resolves to an IPv6 address alone. The binding done with them is real."""

from __future__ import annotations

import socket
from typing import Any

import pytest

V6_ONLY = "v6only.edgeflix.test"  # resolves to ::1 alone
NOWHERE = "nowhere.invalid"  # resolves to nothing
_real_getaddrinfo = socket.getaddrinfo


def _resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    if host == V6_ONLY:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", int(port), 0, 0))]
    if host == NOWHERE:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _real_getaddrinfo(host, port, *args, **kwargs)


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """socket.getaddrinfo answers V6_ONLY and NOWHERE as above, every other name as before."""
    monkeypatch.setattr(socket, "getaddrinfo", _resolver)

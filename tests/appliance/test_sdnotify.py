"""sd_notify against real AF_UNIX datagram sockets, on a path and in the abstract namespace."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import sdnotify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_each_message_reaches_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}
    assert sdnotify.ready("serving 2 workers", env)
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving 2 workers"
    assert sdnotify.watchdog(env)
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert sdnotify.stopping(env)
    assert sock.recv(4096) == b"STOPPING=1"
    assert sdnotify.reloading(env, now_us=42)
    assert sock.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=42"
    assert sdnotify.status("draining", env)
    assert sock.recv(4096) == b"STATUS=draining"


def test_abstract_socket() -> None:
    name = f"edgeflix-test-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert sdnotify.ready(env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_without_systemd_is_a_noop(tmp_path: Path) -> None:
    assert not sdnotify.ready(env={})
    assert not sdnotify.watchdog(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})


def test_watchdog_interval() -> None:
    assert sdnotify.watchdog_interval_s({}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval_s(mine) == 1.0
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None

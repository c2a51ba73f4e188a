"""Fixtures shared by the integration tests of the daemons."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator

import pytest


class Notifications:
    """A datagram socket in the abstract namespace standing in for systemd's; each message
    with its arrival time (`at`, monotonic)."""

    def __init__(self) -> None:
        self.name = f"@edgeflix-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.seen: list[str] = []
        self.at: list[float] = []

    def wait_for(self, word: str, timeout: float = 15.0, count: int = 1) -> bool:
        deadline = time.monotonic() + timeout
        while sum(word in m for m in self.seen) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                self.seen.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return False
            self.at.append(time.monotonic())
        return True

    def timed(self) -> list[tuple[float, str]]:
        return list(zip(self.at, self.seen, strict=True))


@pytest.fixture()
def notify() -> Iterator[Notifications]:
    n = Notifications()
    try:
        yield n
    finally:
        n.sock.close()

"""At `serve.max_connections`, `appliance run` closes the connection idle the longest to let
a newcomer in (as nginx reuses keep-alive connections) once it has been idle a while, and
answers 503 when none has (edgeflix/http/server.py, make_room)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.integration.serve_support import (
    connect,
    make_title,
    read_response,
    read_until_closed,
    start,
)
from tests.integration.test_appliance_serve import seed, write_config

REQUEST = b"GET /titles/bunny/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n"
LINE = REQUEST[: REQUEST.index(b"\r\n") + 2]  # a request under way: its head half sent


def served(sock: socket.socket) -> int:
    """The status of one keep-alive request on `sock` (the connection stays open)."""
    sock.sendall(REQUEST)
    return read_response(sock, bytearray()).status


def closed(sock: socket.socket) -> bool:
    data, gone = read_until_closed(sock, timeout=5)
    return gone and data == b""


def test_idle_keepalives_make_room_busy_connections_do_not(tmp_path: Path) -> None:
    source = make_title(tmp_path / "src" / "bunny", "bunny")
    config = write_config(
        tmp_path, workers=1, max_connections=3, header_timeout_s=30.0, keepalive_timeout_s=3.0
    )
    config.write_text(config.read_text().replace('tokens = "required"', 'tokens = "off"'))
    seed(config, source)
    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    socks: list[socket.socket] = []
    try:
        a, b, c = socks[:] = [connect(server.addr) for _ in range(3)]
        for sock in (a, b, c):
            assert served(sock) == 200  # idle keep-alives now, a the longest
        # Idle only a moment (a player between two segments): not closed for a newcomer.
        with connect(server.addr) as early:
            early.sendall(REQUEST)
            assert read_until_closed(early)[0].startswith(b"HTTP/1.1 503 ")
        time.sleep(1.6)  # idle longer than half the keep-alive timeout: evictable
        assert served(b) == 200  # the same head again: b was used since (an armed route)
        d = connect(server.addr)
        socks.append(d)
        assert served(d) == 200  # the cap is reached, yet the newcomer is served ...
        assert closed(a)  # ... in the place of the connection idle the longest
        e = connect(server.addr)  # c has been idle for 1.6 s, b only a moment
        socks.append(e)
        assert served(e) == 200
        assert closed(c)  # not b, which was used after c
        assert served(b) == 200 and served(d) == 200

        for sock in (b, d, e):  # every connection mid-request: none may be closed
            sock.sendall(LINE)
        time.sleep(0.3)  # the half heads reach the server
        with connect(server.addr) as late:
            late.sendall(REQUEST)
            answer, _ = read_until_closed(late)
        assert answer.startswith(b"HTTP/1.1 503 ")
        for sock in (b, d, e):
            sock.sendall(REQUEST[len(LINE) :])
            assert read_response(sock, bytearray()).status == 200
    finally:
        for sock in socks:
            sock.close()
        assert server.stop() == 0


def test_a_burst_at_the_cap_gets_answers_never_empty_replies(tmp_path: Path) -> None:
    """A fresh connection is not idle: its request may be in the socket, unread. Closing it
    for the next newcomer answered neither (each of a burst closed the one before it)."""
    source = make_title(tmp_path / "src" / "bunny", "bunny")
    config = write_config(tmp_path, workers=1, max_connections=3, header_timeout_s=30.0)
    config.write_text(config.read_text().replace('tokens = "required"', 'tokens = "off"'))
    seed(config, source)
    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    socks: list[socket.socket] = []
    try:
        busy = [connect(server.addr) for _ in range(2)]
        socks += busy
        for sock in busy:
            sock.sendall(LINE)  # mid-request: not to be closed
        time.sleep(0.3)
        burst = [connect(server.addr) for _ in range(5)]
        socks += burst
        for sock in burst:
            sock.sendall(REQUEST)
        answers = [read_until_closed(sock, timeout=5)[0][:13] for sock in burst[1:]]
        assert read_response(burst[0], bytearray()).status == 200  # the last free slot
        assert answers == [b"HTTP/1.1 503 "] * 4
    finally:
        for sock in socks:
            sock.close()
        assert server.stop() == 0

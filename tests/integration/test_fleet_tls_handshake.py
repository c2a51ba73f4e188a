"""The manager's HTTPS listener bounds the TLS handshake (`[server] tls_handshake_timeout_s`,
10 s by default): a client that connects and says nothing, or trickles its hello a byte at a
time, is dropped then, not after asyncio's 60 s. A connection in its handshake counts against
the connection cap (fleet/http_protocol.py) as one owing its head: a crowd of silent connects
past the cap closes its oldest, not every descriptor. A real client still gets its answer.
"""

from __future__ import annotations

import os
import re
import resource
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeflix.http.connection import LINGER_S
from tests.integration.serve_support import Server, start


def _start(top: Path, extra: str = "") -> Server:
    top.mkdir(parents=True, exist_ok=True)
    config = top / "fleet.toml"
    config.write_text(f"""
[server]
grpc = "127.0.0.1:0"
enrol_grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{top}/db/fleet.sqlite"
tls = true
{extra}
[origin]
url = "http://127.0.0.1:9"
""")
    with (top / "fleet.log").open("wb") as log:
        return start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=log)


@pytest.fixture(scope="module")
def default_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    top = tmp_path_factory.mktemp("fleet-handshake")
    fleet = _start(top)
    try:
        yield fleet, top / "db"
    finally:
        fleet.stop()


def _addr(fleet: Server) -> tuple[str, int]:
    host, _, port = fleet.urls["http"].partition("://")[2].rpartition(":")
    return host, int(port)


def _client_hello() -> bytes:
    """A real TLS ClientHello, as a client's first flight."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    out = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), out, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (EOF or reset); call only when it is readable."""
    try:
        return sock.recv(4096) == b""
    except OSError:  # reset
        return True


def _dropped_after(addr: tuple[str, int], limit_s: float) -> tuple[float, float]:
    """Seconds until the server drops a silent client and one that trickles its hello a
    byte every 0.2 s (each inf if still open after `limit_s`)."""
    start = time.monotonic()
    silent = socket.create_connection(addr, timeout=5)
    slow = socket.create_connection(addr, timeout=5)
    hello = _client_hello()[:-1]  # never complete
    dropped = {silent: float("inf"), slow: float("inf")}
    sent = 0
    try:
        while time.monotonic() - start < limit_s:
            open_ = [s for s, at in dropped.items() if at == float("inf")]
            if not open_:
                break
            if slow in open_ and sent < len(hello):
                try:
                    slow.send(hello[sent : sent + 1])
                    sent += 1
                except OSError:  # reset: dropped, said by the read below
                    pass
            ready, _, _ = select.select(open_, [], [], 0.2)
            for sock in ready:
                if _closed(sock):
                    dropped[sock] = time.monotonic() - start
    finally:
        silent.close()
        slow.close()
    assert sent > 3, "the trickling client never got going"
    return dropped[silent], dropped[slow]


def _healthz(fleet: Server, db: Path, timeout: float = 10) -> bytes:
    context = ssl.create_default_context(cafile=str(db / "fleet-ca.pem"))
    host, port = _addr(fleet)
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    chunks = []
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(request.encode())
        while data := tls.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_clients_that_never_finish_the_handshake_are_dropped_after_10_s_by_default(
    default_fleet: tuple[Server, Path],
) -> None:
    fleet, db = default_fleet
    silent, slow = _dropped_after(_addr(fleet), limit_s=20)
    # asyncio's own default held both for 60 s.
    assert 9 <= silent <= 14, silent
    assert 9 <= slow <= 14, slow  # bytes arriving do not restart the clock
    assert _healthz(fleet, db).startswith(b"HTTP/1.1 200 ")


def test_the_handshake_timeout_is_configurable(tmp_path: Path) -> None:
    fleet = _start(tmp_path, "tls_handshake_timeout_s = 1")
    try:
        silent, slow = _dropped_after(_addr(fleet), limit_s=8)
        assert 0.8 <= silent <= 4, silent
        assert 0.8 <= slow <= 4, slow
        # A real client's handshake fits well within it.
        assert _healthz(fleet, tmp_path / "db").startswith(b"HTTP/1.1 200 ")
    finally:
        fleet.stop()


NOFILE = 400  # the manager's descriptors, soft and hard: its connection cap is fitted to it


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def _start_low_nofile(top: Path) -> Server:
    """`_start`'s manager, under `ulimit -n NOFILE`."""
    top.mkdir(parents=True, exist_ok=True)
    config = top / "fleet.toml"
    config.write_text(f"""
[server]
grpc = "127.0.0.1:0"
enrol_grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{top}/db/fleet.sqlite"
tls = true
[origin]
url = "http://127.0.0.1:9"
""")
    with (top / "fleet.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", "fleet", "serve", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=log, bufsize=0, preexec_fn=_low_nofile,
        )  # fmt: skip
    fleet = Server(proc)
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while "http" not in fleet.urls and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 1)[0]:
            word, _, url = proc.stdout.readline().decode().strip().partition(" on ")
            if not url:
                fleet.stop()
                raise AssertionError("edgeflix fleet serve did not start")
            fleet.urls[word] = url
    return fleet


def test_silent_connects_past_the_cap_close_the_oldest_not_every_descriptor(
    tmp_path: Path,
) -> None:
    """Counted only once their handshake was done, 420 silent connects took every one of the
    manager's 400 descriptors for the 10 s of the handshake timeout: every real client was
    refused meanwhile (SSLEOFError, a reset), and nothing said why."""
    fleet = _start_low_nofile(tmp_path)
    crowd: list[socket.socket] = []
    try:
        addr = _addr(fleet)
        for _ in range(NOFILE + 20):
            crowd.append(socket.create_connection(addr, timeout=5))
        began = time.monotonic()
        assert _healthz(fleet, tmp_path / "db", timeout=5).startswith(b"HTTP/1.1 200 ")
        assert time.monotonic() - began < 3  # not after the crowd's handshakes time out
        # Room was made oldest first: the first connects are closed, the last still open.
        oldest, newest = crowd[0], crowd[-1]
        assert select.select([oldest], [], [], 3)[0] and _closed(oldest)
        assert not select.select([newest], [], [], 0)[0]
    finally:
        for sock in crowd:
            sock.close()
        assert fleet.stop() == 0


def test_idle_https_clients_do_not_hold_a_sigterm(tmp_path: Path) -> None:
    """Closed at shutdown, a TLS connection awaited its client's close_notify, which an idle
    keep-alive client never sends: `fleet serve` took the whole 5 s grace to exit."""
    fleet = _start(tmp_path)
    context = ssl.create_default_context(cafile=str(tmp_path / "db" / "fleet-ca.pem"))
    host, port = _addr(fleet)
    idle: list[ssl.SSLSocket] = []
    try:
        for _ in range(5):
            tls = context.wrap_socket(
                socket.create_connection((host, port), timeout=5), server_hostname=host
            )
            idle.append(tls)
            tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")
        began = time.monotonic()
        assert fleet.stop() == 0
        assert time.monotonic() - began < 3
    finally:
        for sock in idle:
            sock.close()
        fleet.stop()


def test_https_clients_gone_quiet_give_their_places_back(tmp_path: Path) -> None:
    """A cap's worth of HTTPS clients that make one request and go quiet: the keep-alive
    timeout closes them, and each TLS close awaited its client's close_notify for 30 s,
    holding its descriptor and its place under the cap: every player got 503 meanwhile.
    Now a quiet client's place is back within LINGER_S of its close."""
    fleet = _start_low_nofile(tmp_path)
    context = ssl.create_default_context(cafile=str(tmp_path / "db" / "fleet-ca.pem"))
    host, port = _addr(fleet)
    lowered = re.search(
        rb"max_connections\.lowered .*?now=(\d+)", (tmp_path / "fleet.log").read_bytes()
    )
    assert lowered, "the manager did not fit its cap to its descriptors"
    quiet: list[ssl.SSLSocket] = []
    try:
        for _ in range(int(lowered[1])):
            tls = context.wrap_socket(
                socket.create_connection((host, port), timeout=5), server_hostname=host
            )
            quiet.append(tls)
            tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")
        # uvicorn's keep-alive timeout (5 s) closes them; their places are back LINGER_S on.
        time.sleep(5 + LINGER_S + 1.5)
        assert _healthz(fleet, tmp_path / "db", timeout=5).startswith(b"HTTP/1.1 200 ")
        held = len(os.listdir(f"/proc/{fleet.proc.pid}/fd"))
        assert held < len(quiet) // 2, held
    finally:
        for sock in quiet:
            sock.close()
        assert fleet.stop() == 0


def test_evicted_https_clients_give_their_descriptors_back(tmp_path: Path) -> None:
    """At the cap, each newcomer evicts the client idle longest; a TLS one, closed, awaited
    its close_notify for 30 s with its descriptor: a cap's worth of newcomers took every
    descriptor of the manager (its own origin reads failed) and the rest were reset."""
    fleet = _start_low_nofile(tmp_path)
    context = ssl.create_default_context(cafile=str(tmp_path / "db" / "fleet-ca.pem"))
    host, port = _addr(fleet)
    log = (tmp_path / "fleet.log").read_bytes()
    lowered = re.search(rb"max_connections\.lowered .*?now=(\d+)", log)
    assert lowered, "the manager did not fit its cap to its descriptors"
    cap = int(lowered[1])
    idle: list[ssl.SSLSocket] = []
    try:
        for _ in range(2 * cap):  # the first fill the cap; each after evicts the oldest
            tls = context.wrap_socket(
                socket.create_connection((host, port), timeout=5), server_hostname=host
            )
            idle.append(tls)
            tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")
        held = len(os.listdir(f"/proc/{fleet.proc.pid}/fd"))
        assert held < NOFILE - 40, (held, cap)
        assert _healthz(fleet, tmp_path / "db", timeout=5).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in idle:
            sock.close()
        assert fleet.stop() == 0

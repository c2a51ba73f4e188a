"""`edgeflix fleet serve`'s public HTTP port against clients that hold on to it: an endless
request line or header (refused at 16 KiB, while /steer is answered at once meanwhile), and
connections that never finish a head (closed after the 10 s head timeout); and a /steer
answer that lists the appliances left out only for `edgeflix fleet steer`."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from edgeflix.proto import auth
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from tests.conftest import run_cli
from tests.integration.serve_support import Server, read_until_closed, start

FLEET_TOML = """
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{db}"
enrolment = "open"
[origin]
url = "http://127.0.0.1:9"
[[sites]]
name = "home"
prefixes = ["127.0.0.0/8"]
"""
HEAD_TIMEOUT_S = 10.0  # the default, as the appliance's and origin's
STEER = "/steer?client_ip=127.0.0.1&title=movie"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("fleet")
    (folder / "fleet.toml").write_text(FLEET_TOML.format(db=folder / "fleet.sqlite"))
    server = start(["fleet", "serve", "--config", str(folder / "fleet.toml")], ("grpc", "http"))
    yield server
    server.stop()


def address(fleet: Server) -> tuple[str, int]:
    host, _, port = fleet.urls["http"].removeprefix("http://").rpartition(":")
    return host, int(port)


def steer_time(fleet: Server) -> float:
    """Seconds a new player waits for its /steer answer."""
    began = time.monotonic()
    resp = httpx.get(fleet.urls["http"] + STEER, timeout=5)
    assert resp.status_code == 200 and resp.json()["urls"]
    return time.monotonic() - began


class Flood:
    """A client sending a request head that never ends, 1 MiB at a time (64 MiB at most),
    until the manager stops taking it."""

    def __init__(self, fleet: Server, start: bytes, pad: bytes) -> None:
        self.sock = socket.create_connection(address(fleet), timeout=30)
        self.sock.sendall(start)
        self.pad = pad * ((1 << 20) // len(pad))
        self.sent = 0
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        try:
            for _ in range(64):
                self.sock.sendall(self.pad)
                self.sent += 1
        except OSError:
            pass  # refused and closed: what the test wants


@pytest.mark.parametrize(
    ("start", "pad", "status"),
    [
        (b"GET /steer?client_ip=127.0.0.1&title=movie&x=", b"a", b"414"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"a", b"431"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", b"431"),
    ],
)
def test_an_endless_head_is_refused_and_steering_goes_on(
    fleet: Server, start: bytes, pad: bytes, status: bytes
) -> None:
    """It stalled every /steer for 22 s (the URL copied whole for each read, on the loop
    that also serves gRPC) and grew the manager by gigabytes of headers."""
    flood = Flood(fleet, start, pad)
    try:
        answer, closed = read_until_closed(flood.sock, timeout=20)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
        assert closed  # after the refusal, not left open to send more
        assert flood.sent < 64
        assert max(steer_time(fleet) for _ in range(5)) < 1.0
    finally:
        flood.sock.close()
        flood.thread.join(10)


def test_silent_and_slowloris_connections_are_closed_after_the_head_timeout(
    fleet: Server,
) -> None:
    """They stayed open for good: 1,100 of them took every descriptor (at `ulimit -n
    1024`), and /steer and the appliances' gRPC with them."""
    silent = socket.create_connection(address(fleet), timeout=30)
    slow = socket.create_connection(address(fleet), timeout=30)
    slow.sendall(b"GET /steer?client_ip=127.0.0.1&title=movie HTTP/1.1\r\n")
    opened = time.monotonic()
    results: dict[str, tuple[bool, float]] = {}

    def watch(name: str, sock: socket.socket) -> None:
        closed = read_until_closed(sock, timeout=HEAD_TIMEOUT_S + 5)[1]
        results[name] = (closed, time.monotonic() - opened)

    watchers = [
        threading.Thread(target=watch, args=(name, sock), daemon=True)
        for name, sock in (("silent", silent), ("slow", slow))
    ]
    for w in watchers:
        w.start()
    try:
        while any(w.is_alive() for w in watchers) and time.monotonic() - opened < 20:
            with contextlib.suppress(OSError):
                slow.sendall(b"X-A: b\r\n")  # a header line a second: never a whole head
            assert steer_time(fleet) < 1.0
            time.sleep(1)
        for w in watchers:
            w.join(5)
        for name in ("silent", "slow"):
            closed, after = results[name]
            assert closed, f"{name} connection still open after {after:.1f} s"
            assert HEAD_TIMEOUT_S - 1 <= after <= HEAD_TIMEOUT_S + 3, (name, after)
    finally:
        silent.close()
        slow.close()


def test_only_fleet_steer_hears_which_appliances_were_left_out(fleet: Server) -> None:
    """Every player's answer listed every ineligible appliance of the fleet: 68 KB each at
    ~2,800 appliances (a tenth of the throughput), and every name, to anyone."""
    with grpc.insecure_channel(fleet.urls["grpc"]) as channel:
        key = auth.public_key(auth.new_private_key())
        request = fleet_pb2.EnrolRequest(name="quiet1", public_key=key, url="http://q:8081")
        fleet_pb2_grpc.FleetStub(channel).Enrol(request, timeout=10)
    player = httpx.get(fleet.urls["http"] + STEER, timeout=5)
    assert "excluded" not in player.json() and b"quiet1" not in player.content
    args = ["fleet", "steer", "--client-ip", "127.0.0.1", "--title", "movie"]
    proc = run_cli([*args, "--fleet", fleet.urls["http"], "--json"], check=True, timeout=60)
    out = json.loads(proc.stdout)
    assert out["urls"] and out["excluded"] == ["quiet1: unreachable"]
    proc = run_cli([*args, "--fleet", fleet.urls["http"]], check=True, timeout=60)
    assert "left out: quiet1: unreachable" in proc.stdout

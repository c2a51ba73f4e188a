"""The request mix a fleet of real players throws at an appliance, for bench/soak.py.

Keep-alive GETs of 64 KiB and 2 MiB segments, Range (single, suffix, multi), HEAD, 304
revalidations, 404s, bad tokens, malformed heads, pipelining, clients that vanish mid-body,
slow readers, idle keep-alive connections left for the server's idle timeout, and bursts past
the connection cap. One `drive()` call runs a bounded number of requests (and seconds) from one
process over raw loopback sockets and returns what came back, counted by kind and status.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

# (kind, weight); the abusive kinds are rare, as they are in a real fleet.
MIX = (
    ("get64", 50.0),
    ("get2m", 4.0),
    ("range", 10.0),
    ("head", 8.0),
    ("revalidate", 10.0),
    ("notfound", 5.0),
    ("badtoken", 3.0),
    ("pipelined", 2.0),
    ("malformed", 1.5),
    ("abort", 1.5),
    ("slow", 0.4),
    ("idle", 0.6),
)
KEEPALIVE_CONNS = 4
MAX_SLOW = 6
MAX_IDLE = 8
RECV = 256 * 1024
_FRESH_CONNECTION = frozenset(("idle", "malformed"))


@dataclass(frozen=True)
class Target:
    """Where the appliance listens and how to name its files (with or without a token)."""

    host: str
    port: int
    prefix: str  # "/titles/soak/" or "/t/<token>/titles/soak/"
    tokens: bool
    small: tuple[str, ...]  # paths inside the title of 64 KiB segments
    large: tuple[str, ...]  # ... of 2 MiB segments
    cap: int  # connections a burst must exceed to be refused (workers x max_connections)


@dataclass
class Tally:
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    overflow_503: int = 0

    def bad(self, what: str) -> None:
        self.outcomes["unexpected"] += 1
        if len(self.errors) < 20:
            self.errors.append(what)


class Response:
    __slots__ = ("body_len", "close", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body_len: int, close: bool) -> None:
        self.status, self.headers, self.body_len, self.close = status, headers, body_len, close


class Conn:
    """One keep-alive client connection reading whole responses (bodies read and dropped)."""

    def __init__(self, t: Target, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((t.host, t.port), timeout=timeout)
        self.buf = bytearray()
        self.sink = bytearray(RECV)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        n = self.sock.recv_into(self.sink)
        if n:
            self.buf += memoryview(self.sink)[:n]
        return n > 0

    def response(self, head_only: bool = False) -> Response:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if not self._fill():
                raise ConnectionError("closed before a response head")
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = 0 if head_only or status in (204, 304) else int(headers.get("content-length", 0))
        left = length - len(self.buf)
        if left <= 0:
            del self.buf[:length]
        else:
            self.buf.clear()
            while left > 0:
                n = self.sock.recv_into(self.sink, min(left, RECV))
                if not n:
                    raise ConnectionError("closed inside a body")
                left -= n
        close = headers.get("connection", "").lower() == "close"
        return Response(status, headers, length, close)

    def close(self, reset: bool = False) -> None:
        if reset:  # an abortive close (RST), as a killed player or a NAT timeout gives
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def request(method: str, path: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: soak", "User-Agent: soak-player", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Player:
    """Drives the mix; `pool` are its keep-alive connections, the rest are side ones."""

    def __init__(self, t: Target, seed: int) -> None:
        self.t = t
        self.rng = random.Random(seed)
        self.kinds = [k for k, _ in MIX]
        self.weights = [w for _, w in MIX]
        self.pool: list[Conn | None] = [None] * KEEPALIVE_CONNS
        self.slow: list[tuple[Conn, int, float]] = []  # conn, bytes still to read, opened at
        self.idle: list[tuple[Conn, float]] = []
        self.etags: dict[str, str] = {}
        self.tally = Tally()

    # -- one request of each kind ----------------------------------------------------------

    def _conn(self) -> tuple[int, Conn]:
        i = self.rng.randrange(KEEPALIVE_CONNS)
        conn = self.pool[i]
        if conn is None:
            conn = self.pool[i] = Conn(self.t)
        return i, conn

    def _keepalive(self, kind: str, data: bytes, want: int, head_only: bool = False) -> Response:
        i, conn = self._conn()
        try:
            conn.send(data)
            resp = conn.response(head_only)
        except OSError as exc:
            # The server may close a pooled connection at its idle timeout: one fresh try.
            conn.close()
            self.pool[i] = conn = Conn(self.t)
            conn.send(data)
            resp = conn.response(head_only)
            self.tally.outcomes[f"retried:{type(exc).__name__}"] += 1
        self._count(kind, resp.status, want)
        if resp.close:
            conn.close()
            self.pool[i] = None
        return resp

    def _count(self, kind: str, status: int, want: int) -> None:
        self.tally.requests += 1
        self.tally.outcomes[f"{kind}:{status}"] += 1
        # A side connection (a fresh one) may meet a worker at its cap: SO_REUSEPORT spreads
        # connections unevenly and lingering closes count. Refused is right then.
        if status != want and not (status == 503 and kind in _FRESH_CONNECTION):
            self.tally.bad(f"{kind}: status {status}, wanted {want}")

    def step(self, kind: str) -> None:
        t, rng = self.t, self.rng
        small, large = rng.choice(t.small), rng.choice(t.large)
        if kind == "get64":
            resp = self._keepalive(kind, request("GET", t.prefix + small), 200)
            if "etag" in resp.headers:
                self.etags[small] = resp.headers["etag"]
        elif kind == "get2m":
            self._keepalive(kind, request("GET", t.prefix + large), 200)
        elif kind == "range":
            spec = rng.choice(("bytes=0-1023", "bytes=-4096", "bytes=65000-", "bytes=0-9,100-199"))
            path = large if spec == "bytes=65000-" else small
            self._keepalive(kind, request("GET", t.prefix + path, f"Range: {spec}"), 206)
        elif kind == "head":
            self._keepalive(kind, request("HEAD", t.prefix + large), 200, head_only=True)
        elif kind == "revalidate":
            etag = self.etags.get(small)
            if etag is None:
                self.step("get64")
                return
            self._keepalive(kind, request("GET", t.prefix + small, f"If-None-Match: {etag}"), 304)
        elif kind == "notfound":
            path = f"missing/seg{rng.randrange(10**9)}.m4s"  # a new path each time: no cache
            self._keepalive(kind, request("GET", t.prefix + path), 404)
        elif kind == "badtoken":
            junk = "".join(rng.choice("abcdefABCDEF0123456789-_") for _ in range(40))
            want = 403 if t.tokens else 404
            path = f"/t/{junk}/titles/soak/{small}" if t.tokens else f"/nosuch/{junk}/{small}"
            self._keepalive(kind, request("GET", path), want)
        elif kind == "pipelined":
            self._pipelined(small)
        else:
            getattr(self, "_" + kind)(small, large)

    def _pipelined(self, small: str) -> None:
        i, conn = self._conn()
        data = request("GET", self.t.prefix + small) + request("HEAD", self.t.prefix + small)
        try:
            conn.send(data)
            first, second = conn.response(), conn.response(head_only=True)
        except OSError:
            conn.close()
            self.pool[i] = None
            self.tally.outcomes["pipelined:lost"] += 1  # the idle timeout raced the send
            return
        self._count("pipelined", first.status, 200)
        self._count("pipelined", second.status, 200)

    def _malformed(self, small: str, large: str) -> None:
        junk = self.rng.choice(
            (
                b"GARBAGE\r\n\r\n",
                b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
                b"GET " + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(40) + b"\r\n\r\n",
            )
        )
        conn = Conn(self.t)
        try:
            conn.send(junk)
            resp = conn.response()
            # 400, 414 or 431 (too long), 505 (not HTTP/1.x): refused, never a 500.
            ok = 400 <= resp.status < 500 or resp.status == 505
            self._count("malformed", 400 if ok else resp.status, 400)
        except OSError:
            self.tally.requests += 1
            self.tally.outcomes["malformed:closed"] += 1
        conn.close()

    def _abort(self, small: str, large: str) -> None:
        conn = Conn(self.t)
        conn.send(request("GET", self.t.prefix + large))
        conn.sock.recv(16384)
        conn.close(reset=self.rng.random() < 0.5)
        self.tally.requests += 1
        self.tally.outcomes["abort:200"] += 1

    def _slow(self, small: str, large: str) -> None:
        if len(self.slow) >= MAX_SLOW:
            self.step("get64")
            return
        conn = Conn(self.t)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        conn.send(request("GET", self.t.prefix + large, "Connection: close"))
        self.slow.append((conn, 2 << 20, time.monotonic()))
        self.tally.requests += 1
        self.tally.outcomes["slow:started"] += 1

    def _idle(self, small: str, large: str) -> None:
        if len(self.idle) >= MAX_IDLE:
            self.step("get64")
            return
        conn = Conn(self.t)
        conn.send(request("GET", self.t.prefix + small))
        resp = conn.response()
        self._count("idle", resp.status, 200)
        if resp.close:
            conn.close()
        else:
            self.idle.append((conn, time.monotonic()))

    # -- the side connections, serviced between requests -----------------------------------

    def service(self, idle_timeout_s: float) -> None:
        kept = []
        for conn, left, since in self.slow:
            conn.sock.setblocking(False)
            try:
                left -= len(conn.sock.recv(4096))  # a few KiB per pass: a slow reader
            except BlockingIOError:
                pass
            except OSError:
                left = -1
            if left <= 0 or time.monotonic() - since > 30:
                conn.close(reset=left > 0)
                self.tally.outcomes["slow:done" if left <= 0 else "slow:gave_up"] += 1
            else:
                kept.append((conn, left, since))
        self.slow = kept
        still = []
        for conn, since in self.idle:
            conn.sock.setblocking(False)
            try:
                closed = conn.sock.recv(1) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                self.tally.outcomes["idle:closed_by_server"] += 1
                conn.close()
            elif time.monotonic() - since > idle_timeout_s + 10:
                self.tally.bad("idle: keep-alive connection outlived the idle timeout")
                conn.close()
            else:
                still.append((conn, since))
        self.idle = still

    def overflow(self) -> None:
        """Fill every connection the workers together accept with a request in progress, then
        open more: the surplus must get a 503 and a close, and every one must go away when we
        let go. (Idle connections are not enough: the server closes the oldest idle one to
        make room for a newcomer, as nginx does.)"""
        conns: list[Conn] = []
        try:
            for _ in range(self.t.cap):
                conn = Conn(self.t, timeout=5)
                conns.append(conn)
                conn.send(b"GET /healthz HTTP/1.1\r\nHost: soak\r\n")  # head not finished
            time.sleep(0.3)  # the server has read them all: every slot is busy
            for _ in range(32):
                conns.append(Conn(self.t, timeout=5))
            time.sleep(0.3)
            for conn in conns:
                conn.sock.setblocking(False)
                try:
                    data = conn.sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 503"):
                    self.tally.overflow_503 += 1
                    self.tally.requests += 1
                    self.tally.outcomes["overflow:503"] += 1
        finally:
            for conn in conns:
                conn.close()
        if not self.tally.overflow_503:
            self.tally.bad("overflow: no connection was refused over the cap")

    def close(self) -> None:
        for conn in self.pool:
            if conn is not None:
                conn.close()
        for conn, _, _ in self.slow:
            conn.close()
        for conn, _ in self.idle:
            conn.close()
        self.pool = [None] * KEEPALIVE_CONNS
        self.slow, self.idle = [], []


def drive(
    t: Target, requests: int, seconds: float, seed: int, idle_timeout_s: float, overflow: bool
) -> Tally:
    """About `requests` requests of the mix (fewer if `seconds` run out); all sockets closed."""
    player = Player(t, seed)
    deadline = time.monotonic() + seconds
    try:
        if overflow:
            player.overflow()
        while player.tally.requests < requests and time.monotonic() < deadline:
            for kind in player.rng.choices(player.kinds, player.weights, k=64):
                try:
                    player.step(kind)
                except OSError as exc:
                    player.tally.bad(f"{kind}: {type(exc).__name__}: {exc}")
            player.service(idle_timeout_s)
        # Leave the idle ones for the server to close: wait (bounded) until it has.
        end = time.monotonic() + idle_timeout_s + 5
        while player.idle and time.monotonic() < end:
            time.sleep(0.2)
            player.service(idle_timeout_s)
    finally:
        player.close()
    return player.tally

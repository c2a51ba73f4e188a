"""A fault-injecting HTTP/1.1 proxy on loopback for the fill tests: real sockets, port 0,
between the fill client and a real `edgeflix origin serve` or appliance. The fault can be
switched while a test runs: pass-through, refuse connections, stall (before the head or
mid-body), reset mid-body (RST), trickle, flip a body byte, answer 500/503, close after the
head, lie in Content-Length.

Responses are relayed one at a time (head, then Content-Length body bytes), so body faults
land at a chosen byte of a chosen response; keep-alive still works through it. A fault can
be limited to paths containing `match` and to the next `times` responses.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

PASS = "pass"
REFUSE = "refuse"  # nothing listens: connect() gets ECONNREFUSED
STALL_HEAD = "stall_head"  # read the request, answer nothing
STALL_BODY = "stall_body"  # the head and `after` body bytes, then silence
RESET = "reset"  # the head and `after` body bytes, then RST
TRICKLE = "trickle"  # the head, then the body at `rate` bytes/s
FLIP = "flip"  # the body with byte `after` XOR 0xFF
STATUS = "status"  # `status` with an empty body, upstream not asked
CLOSE_AFTER_HEAD = "close_after_head"  # the head, then FIN
WRONG_LENGTH = "wrong_length"  # Content-Length + `delta`, the real body, then FIN

_BODY_FAULTS = {STALL_BODY, RESET, TRICKLE, FLIP, CLOSE_AFTER_HEAD, WRONG_LENGTH}


@dataclass(frozen=True)
class Fault:
    kind: str = PASS
    after: int = 0  # body byte where a mid-body fault strikes
    rate: float = 64.0  # trickle speed, bytes/s
    status: int = 503
    delta: int = 0
    match: str = ""  # only requests whose target contains this
    times: int | None = None  # only the next N matching responses (None: all)
    retry_after: int | None = None  # a Retry-After on STATUS answers


@dataclass
class _State:
    fault: Fault = field(default_factory=Fault)
    left: int | None = None
    applied: int = 0
    requests: list[str] = field(default_factory=list)
    connections: int = 0


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").rstrip("/").rpartition(":")
        self.upstream = (host, int(port))
        self._lock = threading.Lock()
        self._state = _State()
        self._stop = threading.Event()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    # -- control ------------------------------------------------------------------------------

    def set(self, fault: Fault) -> None:
        """Switch the fault now; connections in the middle of a response see it next time."""
        with self._lock:
            self._state.fault, self._state.left, self._state.applied = fault, fault.times, 0
        if fault.kind == REFUSE:
            self._close_listener()
        elif self._listener is None:
            self._listener = self._listen(self.port)

    @property
    def applied(self) -> int:
        with self._lock:
            return self._state.applied

    @property
    def requests(self) -> list[str]:
        with self._lock:
            return list(self._state.requests)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._state.connections

    def close(self) -> None:
        self._stop.set()
        self._close_listener()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        sock.settimeout(0.1)
        return sock

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self._state.connections += 1
                self._socks.add(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _take_fault(self, target: str) -> Fault:
        with self._lock:
            self._state.requests.append(target)
            fault = self._state.fault
            if fault.kind == PASS or fault.match not in target or self._state.left == 0:
                return Fault()
            if self._state.left is not None:
                self._state.left -= 1
            self._state.applied += 1
            return fault

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        client.settimeout(30)
        try:
            pending = b""
            while not self._stop.is_set():
                request, pending = _read_head(client, pending)
                if request is None:
                    return
                target = request.split(b" ", 2)[1].decode("latin-1")
                fault = self._take_fault(target)
                if fault.kind == STATUS:
                    extra = f"Retry-After: {fault.retry_after}\r\n" if fault.retry_after else ""
                    head = f"HTTP/1.1 {fault.status} Fault\r\nContent-Length: 0\r\n{extra}\r\n"
                    client.sendall(head.encode())
                    continue
                if fault.kind == STALL_HEAD:
                    self._stop.wait(3600)
                    return
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=30)
                    with self._lock:
                        self._socks.add(upstream)
                upstream.sendall(request)
                if not self._relay(upstream, client, fault):
                    return
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._socks.discard(sock)
                    sock.close()

    def _relay(self, upstream: socket.socket, client: socket.socket, fault: Fault) -> bool:
        """One response upstream → client through `fault`; False when the connection ends."""
        head, body = _read_head(upstream, b"")
        if head is None:
            return False
        length = _content_length(head)
        if length is None or fault.kind not in _BODY_FAULTS:
            client.sendall(head + body)
            if length is None:  # no framing we can follow: relay until the upstream closes
                while data := upstream.recv(65536):
                    client.sendall(data)
                return False
            _copy(upstream, client, length - len(body))
            return True
        if fault.kind == WRONG_LENGTH:
            head = _with_length(head, length + fault.delta)
        client.sendall(head)
        if fault.kind == CLOSE_AFTER_HEAD:
            return False
        sent = 0
        while sent < length:
            chunk = body or upstream.recv(min(65536, length - sent))
            body = b""
            if not chunk:
                return False
            if fault.kind in (STALL_BODY, RESET) and sent + len(chunk) > fault.after:
                client.sendall(chunk[: fault.after - sent])
                if fault.kind == RESET:
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return False
                self._stop.wait(3600)
                return False
            if fault.kind == FLIP and sent <= fault.after < sent + len(chunk):
                flipped = bytearray(chunk)
                flipped[fault.after - sent] ^= 0xFF
                chunk = bytes(flipped)
            if fault.kind == TRICKLE:
                for i in range(0, len(chunk), max(int(fault.rate / 4), 1)):
                    client.sendall(chunk[i : i + max(int(fault.rate / 4), 1)])
                    if self._stop.wait(0.25):
                        return False
            else:
                client.sendall(chunk)
            sent += len(chunk)
        return fault.kind != WRONG_LENGTH


def _read_head(sock: socket.socket, pending: bytes) -> tuple[bytes | None, bytes]:
    """A request or response head (through CRLF CRLF) and the bytes read past it."""
    buf = pending
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None, b""
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    return buf[:end], buf[end:]


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    if head.split(b" ", 2)[1] in (b"204", b"304"):
        return 0
    return None


def _with_length(head: bytes, length: int) -> bytes:
    lines = [
        b"Content-Length: %d" % length if line.lower().startswith(b"content-length:") else line
        for line in head.split(b"\r\n")
    ]
    return b"\r\n".join(lines)


def _copy(src: socket.socket, dst: socket.socket, count: int) -> None:
    while count > 0:
        data = src.recv(min(65536, count))
        if not data:
            raise ConnectionError("upstream closed mid-body")
        dst.sendall(data)
        count -= len(data)

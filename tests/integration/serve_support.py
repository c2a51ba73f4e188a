"""Helpers for the serving tests: build a title folder, start a server through the CLI and
wait for its `listening on URL` line, talk raw HTTP over loopback sockets."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from edgeflix import titlefiles


def make_title(folder: Path, title_id: str) -> Path:
    """A packaged-looking title (random media bytes, a real files.json) in `folder`."""
    (folder / "v0").mkdir(parents=True, exist_ok=True)
    (folder / "master.m3u8").write_text("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nv0/i.m3u8\n")
    (folder / "manifest.mpd").write_text("<MPD/>\n")
    (folder / "v0" / "init.mp4").write_bytes(os.urandom(1500))
    (folder / "v0" / "seg1.m4s").write_bytes(os.urandom(300_000))
    (folder / "poster.jpg").write_bytes(os.urandom(2000))
    entries = titlefiles.scan(folder)
    model = titlefiles.TitleFiles(
        id=title_id,
        title=title_id,
        duration=4.0,
        segment_seconds=4.0,
        created="2026-01-01T00:00:00Z",
        renditions=(),
        files=tuple(entries),
        total_bytes=sum(e.size for e in entries),
    )
    (folder / "files.json").write_bytes(titlefiles.render(model))
    return folder


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.urls["listening"]

    @property
    def addr(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)


def start(
    args: list[str],
    want: tuple[str, ...],
    env: dict[str, str] | None = None,
    stderr: IO[bytes] | None = None,
) -> Server:
    """Run `edgeflix ARGS` and wait (bounded) for a `<word> on URL` line per word in `want`;
    `stderr` (a file) captures the server's log when a test reads it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", *args],
        stderr=stderr,
        stdout=subprocess.PIPE,
        bufsize=0,  # unbuffered: select() must see every line, none hidden in a buffer
        env={**os.environ, **(env or {})},
    )
    server = Server(proc)
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while set(want) - set(server.urls):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        line = proc.stdout.readline().decode() if ready else ""
        if not line:
            server.stop()
            raise AssertionError(f"edgeflix {' '.join(args)} did not start")
        word, _, url = line.strip().partition(" on ")
        if url:
            server.urls[word] = url
    return server


@contextmanager
def serving_origin(store: Path) -> Iterator[Server]:
    """`edgeflix origin serve` on `store` at a free loopback port, its log in
    `store/origin.log` (an unread pipe could fill and stall the origin under load)."""
    with (store / "origin.log").open("wb") as log:
        server = start(["origin", "serve", "--store", str(store), "--listen", "127.0.0.1:0"],
                       ("listening",), stderr=log)  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


def connect(addr: tuple[str, int], timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(addr, timeout=timeout)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10) -> tuple[bytes, bool]:
    """What arrives until the server closes; closed is False when `timeout` passed first."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return b"".join(chunks), True
        except TimeoutError:
            break
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
    return b"".join(chunks), False


def recv_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything until the server closes (bounded by `timeout`)."""
    return read_until_closed(sock, timeout)[0]


def raw(addr: tuple[str, int], request: bytes, timeout: float = 10) -> bytes:
    with connect(addr, timeout) as sock:
        sock.sendall(request)
        return recv_all(sock, timeout)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def read_response(sock: socket.socket, buf: bytearray, head_only: bool = False) -> Response:
    """One response from a keep-alive socket (Content-Length framed); leftovers stay in buf."""
    sock.settimeout(10)
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed mid-response: {bytes(buf)!r}")
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(buf) < length:
        data = sock.recv(65536)
        if not data:
            raise AssertionError("connection closed mid-body")
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return Response(int(lines[0].split(" ")[1]), headers, body)

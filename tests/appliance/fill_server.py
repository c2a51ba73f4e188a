"""A scripted HTTP/1.1 server on loopback for the fill transport and stream tests: each
accepted connection is handed to a handler function that reads requests and writes whatever
bytes the test wants (well-formed, truncated, stalled...). Real sockets, port 0."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Handler = Callable[[socket.socket, int], None]  # (client socket, connection number)


def read_request(sock: socket.socket, limit: int = 65536) -> dict[str, str] | None:
    """One request head as {":target": ..., "range": ..., ...}; None if the client closed."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        if not data:
            return None
        buf += data
        assert len(buf) < limit
    lines = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = {":target": lines[0].split(" ")[1]}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields


class ScriptedServer:
    def __init__(
        self, handler: Handler, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.handler = handler
        self.tls = tls
        self.listener = socket.create_server((host, 0))
        self.listener.settimeout(0.2)
        scheme = "https" if tls else "http"
        self.port = self.listener.getsockname()[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.connections = 0
        self.requests: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(
                target=self._serve, args=(sock, self.connections), daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket, number: int) -> None:
        sock.settimeout(10)
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            self.handler(sock, number)
        except OSError:
            pass  # the client went away: fine for a scripted peer
        finally:
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self.listener.close()
        for thread in self._threads:
            thread.join(5)


@contextmanager
def scripted(handler: Handler, tls: ssl.SSLContext | None = None) -> Iterator[ScriptedServer]:
    server = ScriptedServer(handler, tls)
    try:
        yield server
    finally:
        server.close()


def serve_files(
    files: dict[str, bytes], server_log: list[dict[str, str]], close_after: int = 1000
) -> Handler:
    """A well-behaved keep-alive file server with Range support (one open-ended range)."""

    def handler(sock: socket.socket, _: int) -> None:
        for _ in range(close_after):
            req = read_request(sock)
            if req is None:
                return
            server_log.append(req)
            body = files.get(req[":target"])
            if body is None:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            start = int(req["range"][6:-1]) if "range" in req else 0
            if start:
                head = (
                    f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body) - start}\r\n"
                    f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n\r\n"
                )
            else:
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body[start:])

    return handler

"""An origin's `GET /titles` on loopback that counts its reads: tests change what it lists
(`titles`, or a raw `body` such as one no manager can parse) and how slowly it answers
(`delay_s`; a hung origin is a long one, released when the origin stops) while a manager
reads it."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class CatalogueOrigin(BaseHTTPRequestHandler):
    titles: ClassVar[list[str]] = []
    body: bytes | None = None
    reads = 0
    delay_s = 0.0
    stopped: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:
        type(self).reads += 1
        # Cut short when the origin stops: no answer left hanging past the test.
        type(self).stopped.wait(type(self).delay_s)
        body = type(self).body
        if body is None:
            listed = [{"id": t, "digest": "d", "total_bytes": 10} for t in self.titles]
            body = json.dumps({"titles": listed}).encode()
        with contextlib.suppress(OSError):  # the manager gave up on a hung answer
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def origin(*titles: str) -> Iterator[tuple[str, type[CatalogueOrigin]]]:
    """The origin's URL and its handler class (`reads`, `titles`, `body`, `delay_s`)."""
    stopped = threading.Event()
    attrs = {"titles": list(titles), "reads": 0, "delay_s": 0.0, "body": None}
    handler = type("Origin", (CatalogueOrigin,), {**attrs, "stopped": stopped})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        stopped.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

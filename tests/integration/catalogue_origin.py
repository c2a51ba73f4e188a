"""An origin's `GET /titles` on loopback that counts its reads: tests change what it lists
(`titles`) and how slowly it answers (`delay_s`) while a manager reads it."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class CatalogueOrigin(BaseHTTPRequestHandler):
    titles: ClassVar[list[str]] = []
    reads = 0
    delay_s = 0.0

    def do_GET(self) -> None:
        type(self).reads += 1
        time.sleep(type(self).delay_s)
        listed = [{"id": t, "digest": "d", "total_bytes": 10} for t in self.titles]
        body = json.dumps({"titles": listed}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def origin(*titles: str) -> Iterator[tuple[str, type[CatalogueOrigin]]]:
    """The origin's URL and its handler class (`reads`, `titles`, `delay_s`)."""
    attrs = {"titles": list(titles), "reads": 0, "delay_s": 0.0}
    handler = type("Origin", (CatalogueOrigin,), attrs)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

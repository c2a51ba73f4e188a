"""A worker whose view of storage cannot be refreshed (the index's own disk failing: SQLite
raises on every look) keeps answering from what it knows and keeps enforcing its timeouts,
in a real server process on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.integration.serve_support import make_title, read_until_closed

SERVER = textwrap.dedent(
    """
    import sqlite3, sys
    from pathlib import Path
    from edgeflix.http.runner import serve_forever
    from edgeflix.http.server import ServerSettings, bind, url_of
    from edgeflix.log import setup_logging
    from origin.server import OriginSite

    setup_logging()
    looks = 0

    def refresh() -> object:
        global looks
        looks += 1
        if looks > 1:  # the first look works, every later one fails as a dead disk does
            raise sqlite3.OperationalError("disk I/O error")
        return 1

    sock = bind("127.0.0.1", 0)
    settings = ServerSettings(header_timeout_s=0.5, keepalive_timeout_s=0.5,
                              storage_check_s=0.01)
    serve_forever(OriginSite(Path(sys.argv[1])), settings, sock,
                  ready=lambda: print(url_of(sock), flush=True), refresh=refresh)
    """
)


def test_failing_storage_checks_neither_stop_answers_nor_timeouts(tmp_path: Path) -> None:
    make_title(tmp_path / "titles" / "film", "film")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().strip().removeprefix("http://").split(":")
        addr = (host, int(port))
        time.sleep(0.3)  # the sweeper has looked at storage by now: every look fails from here
        expected = (tmp_path / "titles/film/v0/seg1.m4s").read_bytes()
        for _ in range(3):  # answers keep coming, each from the view it had
            with socket.create_connection(addr, timeout=5) as sock:
                sock.sendall(b"GET /titles/film/v0/seg1.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
                # Keep-alive: the server must close it at its 0.5 s idle timeout.
                started = time.monotonic()
                data, closed = read_until_closed(sock, timeout=5)
                assert closed and time.monotonic() - started < 4, "idle timeout not enforced"
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(expected)
        with socket.create_connection(addr, timeout=5) as sock:  # never sends a request
            data, closed = read_until_closed(sock, timeout=5)
            assert closed, "header timeout not enforced"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert err.count("event=storage.check_failed") == 1, err  # once, not once per look
    assert "Traceback" not in err

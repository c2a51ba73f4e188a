"""The server's remembered routes (a repeated request head skips parsing and routing) never
outlive what they were decided on: the index (rm, reload) and the file itself."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from tests.conftest import run_cli
from tests.integration.serve_support import connect, make_title, read_response, start
from tests.integration.test_appliance_serve_more import seed, write_config


def test_repeated_heads_follow_index_and_file_changes(tmp_path: Path) -> None:
    sources = {t: make_title(tmp_path / "src" / t, t) for t in ("bunny", "bikes")}
    config = write_config(tmp_path)
    for title, source in sources.items():
        seed(config, source, title)
    seg = (sources["bunny"] / "v0/seg1.m4s").read_bytes()
    poster = (sources["bikes"] / "poster.jpg").read_bytes()
    head = b"GET /titles/bunny/v0/seg1.m4s HTTP/1.1\r\nHost: x\r\nUser-Agent: p\r\n\r\n"
    other = b"GET /titles/bikes/poster.jpg HTTP/1.1\r\nHost: x\r\nUser-Agent: p\r\n\r\n"

    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    try:
        with connect(server.addr) as sock:
            buf = bytearray()
            # Pipelined: the same head four times, then HEAD and a conditional of the same path
            # (different bytes, so the full path answers them).
            etag = b""
            for i in range(4):
                sock.sendall(head)
                r = read_response(sock, buf)
                assert (r.status, r.body) == (200, seg), i
                etag = r.headers["etag"].encode()
            sock.sendall(head * 3 + other + head.replace(b"GET", b"HEAD", 1))
            for _ in range(3):
                assert (lambda r: (r.status, r.body))(read_response(sock, buf)) == (200, seg)
            assert (lambda r: (r.status, r.body))(read_response(sock, buf)) == (200, poster)
            r = read_response(sock, buf, head_only=True)
            assert r.status == 200 and r.headers["content-length"] == str(len(seg))
            cond = head.replace(b"\r\n\r\n", b"\r\nIf-None-Match: " + etag + b"\r\n\r\n")
            sock.sendall(cond)
            assert read_response(sock, buf).status == 304

            # The index alone says the file is gone (it is still on disk, as while a repair or
            # an rm is under way): the same bytes must now miss, so the remembered route was
            # dropped when the index changed.
            with sqlite3.connect(tmp_path / "index.sqlite") as db:
                db.execute("UPDATE files SET state = 'missing' WHERE title = 'bunny'")
            db.close()
            time.sleep(0.03)  # the server looks at the index every 10 ms at most
            sock.sendall(head)
            assert read_response(sock, buf).status == 404

            # The title leaves the index and its disks.
            run_cli(["appliance", "rm", "--config", str(config), "--title", "bunny"],
                    check=True, timeout=60)  # fmt: skip
            sock.sendall(head)
            assert read_response(sock, buf).status == 404
            sock.sendall(other)
            assert (lambda r: (r.status, r.body))(read_response(sock, buf)) == (200, poster)

            # Loaded again (new files, maybe on another disk): served again, whole and right.
            seed(config, sources["bunny"], "bunny")
            sock.sendall(head)
            r = read_response(sock, buf)
            assert (r.status, r.body) == (200, seg)
    finally:
        assert server.stop() == 0

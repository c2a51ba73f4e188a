"""The server's remembered routes (a repeated request head skips parsing and routing) never
outlive what they were decided on: the index (rm, reload) and the file itself."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import time
from pathlib import Path

import httpx

from edgeflix import titlefiles
from tests.conftest import run_cli
from tests.integration.daemon_support import poll
from tests.integration.serve_support import connect, make_title, read_response, start
from tests.integration.test_appliance_serve_more import on_disk, seed, write_config


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
        # The start's check of every file runs once serving; it would undo the index edit
        # below (the files are whole on disk): edit after it.
        done = poll(server, lambda doc: doc["daemon"]["startup_check"]["state"] == "done", 30)
        assert done is not None, "the start-up check did not end"
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


def _add_file(source: Path, rel: str, size: int) -> bytes:
    """Add a file to a made title and rewrite its files.json to list it."""
    data = os.urandom(size)
    (source / rel).write_bytes(data)
    model = titlefiles.read(source)[0]
    entries = titlefiles.scan(source)
    model = model.model_copy(
        update={"files": tuple(entries), "total_bytes": sum(e.size for e in entries)}
    )
    (source / "files.json").write_bytes(titlefiles.render(model))
    return data


def _requests_metric(admin: str, title: str) -> tuple[int, int]:
    text = httpx.get(admin + "/metrics", timeout=10).text
    found = [0, 0]
    for i, name in enumerate(("requests_total", "response_bytes_total")):
        m = re.search(
            rf'^edgeflix_appliance_{name}{{status="200",title="{title}"}} (\d+)$', text, re.M
        )
        found[i] = int(m.group(1)) if m else 0
    return found[0], found[1]


def test_repeated_gets_short_writes_truncation_and_counts(tmp_path: Path) -> None:
    """The inline send of a repeated plain GET: a body larger than the socket takes (the
    client reads late) resumes whole; a file truncated behind the daemon's back is a 404 on
    the very next request; every response is in /metrics."""
    source = make_title(tmp_path / "src" / "bunny", "bunny")
    big = _add_file(source, "v0/big.m4s", 8 << 20)
    config = write_config(tmp_path)
    seed(config, source, "bunny")
    head = b"GET /titles/bunny/v0/big.m4s HTTP/1.1\r\nHost: x\r\n\r\n"

    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    try:
        with connect(server.addr) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            buf = bytearray()
            for i in range(4):
                sock.sendall(head)
                time.sleep(0.05)  # the server fills the socket and must wait for writable
                r = read_response(sock, buf)
                assert (r.status, r.body == big) == (200, True), i
            deadline = time.monotonic() + 10
            while _requests_metric(server.urls["admin"], "bunny") != (4, 4 * len(big)):
                assert time.monotonic() < deadline, _requests_metric(server.urls["admin"], "bunny")
                time.sleep(0.1)

            os.truncate(on_disk(tmp_path, "bunny", "v0/big.m4s"), 1000)
            sock.sendall(head)
            assert read_response(sock, buf).status == 404
    finally:
        assert server.stop() == 0

"""A worker short of file descriptors: the daemon started under a low hard RLIMIT_NOFILE
lowers its connection cap to fit, so a crowd of connections beyond it gets 503s rather than
failed accepts, and the worker keeps serving (it used to spin on accept, then die)."""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from edgeflix.http.runner import FD_RESERVE
from edgeflix.http.server import ServerSettings
from tests.conftest import run_cli
from tests.integration.daemon_support import write_config
from tests.integration.serve_support import Server, connect, make_title, raw

LIMIT = 600


def until(cond: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"not true within {seconds} s"
        time.sleep(0.1)


def start_limited(config: Path, log: Path) -> Server:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))

    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", "appliance", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=limit,
        )
    server = Server(proc)
    assert proc.stdout is not None
    for _ in range(20):
        word, _, url = proc.stdout.readline().decode().strip().partition(" on ")
        if url:
            server.urls[word] = url
        if {"listening", "admin"} <= set(server.urls) or not word:
            break
    assert {"listening", "admin"} <= set(server.urls), log.read_text()
    return server


def rejected(server: Server) -> float:
    metrics = httpx.get(server.urls["admin"] + "/metrics", timeout=10).text
    return next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("edgeflix_appliance_rejected_connections_total")
    )


def test_a_crowd_beyond_the_descriptor_limit_gets_503_and_the_worker_lives(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    source = make_title(tmp_path / "src" / "bunny", "bunny")
    run_cli(["appliance", "load", "--config", str(config), "--title", "bunny", "--from",
             str(source)], check=True)  # fmt: skip
    log = tmp_path / "daemon.log"
    server = start_limited(config, log)
    cap = (LIMIT - FD_RESERVE - ServerSettings().open_files) // 2
    request = b"GET /titles/bunny/master.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    crowd: list[socket.socket] = []
    try:
        assert "serve.max_connections.lowered" in log.read_text()
        for _ in range(cap):  # each mid-request (an idle one would be closed to make room)
            crowd.append(connect(server.addr))
            crowd[-1].sendall(request[:20])
        time.sleep(0.5)  # the half heads reach the worker: every connection is busy
        for _ in range(LIMIT + 50 - cap):  # more connections than the worker has descriptors
            crowd.append(connect(server.addr))
        until(lambda: raw(server.addr, request).startswith(b"HTTP/1.1 503"), 15)
        for sock in crowd:
            sock.close()
        crowd.clear()
        until(lambda: raw(server.addr, request).startswith(b"HTTP/1.1 200"), 15)
        until(lambda: rejected(server) >= LIMIT + 50 - cap, 15)  # counters come by tick
        assert server.proc.poll() is None
        text = log.read_text()
        assert "worker.died" not in text and "Traceback" not in text
    finally:
        for sock in crowd:
            with contextlib.suppress(OSError):
                sock.close()
        server.stop()

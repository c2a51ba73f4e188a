"""Turning URL tokens on with SIGHUP takes effect for every request after the reload, on
connections opened before it too: a route the workers remembered while tokens were off
(server.py's fast routes) must not go on serving without a token. Real `appliance run`."""

from __future__ import annotations

import base64
import os
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import run_cli
from tests.integration.daemon_support import (
    load_spread_title,
    poll,
    start_daemon,
    status,
    write_config,
)
from tests.integration.serve_support import Server, connect, read_response

K1, K2 = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
PLAIN = "/titles/spread/master.m3u8"
GARBAGE = "/t/garbage/titles/spread/master.m3u8"  # no token check at all while tokens are off
CONNECTIONS = 8  # spread by the kernel over both workers


def _auth(tokens: str, *keys: tuple[str, str]) -> str:
    listed = ", ".join(f'{{ id = "{k}", secret = "{s}" }}' for k, s in keys)
    return f'[auth]\ntokens = "{tokens}"\nkeys = [ {listed} ]\n'


def _get(sock: socket.socket, buf: bytearray, path: str) -> int:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return read_response(sock, buf).status


def _signed_path(config: Path, key: str) -> str:
    out = run_cli(["appliance", "sign", "--config", str(config), "--title", "spread",
                   "--key", key], check=True).stdout.strip()  # fmt: skip
    return urlsplit(out).path


def _reload(server: Server, config: Path, auth: str, count: int) -> None:
    text = config.read_text()
    config.write_text(text[: text.index("[auth]")] + auth)
    os.kill(server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while status(server)["daemon"]["reloads"] < count:
        assert time.monotonic() < deadline, "the reload did not finish"
        time.sleep(0.05)
    assert status(server)["daemon"]["reload_error"] is None


def test_tokens_turned_on_by_sighup_guard_remembered_routes(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra=_auth("off", ("k1", K1), ("k2", K2)), workers=2)
    # No scrub: its writes to the index make the workers forget their routes anyway, which
    # hid the bug whenever a pass happened to fall between the requests and the reload.
    text = config.read_text()
    config.write_text(text.replace("[serve]", "scrub_bytes_per_s = 0\n[serve]", 1))
    load_spread_title(tmp_path, config)
    server = start_daemon(config)
    kept = [(connect(server.addr), bytearray()) for _ in range(CONNECTIONS)]
    try:
        # Started, and the start-up walk over: no more index writes. (Not health "ok": the
        # host's load average, which a busy CI box pushes up, makes that "degraded".)
        done = poll(server, lambda doc: doc["daemon"]["startup_check"]["state"] == "done", 30)
        assert done is not None
        for sock, buf in kept:
            for _ in range(3):  # the repeats take the remembered route
                assert _get(sock, buf, PLAIN) == 200
                assert _get(sock, buf, GARBAGE) == 200

        _reload(server, config, _auth("required", ("k1", K1), ("k2", K2)), 1)
        k1_path, k2_path = _signed_path(config, "k1"), _signed_path(config, "k2")
        for sock, buf in kept:
            assert _get(sock, buf, PLAIN) == 403
            assert _get(sock, buf, GARBAGE) == 403
            assert _get(sock, buf, k1_path) == 200
            assert _get(sock, buf, k1_path) == 200
        with connect(server.addr) as sock:
            assert _get(sock, bytearray(), PLAIN) == 403

        # Dropping a key is as immediate, on the same connections.
        _reload(server, config, _auth("required", ("k2", K2)), 2)
        for sock, buf in kept:
            assert _get(sock, buf, k1_path) == 403
            assert _get(sock, buf, k2_path) == 200
            assert _get(sock, buf, PLAIN) == 403
    finally:
        for sock, _ in kept:
            sock.close()
        assert server.stop() == 0

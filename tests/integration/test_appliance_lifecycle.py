"""The appliance daemon as a systemd service, on loopback: sd_notify READY/WATCHDOG/
RELOADING/STOPPING to a datagram socket the test binds, SIGHUP with a new URL-token key
(the new key works, the port never closes, a keep-alive connection survives), and SIGTERM
draining a large response in flight."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.status import exit_code
from tests.conftest import run_cli
from tests.integration.conftest import Notifications
from tests.integration.daemon_support import (
    load_spread_title,
    poll,
    start_daemon,
    status,
    write_config,
)
from tests.integration.serve_support import connect, make_title, read_response

K1, K2 = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))


def _auth(*keys: tuple[str, str]) -> str:
    listed = ", ".join(f'{{ id = "{k}", secret = "{s}" }}' for k, s in keys)
    return f'[auth]\ntokens = "required"\nkeys = [ {listed} ]\n'


def _signed_path(config: Path, key: str) -> str:
    out = run_cli(["appliance", "sign", "--config", str(config), "--title", "spread",
                   "--key", key], check=True).stdout.strip()  # fmt: skip
    return urlsplit(out).path


def _get(sock: socket.socket, buf: bytearray, path: str) -> int:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return read_response(sock, buf).status


def test_sd_notify_ready_watchdog_reload_stopping(tmp_path: Path, notify: Notifications) -> None:
    config = write_config(tmp_path)
    env = {"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "400000"}
    server = start_daemon(config, env)
    try:
        assert notify.wait_for("READY=1")
        assert notify.wait_for("WATCHDOG=1", count=3), notify.seen
        os.kill(server.proc.pid, signal.SIGHUP)
        assert notify.wait_for("RELOADING=1"), notify.seen
        assert notify.wait_for("READY=1", count=2), notify.seen
        assert "MONOTONIC_USEC=" in next(m for m in notify.seen if "RELOADING=1" in m)
    finally:
        code = server.stop()
    assert code == 0
    assert notify.wait_for("STOPPING=1", timeout=5), notify.seen


def test_sighup_new_key_keeps_port_and_connections(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra=_auth(("k1", K1)), workers=2)
    load_spread_title(tmp_path, config)
    server = start_daemon(config)
    try:
        old_path = _signed_path(config, "k1")
        kept, kept_buf = connect(server.addr), bytearray()
        assert _get(kept, kept_buf, old_path) == 200
        text = config.read_text().replace(_auth(("k1", K1)), _auth(("k1", K1), ("k2", K2)))
        config.write_text(text)
        new_path = _signed_path(config, "k2")
        probe, probe_buf = connect(server.addr), bytearray()
        assert _get(probe, probe_buf, new_path) == 403  # not yet: the daemon has the old keys

        os.kill(server.proc.pid, signal.SIGHUP)
        # Meanwhile the port takes every connection: it never closes during the reload.
        deadline = time.monotonic() + 15
        while status(server)["daemon"]["reloads"] < 1 and time.monotonic() < deadline:
            with connect(server.addr, timeout=5) as sock:
                buf = bytearray()
                assert _get(sock, buf, old_path) == 200
        doc = status(server)["daemon"]
        assert doc["reloads"] == 1 and doc["reload_error"] is None
        assert doc["keys"] == ["k1", "k2"]

        assert _get(kept, kept_buf, new_path) == 200  # the old keep-alive connection lives on
        assert _get(probe, probe_buf, new_path) == 200
        for _ in range(4):  # every worker has the new key, whichever takes the connection
            with connect(server.addr) as sock:
                assert _get(sock, bytearray(), new_path) == 200
        kept.close()
        probe.close()
    finally:
        assert server.stop() == 0


def _refused_within(addr: tuple[str, int], timeout: float) -> bool:
    """Draining: the listening socket closes, so new connections are refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(addr, timeout=1).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_drains_a_large_response_in_flight(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    folder = tmp_path / "src" / "big"
    (folder / "v0").mkdir(parents=True)
    size = 48 * 1024 * 1024
    (folder / "v0" / "huge.m4s").write_bytes(os.urandom(1024) * (size // 1024))
    make_title(folder, "big")
    run_cli(["appliance", "load", "--config", str(config), "--title", "big", "--from",
             str(folder)], check=True)  # fmt: skip
    server = start_daemon(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # keep it in flight
    try:
        sock.settimeout(10)
        sock.connect(server.addr)
        sock.sendall(b"GET /titles/big/v0/huge.m4s HTTP/1.1\r\nHost: t\r\n\r\n")
        got = sock.recv(256 * 1024)
        assert got.startswith(b"HTTP/1.1 200")
        os.kill(server.proc.pid, signal.SIGTERM)
        assert _refused_within(server.addr, 5), "still accepting after SIGTERM"
        _head, _, body = got.partition(b"\r\n\r\n")
        received = len(body)
        deadline = time.monotonic() + 20
        while received < size and time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
        assert received == size, f"drain cut the response at {received} of {size} bytes"
        assert server.proc.wait(20) == 0
    finally:
        sock.close()
        server.stop()


def test_status_matches_the_cli_document(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    server = start_daemon(config)
    try:
        doc = poll(server, lambda d: d["health"]["state"] in ("ok", "degraded", "failing"), 5)
        assert doc is not None
        # Exit 3 (degraded) or 4 (failing) on a busy test machine: the document is the same.
        cli = run_cli(["appliance", "status", "--config", str(config), "--json"])
        offline = json.loads(cli.stdout)
        assert cli.returncode == exit_code(offline["health"]["state"]), cli.stderr
        assert set(offline) <= set(doc)  # the daemon adds its own section, nothing less

        def disks(d: dict[str, Any]) -> list[tuple[str, str, str | None]]:
            return [(x["path"], x["kind"], x["mount"]) for x in d["profile"]["disks"]]

        assert disks(doc) == disks(offline)  # free bytes move; what the disks are does not
        assert doc["daemon"]["workers"] == 1
    finally:
        server.stop()


def test_a_reload_whose_workers_cannot_start_keeps_the_old_ones_serving(tmp_path: Path) -> None:
    """New serving settings roll the workers; when a new one cannot start (here the index
    went bad: a folder where it was), the daemon and its old workers go on serving, and
    the reload says it failed. It used to stop the whole daemon."""
    config = write_config(tmp_path, workers=2)
    load_spread_title(tmp_path, config)
    server = start_daemon(config)
    aside = tmp_path / "aside"
    aside.mkdir()
    try:
        path = "/titles/spread/master.m3u8"
        with connect(server.addr) as sock:
            assert _get(sock, bytearray(), path) == 200
        _swap_index_for_a_folder(tmp_path, aside)
        config.write_text(
            config.read_text().replace("[serve]", "[serve]\nkeepalive_timeout_s = 30")
        )
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while status(server)["daemon"]["reload_error"] is None:
            assert time.monotonic() < deadline, "the reload did not report its failure"
            time.sleep(0.2)
        assert "failed to start" in status(server)["daemon"]["reload_error"]
        assert server.proc.poll() is None
        for _ in range(4):  # both old workers, whichever takes the connection
            with connect(server.addr) as sock:
                assert _get(sock, bytearray(), path) == 200
    finally:
        code = server.stop()
        if (tmp_path / "index.sqlite").is_dir():
            (tmp_path / "index.sqlite").rmdir()
        for index in aside.iterdir():
            if index.is_file():
                index.rename(tmp_path / index.name)
    assert code == 0


def _swap_index_for_a_folder(home: Path, aside: Path) -> None:
    """Move the index (database, WAL, shared memory; not the locks) into `aside` and put a
    folder in its place, so a new worker cannot open one. The daemon's own writers may make
    a new, empty index between the move and the folder; that one is moved away too."""
    for attempt in range(50):
        into = aside if attempt == 0 else aside / f"made-{attempt}"
        into.mkdir(exist_ok=True)
        for index in home.glob("index.sqlite*"):
            if index.is_file():
                index.rename(into / index.name)
        try:
            (home / "index.sqlite").mkdir()
            return
        except FileExistsError:
            continue
    raise AssertionError("the daemon kept making a new index")

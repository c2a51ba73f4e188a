"""The appliance daemon's serving workers under faults and reloads, on real processes: a
stopped worker is found silent and replaced while a busy one serving a slow download is left
alone; a reload that changes only `serve.workers` starts or drains the difference and touches
no running worker; workers replaced by a reload keep the longer shutdown_timeout_s; the
watchdog keeps pinging while a reload rolls the workers."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
from pathlib import Path

import psutil

from appliance.supervisor import WORKER_SILENT_S
from tests.conftest import run_cli
from tests.integration.conftest import Notifications
from tests.integration.daemon_support import poll, status, write_config
from tests.integration.serve_support import Server, connect, make_title, read_response, start

BIG = 48 * 1024 * 1024


def _load_big_title(tmp: Path, config: Path) -> None:
    folder = tmp / "src" / "big"
    (folder / "v0").mkdir(parents=True)
    (folder / "v0" / "huge.m4s").write_bytes(os.urandom(1024) * (BIG // 1024))
    make_title(folder, "big")
    run_cli(["appliance", "load", "--config", str(config), "--title", "big", "--from",
             str(folder)], check=True)  # fmt: skip


def _start(config: Path, log: Path, env: dict[str, str] | None = None) -> Server:
    with log.open("wb") as fh:
        return start(["appliance", "run", "--config", str(config)], ("listening", "admin"),
                     env, stderr=fh)  # fmt: skip


def _workers(server: Server) -> list[psutil.Process]:
    """The daemon's serving workers that have not exited (a zombie waits to be reaped)."""
    found = []
    for child in psutil.Process(server.proc.pid).children():
        try:
            if "appliance.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie
            continue
    return found


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _slow_download(addr: tuple[str, int]) -> tuple[socket.socket, int]:
    """A download of the big file kept in flight (a small receive buffer, read by the test);
    returns the socket and the body bytes already received."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(addr)
    sock.sendall(b"GET /titles/big/v0/huge.m4s HTTP/1.1\r\nHost: t\r\n\r\n")
    got = sock.recv(256 * 1024)
    assert got.startswith(b"HTTP/1.1 200"), got[:100]
    return sock, len(got.partition(b"\r\n\r\n")[2])


def _read_rest(sock: socket.socket, received: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while received < BIG and time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += len(chunk)
    return received


def _serving_pid(server: Server, sock: socket.socket) -> int:
    """The worker that holds the client connection `sock`."""
    port = sock.getsockname()[1]
    for proc in _workers(server):
        for conn in proc.net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == port:
                return proc.pid
    raise AssertionError("no worker holds the connection")


def _get(addr: tuple[str, int], path: str, timeout: float) -> int:
    with connect(addr, timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        buf = bytearray()
        return read_response(sock, buf).status


def test_a_stopped_worker_is_replaced_and_a_busy_one_left_alone(tmp_path: Path) -> None:
    """SIGSTOP one of two workers: it used to keep its share of new connections, each hanging
    forever, while /status said 2 workers. Now it is killed and replaced once silent for
    WORKER_SILENT_S; the other, serving a download read slowly all that time, is not."""
    config = write_config(tmp_path, workers=2)
    _load_big_title(tmp_path, config)
    log = tmp_path / "daemon.log"
    server = _start(config, log)
    stopped = 0
    sock, received = None, 0
    try:
        sock, received = _slow_download(server.addr)
        busy = _serving_pid(server, sock)
        stopped = next(p.pid for p in _workers(server) if p.pid != busy)
        os.kill(stopped, signal.SIGSTOP)
        deadline = time.monotonic() + WORKER_SILENT_S + 15
        while not _gone(stopped):
            assert time.monotonic() < deadline, "the stopped worker is still in place"
            received += len(sock.recv(16 * 1024))  # slowly: the busy worker's loop turns
            time.sleep(0.2)
        assert received < BIG, "the download ended early: the test proved nothing"
        assert _read_rest(sock, received) == BIG
        pids = [p.pid for p in _workers(server)]
        assert busy in pids and stopped not in pids and len(pids) == 2
        for _ in range(20):  # none lands on a hung worker any more
            assert _get(server.addr, "/titles/big/master.m3u8", timeout=3) == 200
        assert status(server)["daemon"]["workers"] == 2
        assert log.read_text().count("event=worker.hung") == 1
    finally:
        if sock is not None:
            sock.close()
        if stopped and not _gone(stopped):
            os.kill(stopped, signal.SIGCONT)
        assert server.stop() == 0


def _set_serve(config: Path, **values: object) -> None:
    """Rewrite keys of [serve] in the config written by write_config."""
    lines = config.read_text().splitlines()
    for key, value in values.items():
        text = f"{key} = {value}"
        found = [i for i, line in enumerate(lines) if line.startswith(f"{key} =")]
        if found:
            lines[found[0]] = text
        else:
            lines.insert(lines.index("[serve]") + 1, text)
    config.write_text("\n".join(lines) + "\n")


def _reloaded(server: Server, count: int) -> dict[str, object]:
    doc = poll(server, lambda d: d["daemon"]["reloads"] >= count, 60)
    assert doc is not None, "the reload did not finish"
    daemon: dict[str, object] = doc["daemon"]
    assert daemon["reload_error"] is None
    return daemon


def test_a_new_worker_count_leaves_the_running_workers_alone(tmp_path: Path) -> None:
    """SIGHUP with only `serve.workers` changed used to replace every worker (and drain each
    one's connections); now the running ones stay and only the difference changes."""
    config = write_config(tmp_path, workers=2)
    server = _start(config, tmp_path / "daemon.log")
    try:
        first = {p.pid for p in _workers(server)}
        assert len(first) == 2
        _set_serve(config, workers=3)
        os.kill(server.proc.pid, signal.SIGHUP)
        daemon = _reloaded(server, 1)
        assert daemon["workers"] == 3 and daemon["draining_workers"] == 0
        now = {p.pid for p in _workers(server)}
        assert first <= now and len(now) == 3

        _set_serve(config, workers=1)
        os.kill(server.proc.pid, signal.SIGHUP)
        daemon = _reloaded(server, 2)
        assert daemon["workers"] == 1
        deadline = time.monotonic() + 20
        while len(_workers(server)) > 1:  # the two drained ones exit
            assert time.monotonic() < deadline, "drained workers did not exit"
            time.sleep(0.1)
        assert {p.pid for p in _workers(server)} <= first  # one that ran from the start
    finally:
        assert server.stop() == 0


def test_a_replaced_worker_keeps_the_longer_shutdown_timeout(tmp_path: Path) -> None:
    """A reload that shortens shutdown_timeout_s (30 s to 1 s) replaces the worker; the old
    one drains a large download with its 30 s. SIGTERM then used to SIGKILL it after the new
    1 s (+2), cutting the download; the supervisor now waits for the longer of the two."""
    config = write_config(tmp_path, workers=1, shutdown_timeout_s=30)
    _load_big_title(tmp_path, config)
    server = _start(config, tmp_path / "daemon.log")
    sock = None
    try:
        sock, received = _slow_download(server.addr)
        _set_serve(config, shutdown_timeout_s=1, keepalive_timeout_s=30)
        os.kill(server.proc.pid, signal.SIGHUP)
        daemon = _reloaded(server, 1)
        assert daemon["draining_workers"] == 1  # the old one, still sending
        os.kill(server.proc.pid, signal.SIGTERM)
        time.sleep(5)  # past the new bound (1 s + slack): the old worker must still be there
        assert _read_rest(sock, received) == BIG, "the drain was cut"
        assert server.proc.wait(30) == 0
    finally:
        if sock is not None:
            sock.close()
        server.stop()


def test_the_watchdog_pings_while_a_reload_rolls_the_workers(
    tmp_path: Path, notify: Notifications
) -> None:
    """The roll used to run with the supervisor loop blocked: no WATCHDOG=1 from RELOADING=1
    to READY=1, a second or more per worker (systemd kills a unit silent for WatchdogSec)."""
    config = write_config(tmp_path, workers=6)
    env = {"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "400000"}
    server = _start(config, tmp_path / "daemon.log", env)
    try:
        assert notify.wait_for("READY=1")
        assert notify.wait_for("WATCHDOG=1", count=2)
        _set_serve(config, keepalive_timeout_s=30)  # a new worker spec: every worker rolls
        os.kill(server.proc.pid, signal.SIGHUP)
        assert notify.wait_for("READY=1", count=2), notify.seen
        seen = notify.timed()
        begin = next(t for t, m in seen if "RELOADING=1" in m)
        end = [t for t, m in seen if "READY=1" in m][1]
        pings = [t for t, m in seen if m == "WATCHDOG=1" and begin < t < end]
        assert end - begin > 1.0, "the roll was too quick to tell"
        stamps = [begin, *pings, end]
        gap = max(b - a for a, b in itertools.pairwise(stamps))
        assert len(pings) >= 2 and gap < 1.5, (len(pings), gap, end - begin)
        _reloaded(server, 1)
    finally:
        assert server.stop() == 0

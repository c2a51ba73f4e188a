"""Signals a fleet manager must outlive or stop cleanly on, on real `edgeflix fleet serve`
processes: SIGHUP (`kill -HUP` meant for an appliance, a closed terminal) is one log line and
the manager keeps running; Ctrl-C at any moment of start-up stops what had started, without
a traceback."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.serve_support import start
from tests.integration.test_fleet_audit import FLEET_TOML, children, gone, planner_of

# What a manager killed or torn down mid-start left on stderr before the fixes.
NOISE = ("Traceback", "Task exception", "invalid state", "leaked", "resource_tracker")


def _first_plan(http: str) -> None:
    for _ in range(300):
        if httpx.get(http + "/plan", timeout=10).json()["version"]:
            return
        time.sleep(0.1)
    raise AssertionError("no first plan")


def test_sighup_is_one_line_and_the_manager_keeps_running(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    log_path = tmp_path / "fleet.log"
    with log_path.open("wb") as log:
        server = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=log)
    try:
        planner = planner_of(server)
        _first_plan(server.urls["http"])  # the planner is up and has planned once
        helpers = children(server.proc.pid)  # the planner and the resource tracker
        assert planner in helpers and len(helpers) == 2, helpers
        os.kill(server.proc.pid, signal.SIGHUP)  # `kill -HUP <manager>`
        time.sleep(0.5)
        # A closed terminal: the whole process group (start() leaves the manager in the
        # test's own group: each of its processes is sent it instead).
        for pid in (server.proc.pid, *helpers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        time.sleep(1.5)
        assert server.proc.poll() is None, "SIGHUP killed the manager"
        assert not gone(planner, timeout=0.1), "SIGHUP killed the planner"
        assert httpx.get(server.urls["http"] + "/plan", timeout=10).status_code == 200
    finally:
        rc = server.stop(60)
    err = log_path.read_text()
    assert rc == 0, err
    assert err.count("event=reload.unsupported") == 2, err
    assert "event=fleet.stopped" in err, err  # soft state saved, gRPC given its grace
    assert not [n for n in NOISE if n in err], err
    assert gone(planner)


def _interrupt_during_start_up(folder: Path, delay: float) -> tuple[int | None, str]:
    """Start a manager on a fresh database, send SIGINT `delay` s after it logs its first
    key rotation (just before its listeners and planner start), and return its exit code
    and stderr."""
    folder.mkdir()
    config = folder / "fleet.toml"
    config.write_text(FLEET_TOML.format(db=folder / "fleet.sqlite"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", "fleet", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # As from a terminal: a test run in a non-interactive shell's `&` job would pass on
        # SIGINT ignored, and Python leaves an ignored SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    head = b""
    deadline = time.monotonic() + 60
    try:
        while b"event=fleet.keys_rotated" not in head:
            ready, _, _ = select.select([proc.stderr], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(proc.stderr.fileno(), 65536) if ready else b""
            assert chunk, f"the manager did not start: {head.decode()}"
            head += chunk
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    leftovers = [pid for pid in _group(proc.pid) if not gone(pid)]
    assert not leftovers, f"processes outlived the manager: {leftovers}"
    return proc.returncode, (head + rest).decode()


def _group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_ctrl_c_during_start_up_stops_cleanly_without_a_traceback(tmp_path: Path) -> None:
    # Spread over the start-up window (gRPC, planner, HTTP): each stop must be clean.
    for n, delay in enumerate((0.0, 0.01, 0.03, 0.06, 0.1, 0.15)):
        rc, err = _interrupt_during_start_up(tmp_path / f"m{n}", delay)
        assert not [w for w in NOISE if w in err], f"after {delay} s:\n{err}"
        if rc == 0:
            assert "event=fleet.stopped" in err, err
        else:
            assert rc == 130 and err.rstrip().endswith("error: interrupted"), err

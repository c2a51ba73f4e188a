"""A reduced soak (bench/soak.py with 20k requests per phase and a short fleet run): a real
appliance and a real fleet manager must end the run with the fds and threads they had after
warm-up, and RSS within a generous bound (a resource bound, not a speed assertion)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RSS_MB = 20.0  # four times the bench's flag: allocator noise must never fail this


@pytest.mark.slow
def test_reduced_soak_leaks_no_fds_and_little_memory() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--requests", "20000",
         "--fleet-calls", "4000", "--max-seconds", "240", "--json"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    report = json.loads(out.stdout)
    rows = [r for phase in report["phases"] for r in phase["rows"]] + report["fleet"]["rows"]
    assert {r["process"] for r in rows} >= {"supervisor", "worker0", "worker1", "fleet"}
    for phase in report["phases"]:
        assert phase["measured_requests"] >= 10_000, phase["phase"]
        assert phase["workers_unchanged"], phase["phase"]
        assert phase["outcomes"].get("overflow:503", 0) > 0  # the cap was really hit
    for row in rows:
        assert "rss_mb" in row, row
        assert row["fds"][1] <= row["fds"][0], row
        assert row["threads"][1] <= row["threads"][0], row
        assert row["rss_mb"][1] - row["rss_mb"][0] < RSS_MB, row
    assert report["fleet"]["db_end"]["wal_bytes"] < 8 << 20


def _soak_module() -> object:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import soak

        return soak
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_a_daemon_that_died_reads_as_gone_not_a_crash() -> None:
    """A daemon that dies mid-soak is a zombie until the bench reaps it: figures() says
    gone (the report's 'process gone') instead of a KeyError traceback."""
    soak: Any = _soak_module()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
            time.sleep(0.05)
        assert state == "Z"
        assert soak.figures(proc.pid) is None
    finally:
        proc.wait()


def _ours(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd:
                found.append(f"{entry}: {cmd}")
    return found


def test_sigterm_stops_the_soaks_daemons_and_removes_its_folder(tmp_path: Path) -> None:
    """`timeout` or a stopped CI job sends SIGTERM: the appliance the bench started stops
    and the temporary folder goes, as on Ctrl-C."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--requests", "20000",
         "--max-seconds", "60", "--skip-fleet"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any("appliance run" in p for p in _ours(str(tmp_path))):
                break
            time.sleep(0.2)
        assert any("appliance run" in p for p in _ours(str(tmp_path))), "appliance never ran"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(90)
        deadline = time.monotonic() + 30
        while _ours(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ours(str(tmp_path)) == []
        assert list(tmp_path.iterdir()) == []
        assert code == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""A reduced soak (bench/soak.py with 20k requests per phase and a short fleet run): a real
appliance and a real fleet manager must end the run with the fds and threads they had after
warm-up, and RSS within a generous bound (a resource bound, not a speed assertion)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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

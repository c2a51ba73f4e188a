"""The fill client after a crash, through the CLI: a run SIGKILLed after some files finished
staging, one of them damaged before the next run (same size, other bytes). The next run
must hash it again rather than trust it, so what it stores verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgeflix import titlefiles
from tests.conftest import run_cli
from tests.integration.serve_support import serving_origin
from tests.integration.test_fill import appliance_config, fill, listing, make_title, staged

MiB = 1 << 20


def test_a_staged_file_damaged_after_a_crash_is_not_stored(tmp_path: Path) -> None:
    store = tmp_path / "origin"
    make_title(store, "big", [MiB, 3 * MiB, 3 * MiB], seed=21)
    (tmp_path / "app").mkdir()
    config = appliance_config(tmp_path / "app")
    with serving_origin(store) as origin:
        # 16 Mbit/s over 2 streams: the 1 MiB file is staged after ~1 s, the rest take ~3 s.
        argv = ["appliance", "fill", "--config", str(config), "--from", origin.url]
        argv += ["--title", "big", "--cap-mbps", "16", "--streams", "2"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        done: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None and not done:
            done = staged(tmp_path / "app", "big", "*.m4s")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert done, "no file finished staging before the kill"
        assert "big" not in listing(config)
        victim = done[0]
        victim.write_bytes(bytes(victim.stat().st_size))  # zeros, the same size

        again = fill(config, "--from", origin.url, "--title", "big")
    assert again.returncode == 0, again.stderr
    assert "fill.staged_file_corrupt" in again.stderr
    assert json.loads(again.stdout)["titles"]["big"]["state"] == "ready"
    verify = run_cli(["appliance", "verify", "--config", str(config), "--json"], check=True)
    assert json.loads(verify.stdout)["problems"] == []
    model = titlefiles.read(store / "titles/big")[0]
    assert listing(config)["big"]["state"] == "ready" and model.total_bytes > 0

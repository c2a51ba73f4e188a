"""Ctrl-C on a fleet manager in a terminal: the signal reaches the whole process group,
the planner process (fleet/planning.py) included, and the manager must stop as on SIGTERM,
with no traceback from either process on the operator's terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.serve_support import Server
from tests.integration.test_fleet_audit import FLEET_TOML, gone, planner_of


def test_ctrl_c_stops_the_manager_and_its_planner_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    log = (tmp_path / "fleet.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", "fleet", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,  # a process group of its own, as a shell's job is
    )
    try:
        assert proc.stdout is not None
        server = Server(proc)
        while not {"grpc", "http"} <= set(server.urls):
            line = proc.stdout.readline().decode()
            assert line, "the manager did not start"
            word, _, url = line.strip().partition(" on ")
            server.urls[word] = url
        planner = planner_of(server)
        # A first round planned: the planner is up and waiting for the next one.
        for _ in range(300):
            if httpx.get(server.urls["http"] + "/plan", timeout=10).json()["version"]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no first plan")
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    err = (tmp_path / "fleet.log").read_text()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "event=fleet.stopped" in err
    assert gone(planner), "the planner outlived its manager"

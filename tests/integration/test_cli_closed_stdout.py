"""A daemon started with stdout closed (`edgeflix appliance run … >&-`, a service manager
that gives it none) starts and serves: what it would print is dropped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.daemon_support import write_config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_appliance_daemon_runs_with_stdout_closed(tmp_path: Path) -> None:
    port = _free_port()  # its "listening on" lines go nowhere: the test picks the port
    config = write_config(tmp_path)
    text = config.read_text().replace(
        '[admin]\nlisten = "127.0.0.1:0"', f'[admin]\nlisten = "127.0.0.1:{port}"'
    )
    assert f":{port}" in text
    config.write_text(text)
    with (tmp_path / "daemon.log").open("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", "appliance", "run", "--config", str(config)],
            stderr=log,
            preexec_fn=lambda: os.close(1),
        )
        try:
            answered = False
            deadline = time.monotonic() + 60
            while not answered and proc.poll() is None and time.monotonic() < deadline:
                try:
                    answered = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).is_success
                except httpx.HTTPError:
                    time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        log.seek(0)
        err = log.read()
    assert answered, err
    assert code == 0, err
    assert "Traceback" not in err, err

"""Ctrl-C at any moment of a short command, including while it still loads its libraries
(edgeflix/cli.py main's imports): one line on stderr, never a traceback, and the exit status
a shell shows as 130 (130 itself, or death by SIGINT)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time


def test_ctrl_c_while_a_command_starts_is_one_line() -> None:
    for i in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", "fleet", "ls", "--fleet", "http://127.0.0.1:1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.1 + i * 0.05)  # from the imports to the failed connection
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert out == ""
        if proc.returncode != 1:  # 1: it had already failed to reach the fleet manager
            assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
            assert err.strip() == "error: interrupted", err

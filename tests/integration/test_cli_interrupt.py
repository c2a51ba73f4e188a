"""Ctrl-C at any moment of a short command, including while it still loads its libraries
(edgeflix/cli.py main's imports): one line on stderr, never a traceback, and the exit status
a shell shows as 130 (130 itself, or death by SIGINT)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

# The project's own source folders: a frame there is a line of ours that ran.
_OURS = tuple(
    f'"{Path(__file__).resolve().parents[2] / name}/'
    for name in ("edgeflix", "appliance", "fleet", "origin")
)


def _in_python_start_up(err: str) -> bool:
    """A traceback with no frame of ours: the interpreter's own bootstrap (runpy reading the
    module, importlib checking its cache, the editable install's import finder that pip
    wrote into site-packages, the standard library modules that finder loads): no line of
    ours had run, nothing could catch it."""
    frames = [line for line in err.splitlines() if line.strip().startswith("File ")]
    return bool(frames) and not any(root in line for line in frames for root in _OURS)


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
        if "Traceback" in err and _in_python_start_up(err):
            continue  # a loaded host: the Ctrl-C came before the interpreter ran any of ours
        assert "Traceback" not in err, err
        assert out == ""
        if proc.returncode != 1:  # 1: it had already failed to reach the fleet manager
            assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)
            assert err.strip() == "error: interrupted", err


def test_a_ctrl_c_that_lands_where_python_cannot_raise_it_still_arrives() -> None:
    """In a weakref callback or a __del__ (the import machinery's module locks, during a
    command's start), Python prints a KeyboardInterrupt as "Exception ignored" and drops
    it; the CLI sends it again, so it stops the command as any Ctrl-C does."""
    code = (
        "import edgeflix.cli\n"
        "class Dying:\n"
        "    def __del__(self):\n"
        "        raise KeyboardInterrupt\n"
        "import time\n"
        "try:\n"
        "    Dying()\n"
        "    for _ in range(3000):\n"  # 30 s at most: a loaded box runs the resend late
        "        time.sleep(0.01)\n"
        "    print('lost')\n"
        "except KeyboardInterrupt:\n"
        "    print('arrived')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "arrived" and "Exception ignored" not in proc.stderr, proc

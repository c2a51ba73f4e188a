"""The daemons' single-instance lock (edgeflix/pidlock.py) between real processes: a second
taker is refused with the holder's pid, the lock goes with its holder however it dies, and
the processes a holder starts do not keep it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeflix import pidlock

HOLD = """
import sys, time
from pathlib import Path
from edgeflix import pidlock
lock = pidlock.take(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


def holder(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_taker_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "index.sqlite.daemon.lock"
    proc = holder(path)
    try:
        with pytest.raises(pidlock.LockHeld) as refused:
            pidlock.take(path)
        assert refused.value.pid == proc.pid and refused.value.path == path
    finally:
        proc.kill()
        proc.wait(10)


def test_the_lock_goes_with_a_holder_killed_outright(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite.lock"
    proc = holder(path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert path.exists()  # left behind, and no obstacle
    with pidlock.take(path) as lock:
        assert pidlock.holder(lock.path) == os.getpid()
    # Released: taken again at once.
    pidlock.take(path).release()


def test_a_child_started_by_the_holder_does_not_keep_it(tmp_path: Path) -> None:
    """A serving worker outliving a crashed daemon must not keep the next one out."""
    path = tmp_path / "x.lock"
    lock = pidlock.take(path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.release()
        deadline = time.monotonic() + 5
        taken = None
        while taken is None and time.monotonic() < deadline:
            try:
                taken = pidlock.take(path)
            except pidlock.LockHeld:
                time.sleep(0.05)
        assert taken is not None, "the child kept the lock"
        taken.release()
    finally:
        child.kill()
        child.wait(10)


def test_a_lock_file_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(pidlock.LockUnusable, match=r"^cannot open the lock file .*file/x\.lock"):
        pidlock.take(blocker / "x.lock")

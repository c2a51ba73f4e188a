"""Writers of one appliance index in separate processes at once: a load paused half-way keeps
its room from a CLI load of another title (and a killed one keeps nothing), and the first
commands on a new box all open the index they create together."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from appliance import config as appliance_config
from tests.appliance.storage_fixtures import make_title, storage_toml, title_bytes
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
SEGMENTS = [50_000] * 6  # ~300 kB a title; two do not fit under the cap below
CAP = 500_000

# Loads a title through the Store, pausing after its first bytes are copied (none of its
# files indexed yet) until FLAGS/go exists; FLAGS/paused says it got there.
PAUSED_LOAD = """
import sys, time
from pathlib import Path
from appliance import config as appliance_config
from appliance.store import Store
config, title, src, flags = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
store = Store(appliance_config.load(Path(config)).storage)
def pause(_: int) -> None:
    if not (flags / "paused").exists():
        (flags / "paused").touch()
        deadline = time.monotonic() + 60
        while not (flags / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
store.load(title, src, on_bytes=pause)
store.close()
print("loaded", title)
"""


def start_paused_load(config: Path, title: str, src: Path, flags: Path) -> subprocess.Popen[str]:
    flags.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSED_LOAD, str(config), title, str(src), str(flags)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (flags / "paused").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the load never got to its copy"
        time.sleep(0.02)
    return proc


def load(config: Path, title: str, src: Path) -> subprocess.CompletedProcess[str]:
    args = ["appliance", "load", "--config", str(config), "--title", title, "--from", str(src)]
    proc = run_cli(args, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def listed(config: Path) -> dict[str, str]:
    proc = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    return {t["id"]: t["state"] for t in json.loads(proc.stdout)}


def reserved_rows(config: Path) -> list[tuple[object, ...]]:
    index = appliance_config.load(config).storage.index
    with sqlite3.connect(index) as conn:
        return conn.execute("SELECT * FROM reserved").fetchall()


def stored_bytes(disk: Path) -> int:
    return sum(p.stat().st_size for p in (disk / "titles").rglob("*") if p.is_file())


def test_a_load_of_another_title_is_refused_while_one_fills_the_disk(tmp_path: Path) -> None:
    """Two loads of different titles at once, each fitting alone under the cap: the second,
    started while the first copies, is refused (as it is after the first is in), where it
    used to pass the room check too and both overfilled the disk."""
    config = storage_toml(tmp_path, max_bytes=CAP, tiers=("ssd",))
    a, b = (make_title(tmp_path / "src", t, SEGMENTS) for t in ("a", "b"))
    first = start_paused_load(config, "a", a, tmp_path / "flags")
    try:
        second = load(config, "b", b)
    finally:
        (tmp_path / "flags" / "go").touch()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0 and "loaded a" in out, err
    assert second.returncode == 1, second.stdout
    assert "error: title b does not fit on the ssd tier: needs " in second.stderr
    assert "free below its high watermark" in second.stderr
    assert listed(config) == {"a": "ready"}
    assert stored_bytes(tmp_path / "ssd0") == title_bytes(a) <= CAP
    assert reserved_rows(config) == []


def test_a_killed_load_keeps_no_room(tmp_path: Path) -> None:
    """A load killed half-way leaves its reservation behind, but not its title's lock: the
    next load finds all the room (and the killed load's leftovers reconciled away)."""
    config = storage_toml(tmp_path, max_bytes=CAP, tiers=("ssd",))
    a, b = (make_title(tmp_path / "src", t, SEGMENTS) for t in ("a", "b"))
    first = start_paused_load(config, "a", a, tmp_path / "flags")
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    assert len(reserved_rows(config)) == 1  # what it left
    second = load(config, "b", b)
    assert second.returncode == 0, second.stderr
    assert listed(config) == {"b": "ready"}
    assert reserved_rows(config) == []


# Opens (creates) the index once stdin closes, after saying it is ready: every process of a
# round is past its imports and waiting, so the opens land together.
OPEN_INDEX = """
import sys
from pathlib import Path
from appliance.disks import StorageError
from appliance.index import connect_writer
print("ready", flush=True)
sys.stdin.read()
try:
    connect_writer(Path(sys.argv[1])).close()
except StorageError as exc:
    print(exc)
    sys.exit(1)
"""


def open_index(index: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", OPEN_INDEX, str(index)], cwd=REPO, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_processes_creating_a_new_index_at_once_all_open_it(tmp_path: Path) -> None:
    """The first commands on a new box often start together (a fill, an `ls`, a load): none
    may fail with `database is locked` while another makes the index's tables."""
    failed = []
    for round_ in range(5):
        index = tmp_path / f"box{round_}" / "var" / "index.sqlite"
        procs = [open_index(index) for _ in range(8)]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            assert proc.wait(timeout=60) is not None and proc.stderr and proc.stdout
            err = proc.stderr.read()
            assert "Traceback" not in err, err
            if proc.returncode != 0:
                failed.append(proc.stdout.read().strip())
            proc.stdout.close()
            proc.stderr.close()
    assert failed == []

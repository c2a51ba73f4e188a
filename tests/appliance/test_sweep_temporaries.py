"""Temporary files write_atomic (edgeflix/atomicfile.py) leaves when its process is killed
between creating and renaming them are swept: the daemon's own state files at its start
(startup.settle_store, under its locks), a disk marker's at start and at every sweeper round
(under the claim lock). The leftovers are made as a kill makes them: a real process writing
with write_atomic, SIGKILLed once its temporary is written. Nothing not clearly ours goes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance import diskclaim
from appliance.config import ApplianceConfig
from appliance.diskerrors import errors_file
from appliance.startup import settle_store
from appliance.sweeper import SweepThread
from edgeflix.atomicfile import is_temporary_of, sweep_temporaries
from tests.appliance.storage_fixtures import storage_toml

ROOT = Path(__file__).resolve().parents[2]


def killed_mid_write(target: Path, data: bytes = b"new\n") -> Path:
    """Start a process that writes `target` with write_atomic, SIGKILL it once the bytes are
    in the temporary file (before the rename), and return that file."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from edgeflix import atomicfile
        real = atomicfile.write_all
        def write_all(fd, data):
            real(fd, data)
            print("written", flush=True)
            time.sleep(60)
        atomicfile.write_all = write_all
        atomicfile.write_atomic(Path({str(target)!r}), {data!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = set(os.listdir(target.parent))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "written\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    (left,) = set(os.listdir(target.parent)) - before - {target.name}
    assert is_temporary_of(left, target.name)
    return target.parent / left


def said(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, str]]:
    return [getattr(r, "edgeflix_fields", {}) for r in caplog.records if r.getMessage() == name]


def _config(tmp: Path, fleet: bool = True) -> tuple[ApplianceConfig, Path]:
    path = storage_toml(tmp)
    if fleet:
        state = tmp / "fleet-state"
        state.mkdir()
        text = path.read_text() + f'\n[fleet]\nurl = "127.0.0.1:1"\nstate_dir = "{state}"\n'
        path.write_text(text)
    return appliance_config.load(path), tmp / "fleet-state"


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        (".contact.json.k3x_9a0z.tmp", True),  # mkstemp's name (the versions before)
        (".contact.json.0123abcd.tmp", True),  # write_atomic's own
        (".contact.json.tmp", True),  # the fixed name before mkstemp
        ("contact.json", False),
        (".contact.json.0123abc.tmp", False),  # not the random part's length
        (".contact.json.0123abcd.tmp.x", False),
        (".other.json.0123abcd.tmp", False),
        (".x.contact.json.0123abcd.tmp", False),
        ("contact.json.0123abcd.tmp", False),
        (".contact.json.ABCDEFGH.tmp", False),
    ],
)
def test_a_temporary_is_recognised_by_its_final_name(name: str, ours: bool) -> None:
    assert is_temporary_of(name, "contact.json") is ours


def test_the_daemon_start_sweeps_its_state_temporaries_and_nothing_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, state = _config(tmp_path)
    contact = state / "contact.json"
    contact.write_bytes(b"old\n")
    left_contact = killed_mid_write(contact)
    memory = errors_file(config.storage.index)
    memory.parent.mkdir(parents=True, exist_ok=True)
    left_memory = killed_mid_write(memory)
    # Not ours: other names, a link and a folder named as ours, the final files.
    foreign = [state / ".notes.txt.0123abcd.tmp", state / "contact.json.0123abcd.tmp"]
    for path in foreign:
        path.write_bytes(b"someone's\n")
    link, folder = state / ".plan.json.0123abcd.tmp", state / ".keys.json.0123abcd.tmp"
    link.symlink_to(tmp_path / "elsewhere")
    folder.mkdir()

    with caplog.at_level(logging.INFO):
        settle_store(config, set())

    assert not left_contact.exists() and not left_memory.exists()
    assert contact.read_bytes() == b"old\n"  # the file as it was before the killed write
    assert all(p.read_bytes() == b"someone's\n" for p in foreign)
    assert link.is_symlink() and folder.is_dir()
    swept = said(caplog, "state.temporary_swept")
    assert sorted(f["file"] for f in swept) == sorted([left_contact.name, left_memory.name])


def test_without_a_fleet_url_the_fleet_folder_is_not_the_daemons_to_sweep(tmp_path: Path) -> None:
    # Without [fleet] url the daemon holds no lock on the fleet state: another may write it.
    config, _ = _config(tmp_path, fleet=False)
    state = config.fleet_state_dir()
    state.mkdir(parents=True)
    left = killed_mid_write(state / "contact.json")
    settle_store(config, set())
    assert left.exists()


def test_a_marker_temporary_is_swept_at_start_and_by_the_sweeper(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = _config(tmp_path, fleet=False)
    settle_store(config, set())  # the disks are claimed
    disks = [d.path.resolve() for d in config.storage.disks]
    marker = disks[0] / diskclaim.MARKER
    left = killed_mid_write(marker, marker.read_bytes())
    stranger = disks[0] / ".edgeflix-disk.json.0123abcd.tmp.bak"
    stranger.write_bytes(b"not ours\n")

    # A command killed while claiming: the running daemon's sweeper round removes it.
    with caplog.at_level(logging.INFO):
        SweepThread(config.storage).sweep()
    assert not left.exists() and stranger.exists()
    assert diskclaim.parse(marker.read_bytes()) is not None
    assert said(caplog, "disk.temporary_swept") == [{"disk": str(disks[0]), "file": left.name}]

    # And the daemon's start does it too.
    left = killed_mid_write(marker, marker.read_bytes())
    settle_store(config, set())
    assert not left.exists()


def test_a_temporary_younger_than_asked_is_kept(tmp_path: Path) -> None:
    """For a folder no lock covers: a writer in progress keeps its file."""
    left = killed_mid_write(tmp_path / "state.json")
    now = time.time()
    assert sweep_temporaries(tmp_path, ("state.json",), min_age_s=600, now=now) == []
    old = now - 601
    os.utime(left, (old, old))
    assert sweep_temporaries(tmp_path, ("state.json",), min_age_s=600, now=now) == [left]
    assert not left.exists()

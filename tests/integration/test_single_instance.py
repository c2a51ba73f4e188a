"""One daemon per store, one manager per database, on real processes: a second `appliance
run` on the same index (or the same fleet state) and a second `fleet serve` on the same
database are refused in one line naming the first one's pid; one-shot commands go on
working beside a running daemon; a daemon killed outright leaves nothing in the way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.config import ApplianceConfig
from appliance.supervisor import DaemonError
from tests.integration.daemon_support import start_daemon, write_config
from tests.integration.serve_support import make_title, start
from tests.integration.test_appliance_store import cli
from tests.integration.test_fleet import FLEET_TOML


def refused(args: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run `edgeflix ARGS`, expected to exit by itself; one still running after `timeout`
    (it started where it must not) is stopped and fails the test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise AssertionError(f"edgeflix {' '.join(args)} started beside the first one") from None
    assert "Traceback" not in err, err
    return proc.returncode, err


def test_a_second_daemon_on_the_same_index_is_refused(tmp_path: Path) -> None:
    first_config = write_config(tmp_path)
    # Another file, other ports (port 0), the same index and disks.
    second_config = tmp_path / "second.toml"
    second_config.write_text(first_config.read_text())
    index = tmp_path / "index.sqlite"
    first = start_daemon(first_config)
    try:
        code, err = refused(["appliance", "run", "--config", str(second_config)])
        assert code == 1
        assert err.strip().splitlines()[-1] == (
            f"error: another appliance daemon (pid {first.proc.pid}) uses this index: {index}"
        )
        # One-shot commands still work beside the running daemon (title locks keep them
        # apart), as they did before.
        src = make_title(tmp_path / "src" / "film", "film")
        code, _, err = cli("load", "--config", str(first_config), "--title", "film",
                           "--from", str(src))  # fmt: skip
        assert code == 0, err
        code, out, err = cli("ls", "--config", str(second_config))
        assert code == 0 and "film" in out, err
        code, _, err = cli("reconcile", "--config", str(first_config))
        assert code == 0, err
    finally:
        os.kill(first.proc.pid, signal.SIGKILL)  # no clean stop: the kernel drops the lock
        first.proc.wait(20)
    second = start_daemon(second_config)
    assert second.stop() == 0


def fleet_link_config(tmp: Path, index: Path, state: Path) -> ApplianceConfig:
    return ApplianceConfig.model_validate(
        {
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(index)},
            "fleet": {"url": "127.0.0.1:9", "state_dir": str(state)},
        }
    )


def test_two_daemons_sharing_a_fleet_state_folder_are_refused(tmp_path: Path) -> None:
    """Other indexes, one key pair and enrolment: both would heartbeat as one appliance,
    its URL flipping between them at every beat."""
    from appliance.daemon import single_instance

    state = tmp_path / "fleet"
    first = fleet_link_config(tmp_path, tmp_path / "a" / "index.sqlite", state)
    second = fleet_link_config(tmp_path, tmp_path / "b" / "index.sqlite", state)
    with single_instance(first):
        with pytest.raises(DaemonError) as exc:
            single_instance(second)
        assert str(exc.value) == (
            f"another appliance daemon (pid {os.getpid()}) uses this fleet state folder: {state}"
        )
        # Its index lock was let go with the refusal: only the state folder was in the way.
        single_instance(fleet_link_config(tmp_path, tmp_path / "b" / "index.sqlite",
                                          tmp_path / "other")).close()  # fmt: skip
    single_instance(second).close()


def test_a_second_fleet_manager_on_the_same_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state" / "fleet.sqlite"  # a folder yet to be made
    for name in ("first", "second"):  # two files, other ports (port 0), one database
        (tmp_path / f"{name}.toml").write_text(FLEET_TOML.format(db=db))
    first = start(["fleet", "serve", "--config", str(tmp_path / "first.toml")], ("grpc", "http"))
    try:
        # The signing keys' folder is the owner's alone, lock file and all.
        assert db.parent.stat().st_mode & 0o777 == 0o700
        started = time.monotonic()
        code, err = refused(["fleet", "serve", "--config", str(tmp_path / "second.toml")])
        assert code == 1
        assert err.strip().splitlines() == [
            f"error: another fleet manager (pid {first.proc.pid}) uses this database: {db}"
        ]
        assert time.monotonic() - started < 30
    finally:
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(20)
    second = start(["fleet", "serve", "--config", str(tmp_path / "second.toml")], ("grpc", "http"))
    assert second.stop() == 0

"""The index carries its format in `PRAGMA user_version`: an index a newer Edgeflix wrote is
refused by every reader in one line (the CLI exits 1, the daemon does not start), not misread.
And `appliance reconcile` does what the daemon's start does with files marked missing that
are back on their disk (as an older Edgeflix leaves an updated title): serves them again."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from appliance.config import DiskConfig, StorageConfig
from appliance.index import (
    INDEX_SCHEMA,
    IndexReader,
    NewerIndexError,
    connect_writer,
    open_problem,
    read_only,
    schema_current,
)
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title
from tests.conftest import run_cli
from tests.integration.daemon_support import write_config

NEWER = INDEX_SCHEMA + 1


def refusal(index: Path) -> str:
    return (
        f"index {index} was written by a newer Edgeflix (schema {NEWER}, this one knows "
        f"{INDEX_SCHEMA}): run that version"
    )


def user_version(index: Path) -> int:
    with closing(sqlite3.connect(index)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def set_user_version(index: Path, version: int) -> None:
    with closing(sqlite3.connect(index, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA user_version = {version}")


def storage(tmp_path: Path) -> StorageConfig:
    disk = tmp_path / "disk0"
    disk.mkdir(parents=True, exist_ok=True)
    return StorageConfig(
        disks=(DiskConfig(path=disk, tier="ssd"),), index=tmp_path / "var" / "index.sqlite"
    )


def test_a_new_index_is_stamped(tmp_path: Path) -> None:
    config = storage(tmp_path)
    Store(config).close()
    assert user_version(config.index) == INDEX_SCHEMA


def test_an_unstamped_index_is_brought_to_this_shape_and_stamped(tmp_path: Path) -> None:
    config = storage(tmp_path)
    Store(config).close()
    with closing(sqlite3.connect(config.index, isolation_level=None)) as conn:
        conn.execute("DROP TABLE reserved")  # an index of an older Edgeflix, never stamped
        conn.execute("PRAGMA user_version = 0")
        assert not schema_current(conn)
    Store(config).close()
    assert user_version(config.index) == INDEX_SCHEMA
    with closing(sqlite3.connect(config.index)) as conn:
        assert schema_current(conn)


def test_every_reader_refuses_a_newer_index_and_changes_nothing(tmp_path: Path) -> None:
    config = storage(tmp_path)
    Store(config).close()
    with closing(sqlite3.connect(config.index, isolation_level=None)) as conn:
        conn.execute("DROP TABLE reserved")  # what this code would otherwise "mend"
    set_user_version(config.index, NEWER)
    index = config.index
    for open_it in (lambda: connect_writer(index), lambda: connect_writer(index, create=False),
                    lambda: IndexReader(index), lambda: Store(config)):  # fmt: skip
        with pytest.raises(NewerIndexError) as info:
            open_it()
        assert str(info.value) == refusal(index)
    assert read_only(index, lambda conn: "read", "missing", "failed") == "failed"
    assert open_problem(index) == refusal(index)
    with closing(sqlite3.connect(index)) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "reserved" not in names and user_version(index) == NEWER


def test_a_store_on_a_newer_index_makes_nothing_on_its_disks(tmp_path: Path) -> None:
    config = storage(tmp_path)
    Store(config).close()
    set_user_version(config.index, NEWER)
    disk = config.disks[0].path
    shutil.rmtree(disk)
    disk.mkdir()
    with pytest.raises(NewerIndexError):
        Store(config)
    assert list(disk.iterdir()) == []


def newer_appliance(tmp_path: Path) -> tuple[Path, Path]:
    """An appliance config whose index (a title loaded) a newer Edgeflix has stamped."""
    config = write_config(tmp_path)
    source = make_title(tmp_path / "src", "oldmovie")
    run_cli(["appliance", "load", "--config", str(config), "--title", "oldmovie", "--from",
             str(source)], check=True)  # fmt: skip
    index = tmp_path / "index.sqlite"
    set_user_version(index, NEWER)
    return config, index


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_the_cli_refuses_a_newer_index_in_one_line(tmp_path: Path) -> None:
    config, index = newer_appliance(tmp_path)
    for command in ("ls", "reconcile", "verify"):
        done = run_cli(["appliance", command, "--config", str(config)])
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert done.stderr.strip().splitlines() == [f"error: {refusal(index)}"], command
        assert done.stdout == ""


def test_the_daemon_does_not_start_on_a_newer_index(tmp_path: Path) -> None:
    config, index = newer_appliance(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", "appliance", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it started: stopped the way its workers go too
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"the daemon started on a newer index:\n{stdout}{stderr}")
    assert proc.returncode == 1, stderr
    assert "listening on" not in stdout
    assert error_lines(stderr) == [f"error: {refusal(index)}"], stderr
    assert "Traceback" not in stderr
    assert user_version(index) == NEWER


def test_reconcile_serves_again_files_marked_missing_that_are_there(tmp_path: Path) -> None:
    # An older Edgeflix looked for an updated title in its bare id's folder, found none of
    # its files and marked them all missing: they are on the disks all along.
    config = write_config(tmp_path)
    source = make_title(tmp_path / "src", "oldmovie", sizes=[9_000] * 12)
    run_cli(["appliance", "load", "--config", str(config), "--title", "oldmovie", "--from",
             str(source)], check=True)  # fmt: skip
    with closing(sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)) as conn:
        conn.execute("UPDATE files SET state = 'missing'")
        conn.execute("UPDATE titles SET state = 'incomplete'")
    done = run_cli(["appliance", "reconcile", "--config", str(config), "--json"])
    assert done.returncode == 0, done.stderr
    ls = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    [title] = json.loads(ls.stdout)
    assert (title["state"], title["missing"]) == ("ready", 0)
    report = json.loads(done.stdout)
    assert report["restored"] == ["oldmovie"] and report["findings"] == []


def test_reconcile_says_which_titles_serve_again_and_leaves_lost_files_missing(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    for title_id in ("back", "lost"):
        source = make_title(tmp_path / "src", title_id, sizes=[9_000] * 6)
        run_cli(["appliance", "load", "--config", str(config), "--title", title_id, "--from",
                 str(source)], check=True)  # fmt: skip
    with closing(sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)) as conn:
        conn.execute("UPDATE files SET state = 'missing'")
        conn.execute("UPDATE titles SET state = 'incomplete'")
    for disk in (tmp_path / "d0", tmp_path / "d1"):
        shutil.rmtree(disk / "titles" / "lost" / "v0", ignore_errors=True)
    done = run_cli(["appliance", "reconcile", "--config", str(config)])
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "back: ready again (its missing files are back, and verified)" in lines
    assert not any(line.startswith("lost: ready again") for line in lines)
    ls = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    states = {t["id"]: (t["state"], t["missing"] > 0) for t in json.loads(ls.stdout)}
    assert states == {"back": ("ready", False), "lost": ("incomplete", True)}

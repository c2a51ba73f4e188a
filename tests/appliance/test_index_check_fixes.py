"""The index's integrity check runs once per process and index file, not on every store the
background rounds open (mover, scrub, sweeper: every few seconds, ~2 s each at 3M files); an
index replaced or damaged since is still refused with the same one-line message. Finding the
disks the index places files on reads a few index entries, not one per file."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from appliance.config import DiskConfig, StorageConfig
from appliance.disks import StorageError
from appliance.index import IndexReader, connect_writer, disks_with_files, transaction
from appliance.mover import MoverThread, RateBook
from appliance.safefiles import Throttle
from appliance.scrub import ScrubThread
from appliance.store import Store
from appliance.sweeper import SweepThread
from tests.appliance.storage_fixtures import make_title

DAMAGED = r"the index .* is damaged \(.*\); move it .* aside"


def config_for(tmp_path: Path) -> StorageConfig:
    disk = tmp_path / "disk0"
    disk.mkdir(parents=True, exist_ok=True)
    return StorageConfig(
        disks=(DiskConfig(path=disk, tier="hdd"),), index=tmp_path / "var" / "index.sqlite"
    )


def loaded(tmp_path: Path) -> StorageConfig:
    config = config_for(tmp_path)
    store = Store(config)
    store.load("bunny", make_title(tmp_path / "src", "bunny"))
    store.close()
    return config


def on_index_connections(
    monkeypatch: pytest.MonkeyPatch, index: Path, hook: Callable[[sqlite3.Connection], None]
) -> None:
    """Run `hook` on every SQLite connection this process opens to `index` (by path or URI),
    not to its hit-count file beside it."""
    real = sqlite3.connect
    names = {str(index), str(index.resolve())}

    def connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(database, *args, **kwargs)
        if str(database).split("?")[0].removeprefix("file://") in names:
            hook(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)


def count_checks(monkeypatch: pytest.MonkeyPatch, index: Path) -> list[str]:
    checks: list[str] = []

    def trace(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(lambda sql: checks.append(sql) if "quick_check" in sql else None)

    on_index_connections(monkeypatch, index, trace)
    return checks


def background_rounds(config: StorageConfig) -> None:
    """What the daemon's threads do, round after round: each opens its own store."""
    mover = MoverThread(config)
    book = RateBook(config.index, config.decay_half_life_s)
    try:
        for _ in range(3):
            mover._tick(book)
    finally:
        book.close()
    scrub = ScrubThread(config)
    for _ in range(2):
        scrub._slice_once(Throttle(1e12), 1 << 20)  # each slice saves its cursor: a write
    sweeper = SweepThread(config)
    for _ in range(2):
        sweeper.sweep()


def test_background_rounds_check_the_index_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = loaded(tmp_path)
    checks = count_checks(monkeypatch, config.index)
    reader = IndexReader(config.index)  # a serving worker's, open all along as in the daemon
    try:
        Store(config).close()  # the load wrote since its check: checked, as at a start
        assert len(checks) == 1
        background_rounds(config)
        for _ in range(3):
            Store(config).close()
    finally:
        reader.close()
    assert len(checks) == 1


def test_an_index_put_in_its_place_is_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A damaged copy of the same size renamed over the checked index: only its inode differs.
    config = loaded(tmp_path)
    Store(config).close()
    copy = tmp_path / "copy.sqlite"
    shutil.copyfile(config.index, copy)
    damage(copy)
    assert copy.stat().st_size == config.index.stat().st_size
    os.replace(copy, config.index)
    checks = count_checks(monkeypatch, config.index)
    book = RateBook(config.index, 60.0)
    with pytest.raises(StorageError, match=DAMAGED):
        MoverThread(config)._tick(book)
    book.close()
    with pytest.raises(StorageError, match=DAMAGED):
        Store(config)  # failed checks are not remembered: refused again
    assert len(checks) == 2


def test_an_index_damaged_in_place_is_checked_again(tmp_path: Path) -> None:
    config = loaded(tmp_path)
    Store(config).close()
    Store(config).close()
    damage(config.index)
    with pytest.raises(StorageError, match=DAMAGED):
        ScrubThread(config)._slice_once(Throttle(1e12), 1 << 20)
    with pytest.raises(StorageError, match=DAMAGED):
        connect_writer(config.index, create=False)


def damage(index: Path) -> None:
    """Random bytes over the index's second page, its size kept (the index closed, no WAL)."""
    with sqlite3.connect(index) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with index.open("r+b") as f:
        f.seek(4096)
        f.write(os.urandom(3000))


def test_finding_the_disks_reads_a_few_entries_not_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "index.sqlite"
    with closing(connect_writer(index)) as writer, transaction(writer) as conn:
        conn.execute("INSERT INTO titles VALUES ('a', 'd', 'ready', 'hdd', 5, 0, NULL)")
        conn.executemany(
            "INSERT INTO files VALUES ('a', ?, ?, 5, 's', 0, 'ok')",
            [(f"seg{i:05d}.m4s", f"/d{i % 3}") for i in range(20_000)],
        )
    steps = [0]

    def count(conn: sqlite3.Connection) -> None:
        conn.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1) or 0, 100)

    on_index_connections(monkeypatch, index, count)
    assert disks_with_files(index) == {"/d0", "/d1", "/d2"}
    # In hundreds of SQLite VM instructions: reading every entry of files(disk) took 600.
    assert steps[0] < 20

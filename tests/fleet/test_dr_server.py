"""Disaster recovery, the manager's part, on real processes: one manager per database
whatever name it is given (a symlink to the file or its folder; a hard link is refused); a
new database beside an earlier one's files said at start; a database whose disk is full
said once a minute, not every tick, and shown on /healthz and /metrics until it takes
writes again (a real ext4 filesystem on a loop device, filled to ENOSPC)."""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet import ticker
from tests.conftest import run_cli
from tests.integration.realdisk_support import MakeDisks, real_disks
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import FLEET_TOML, ApplianceClient
from tests.integration.test_single_instance import refused

__all__ = ["real_disks"]  # the fixture, imported for pytest to find


def config(folder: Path, db: Path, name: str = "fleet.toml") -> Path:
    path = folder / name
    path.write_text(FLEET_TOML.format(db=db))
    return path


def serve(toml: Path, log: Path | None = None) -> Server:
    if log is None:
        return start(["fleet", "serve", "--config", str(toml)], ("grpc", "http"))
    with log.open("ab") as err:
        return start(["fleet", "serve", "--config", str(toml)], ("grpc", "http"), stderr=err)


# -- one manager per database ------------------------------------------------------------


def test_a_symlink_to_the_database_or_its_folder_is_the_same_database(tmp_path: Path) -> None:
    db = tmp_path / "fleet" / "fleet.sqlite"
    first = serve(config(tmp_path, db))
    try:
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "fleet.sqlite").symlink_to("../fleet/fleet.sqlite")
        (tmp_path / "linked").symlink_to("fleet")
        for alias in (tmp_path / "other" / "fleet.sqlite", tmp_path / "linked" / "fleet.sqlite"):
            toml = config(tmp_path, alias, "second.toml")
            code, err = refused(["fleet", "serve", "--config", str(toml)])
            assert code == 1, err
            assert err.strip().splitlines() == [
                f"error: another fleet manager (pid {first.proc.pid}) uses this database: "
                f"{alias} (which is {db})"
            ]
        assert not (tmp_path / "other" / "fleet.sqlite.lock").exists()
    finally:
        first.stop()


def test_a_hard_linked_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "fleet" / "fleet.sqlite"
    first = serve(config(tmp_path, db))
    first.stop()
    (tmp_path / "other").mkdir()
    os.link(db, tmp_path / "other" / "fleet.sqlite")
    for name in (db, tmp_path / "other" / "fleet.sqlite"):
        code, err = refused(["fleet", "serve", "--config", str(config(tmp_path, name, "x.toml"))])
        assert code == 1, err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"error: the fleet database {name} has 2 names (hard links)")
        assert "-samefile" in line


# -- a new database beside an old one's files ---------------------------------------------


def events(log: Path, name: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if f"event={name} " in line]


def test_a_new_database_beside_an_earlier_ones_files_is_said_at_start(tmp_path: Path) -> None:
    db = tmp_path / "fleet" / "fleet.sqlite"
    toml, log = config(tmp_path, db), tmp_path / "manager.log"
    serve(toml, log).stop()  # the first start: nothing from before, nothing said
    assert events(log, "fleet.started") and not events(log, "fleet.database_new")
    serve(toml, log).stop()  # the same database again: nothing said
    assert not events(log, "fleet.database_new")
    for f in db.parent.glob("fleet.sqlite*"):  # lost (or `rm fleet.sqlite*`)
        if not f.name.endswith(".lock"):
            f.unlink()
    serve(toml, log).stop()
    (said,) = events(log, "fleet.database_new")
    assert "level=warning" in said
    assert f"fleet database {db} is new but {db.parent / 'admin-token'} from an earlier" in said
    assert "must be given new join tokens" in said
    assert "delete fleet.sqlite-wal and -shm first" in said


# -- a full disk -----------------------------------------------------------------------


def fill_up(folder: Path) -> Path:
    """Write a file in `folder` until its filesystem has not one byte left (bounded)."""
    junk = folder / "other-data"
    fd = os.open(junk, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (64 << 10, 4096, 1):
            try:
                for _ in range(10_000):  # 625 MiB at most at first; the disk is 16 MiB
                    os.write(fd, b"\0" * size)
                raise AssertionError(f"{folder} never filled up")
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return junk


def until(what: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def test_a_full_disk_is_said_once_and_shown_until_the_database_takes_writes(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    (disk,) = real_disks(1)
    db = disk.mount / "fleet" / "fleet.sqlite"
    log = tmp_path / "manager.log"
    fleet = serve(config(tmp_path, db), log)
    try:
        http = fleet.urls["http"]
        token = run_cli(["fleet", "join-token", "--site", "home", "--fleet", http],
                        check=True, timeout=60).stdout.split()[-1]  # fmt: skip
        box = ApplianceClient(fleet.urls["grpc"], "h1", "http://192.168.1.20:8081")
        box.enrol(token)
        box.keys()
        assert httpx.get(f"{http}/healthz").json() == {"status": "ok"}
        junk = fill_up(disk.mount)
        box.beat({"film": 10**9})  # a new appliance: a new plan, which cannot be saved

        def degraded() -> dict[str, str] | None:
            box.beat({"film": 10**9})
            health = httpx.get(f"{http}/healthz")
            assert health.status_code == 200  # steering and beats work: no probe unroutes it
            doc: dict[str, str] = health.json()
            return doc if doc["status"] == "degraded" else None

        doc = until(degraded)
        assert doc["reason"].startswith(f"writes to {db} fail: "), doc
        assert "full" in doc["reason"], doc
        assert "edgeflix_fleet_store_writable 0\n" in httpx.get(f"{http}/metrics").text
        for _ in range(10):  # three planning rounds (a tick a second), each failing to save
            box.beat({"film": 10**9})  # (the appliance beats on: it is planned each round)
            time.sleep(0.3)
        (said,) = events(log, "fleet.tick_failed")  # once, not once a round
        assert f"db={db}" in said and "free space on" in said, said
        assert httpx.get(f"{http}/healthz").json()["status"] == "degraded"  # between rounds too

        junk.unlink()  # room again: the next round's plan is saved

        def ok() -> bool:
            box.beat({"film": 10**9})
            return bool(httpx.get(f"{http}/healthz").json() == {"status": "ok"})

        until(ok)
        assert "edgeflix_fleet_store_writable 1\n" in httpx.get(f"{http}/metrics").text
        (back,) = events(log, "fleet.tick_recovered")
        failed = int(re.search(r"failed_ticks=(\d+)", back).group(1))  # type: ignore[union-attr]
        assert failed >= 3, back
        assert httpx.get(f"{http}/plan").json()["appliances"][0]["name"] == "h1"
    finally:
        fleet.stop()


# -- TickHealth, on its own --------------------------------------------------------------


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return dict(getattr(record, "edgeflix_fields", {}))


class Steady:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failing_tick_is_said_at_once_then_once_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Steady()
    health = ticker.TickHealth("/srv/fleet/fleet.sqlite", clock)
    said = lambda: [r for r in caplog.records if r.getMessage() == "fleet.tick_failed"]  # noqa: E731
    with caplog.at_level("INFO", logger="fleet"):
        health.failed("database or disk is full", True, 7)
        for _ in range(29):  # a round every 2 s for a minute
            clock.now += 2.0
            health.failed("database or disk is full", True, 7)
            health.passed(7)  # a tick between rounds writes nothing: still not writable
            assert health.problem() is not None and not health.store_writable()
        assert len(said()) == 1
        clock.now += 2.0
        health.failed("database or disk is full", True, 7)
        assert len(said()) == 2 and fields(said()[1])["failed_ticks"] == 30
        health.passed(8)  # a write went through
        assert health.problem() is None and health.store_writable()
    recovered = [r for r in caplog.records if r.getMessage() == "fleet.tick_recovered"]
    assert len(recovered) == 1 and fields(recovered[0])["failed_ticks"] == 31


def test_a_tick_failing_for_another_reason_clears_on_the_next_tick_that_passes() -> None:
    health = ticker.TickHealth("fleet.sqlite", Steady())
    health.failed("UnavailableError: the planner process died twice", False, 3)
    assert health.store_writable() and "planner" in (health.problem() or "")
    health.passed(3)
    assert health.problem() is None

"""The fleet database across versions of Edgeflix (fleet/store.py): its schema number in
SQLite's user_version (a newer one is refused in one line), a stored plan with keys this
code does not know (read), one it cannot read at all (dropped; the next plan's version is
above it), and a migration on a full filesystem (SQLite's error, and the free space)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import zstandard

from fleet.catalogue import OriginTitle
from fleet.plans import FillPlan
from fleet.service import FleetService
from fleet.store import SCHEMA_VERSION, Store, StoreError
from tests.conftest import run_cli
from tests.fleet.test_service import GB, Clock, beat, config, enrol, service

# The tables as Edgeflix made them before keys.since, keys.token_ttl_s, catalog.withdrawn_at
# and user_version (fleet/store.py at a0eb1ad).
OLD_SCHEMA = """
CREATE TABLE appliances (
    name TEXT PRIMARY KEY, site TEXT NOT NULL, url TEXT NOT NULL,
    public_key BLOB NOT NULL, enrolled_at REAL NOT NULL, drained INTEGER NOT NULL DEFAULT 0);
CREATE TABLE join_tokens (
    hash TEXT PRIMARY KEY, site TEXT NOT NULL, created_at REAL NOT NULL,
    expires_at REAL NOT NULL, used_at REAL, used_by TEXT);
CREATE TABLE keys (
    id TEXT PRIMARY KEY, secret BLOB NOT NULL, activates REAL NOT NULL, retires REAL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE plan (
    id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE catalog (title TEXT PRIMARY KEY, first_seen REAL NOT NULL);
"""


def user_version(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def old_database(db: Path, keys: int) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(OLD_SCHEMA)
        rows = [(f"k{i}", os.urandom(32), float(i)) for i in range(1, keys + 1)]
        conn.executemany("INSERT INTO keys VALUES (?, ?, ?, NULL)", rows)
    conn.close()


# -- the schema's number --------------------------------------------------------------


def test_a_new_database_and_one_migrated_from_before_the_number_are_stamped(
    tmp_path: Path,
) -> None:
    new = tmp_path / "new.sqlite"
    Store(new).close()
    assert user_version(new) == SCHEMA_VERSION
    old = tmp_path / "old.sqlite"
    old_database(old, keys=3)
    assert user_version(old) == 0
    store = Store(old)
    assert [k.since for k in store.keyset().keys] == [1, 2, 3]  # migrated, then stamped
    store.close()
    assert user_version(old) == SCHEMA_VERSION
    Store(old).close()  # and opened again as it is
    assert user_version(old) == SCHEMA_VERSION


def test_the_manager_refuses_a_database_of_a_newer_schema_in_one_line(tmp_path: Path) -> None:
    """A rollback after an upgrade: the newer Edgeflix's rows may mean what this one does
    not know. Refused before anything about the database is changed."""
    db = tmp_path / "var" / "fleet.sqlite"
    Store(db).close()
    newer = SCHEMA_VERSION + 1
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    db.chmod(0o644)  # as an older Edgeflix left it: tightened only once opened
    toml = tmp_path / "fleet.toml"
    toml.write_text(f'[server]\ngrpc = "127.0.0.1:0"\nhttp = "127.0.0.1:0"\ndb = "{db}"\n')

    proc = run_cli(["fleet", "serve", "--config", str(toml)], timeout=30)

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: fleet database {db} was written by a newer Edgeflix (schema {newer}, this one"
        f" knows {SCHEMA_VERSION}): run that version, or restore a backup taken before the"
        " upgrade"
    ]
    assert sorted(p.name for p in db.parent.iterdir()) == ["fleet.sqlite"]
    assert user_version(db) == newer and db.stat().st_mode & 0o777 == 0o644


# -- the stored plan ------------------------------------------------------------------


TITLES = [OriginTitle("a", "da", 4 * GB), OriginTitle("b", "db", 2 * GB)]


def planned(tmp_path: Path, clock: Clock) -> FillPlan:
    """The plan of a manager that planned for two live appliances, then stopped."""
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    enrol(svc, "l1", "lab")
    plan = started(svc, clock).replan()
    svc.store.close()
    assert plan.appliances.keys() == {"h1", "l1"}
    return plan


def restarted(tmp_path: Path, clock: Clock) -> FleetService:
    cfg = config(tmp_path)
    return started(FleetService(cfg, Store(cfg.server.db), clock, monotonic=clock), clock)


def started(svc: FleetService, clock: Clock) -> FleetService:
    """The origin listed, the appliances heard from (neither is stored)."""
    svc.set_origin_titles([OriginTitle("a", "da", 4 * GB), OriginTitle("b", "db", 2 * GB)])
    clock.now += 1
    for name in ("h1", "l1"):
        beat(svc, name, int(clock.now))
    return svc


def rewrite_plan(db: Path, body: bytes) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE plan SET body = ? WHERE id = 1", (body,))
    conn.close()


def stored_doc(db: Path) -> Any:
    with sqlite3.connect(db) as conn:
        (body,) = conn.execute("SELECT body FROM plan WHERE id = 1").fetchone()
    conn.close()
    return json.loads(zstandard.decompress(body))


def test_a_stored_plan_with_keys_this_code_does_not_know_is_read(tmp_path: Path) -> None:
    """A newer Edgeflix's plan (`"moved": []` in a diff, and the like) crashed `fleet serve`
    with TypeError: PlanDiff.__init__() got an unexpected keyword argument 'moved'."""
    clock = Clock()
    before = planned(tmp_path, clock)
    db = tmp_path / "fleet.sqlite"
    doc = stored_doc(db)
    doc["placed_by"] = "planner 9"
    for part in doc["appliances"]:
        part["diff"]["moved"] = []
        part["weight"] = 2.5
        for title in part["titles"]:
            title["codec"] = "av1"
    rewrite_plan(db, zstandard.compress(json.dumps(doc).encode()))

    svc = restarted(tmp_path, clock)

    assert svc.current_plan == before
    assert svc.replan().version == before.version  # the same content: no new version


def broken_bodies() -> list[Any]:
    def part(**change: Any) -> bytes:
        doc = {"version": 4, "appliances": [{
            "appliance": "h1", "site": "home", "schedule": "",
            "diff": {"added": ["a"]},
            "titles": [{"title_id": "a", "digest": "da", "size_bytes": 5, "tier": "hdd",
                        "source": "origin"}],
        }]}  # fmt: skip
        for path, value in change.items():
            *where, key = path.split("__")
            node: Any = doc
            for step in where:
                node = node[int(step)] if step.isdigit() else node[step]
            node[key] = value
        return zstandard.compress(json.dumps(doc).encode())

    return [
        pytest.param(b"not zstd at all", id="not-zstd"),
        pytest.param(zstandard.compress(b"{not json"), id="not-json"),
        pytest.param(zstandard.compress(b"\xff\xfe"), id="not-utf8"),
        pytest.param(zstandard.compress(b"[1, 2]"), id="not-an-object"),
        pytest.param(part(appliances={"h1": {}}), id="appliances-not-a-list"),
        pytest.param(part(appliances__0__titles=None), id="titles-null"),
        pytest.param(part(appliances__0__titles__0__size_bytes="5"), id="size-a-string"),
        pytest.param(part(appliances__0__titles__0__size_bytes=True), id="size-a-bool"),
        pytest.param(part(appliances__0__diff__added=[1]), id="diff-of-numbers"),
        pytest.param(part(appliances__0__diff="none"), id="diff-a-string"),
        pytest.param(part(appliances__0__site=None), id="site-null"),
        pytest.param(part(version="4"), id="version-a-string"),
    ]


@pytest.mark.parametrize("body", broken_bodies())
def test_an_unreadable_stored_plan_is_dropped_and_the_next_version_is_above_it(
    tmp_path: Path, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Appliances fetch only a version above the one they run: a plan planned afresh must
    not start again at 1. Its version is kept in a column of its own, readable still."""
    clock = Clock()
    before = planned(tmp_path, clock)
    rewrite_plan(tmp_path / "fleet.sqlite", body)

    with caplog.at_level(logging.WARNING, logger="fleet"):
        svc = restarted(tmp_path, clock)

    said = [r for r in caplog.records if r.getMessage() == "fleet.plan_unreadable"]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert svc.current_plan is not None and svc.current_plan.version == before.version
    assert not svc.current_plan.appliances
    plan = svc.replan()
    assert plan.version == before.version + 1
    assert plan.appliances.keys() == before.appliances.keys()
    assert restarted(tmp_path, clock).current_plan == plan  # stored whole again


# -- a migration on a full filesystem ---------------------------------------------------


def fill_up_to(folder: Path, free: int) -> Path:
    """A ballast file leaving about `free` bytes on `folder`'s filesystem."""
    st = os.statvfs(folder)
    ballast = folder / "ballast"
    ballast.write_bytes(b"\0" * (st.f_bfree * st.f_frsize - free))
    return ballast


def test_a_migration_on_a_full_filesystem_says_so_and_keeps_the_database_whole(
    small_fs: Path,
) -> None:
    """The migration's COMMIT failed ("database or disk is full"), SQLite ended the
    transaction itself, and the ROLLBACK after it replaced the reason with "cannot
    rollback - no transaction is active"."""
    db = small_fs / "fleet.sqlite"
    old_database(db, keys=40)
    ballast = fill_up_to(small_fs, 45_056)

    with pytest.raises(StoreError) as refused:
        Store(db)

    line = str(refused.value)
    assert line.startswith(f"cannot open the fleet database {db}: "), line
    assert "no transaction is active" not in line, line
    assert line.endswith(" bytes free on the filesystem holding it)"), line
    assert "\n" not in line
    ballast.unlink()
    store = Store(db)  # with room again, the migration completes
    assert [k.since for k in store.keyset().keys] == list(range(1, 41))
    store.close()
    assert user_version(db) == SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_a_write_on_a_full_filesystem_says_so(small_fs: Path) -> None:
    store = Store(small_fs / "fleet.sqlite")
    fill_up_to(small_fs, 45_056)
    with pytest.raises(StoreError, match=r"^the fleet database is not writable now: .* bytes free"):
        store.set_meta("big", "x" * 200_000)
    assert store.meta("big") is None
    store.close()

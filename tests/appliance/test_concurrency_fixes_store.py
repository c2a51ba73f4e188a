"""Two writers deciding room at once (Store.load, Store.move): the room a load or tier move in
progress is about to fill is reserved in the index, so another writer's room check counts it
before a single file of it is indexed. Two Stores over one index stand for two processes:
each has its own connection and its own lock descriptors (flock excludes them as it excludes
processes). The crash case, with real processes, is in tests/integration."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.capacity import less_room, reserved_on_disks
from appliance.config import DiskConfig, StorageConfig
from appliance.disks import CapacityError, DiskUsage, LoadError
from appliance.index import READY, schema_current
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title, title_bytes

SEGMENTS = [50_000] * 6  # ~300 kB a title


def config(tmp_path: Path, caps: dict[str, int]) -> StorageConfig:
    """One disk per tier in `caps` (tier → max_bytes)."""
    disks = []
    for tier, cap in caps.items():
        path = tmp_path / tier
        path.mkdir(parents=True, exist_ok=True)
        disks.append(DiskConfig(path=path, tier=tier, max_bytes=cap))  # type: ignore[arg-type]
    return StorageConfig(disks=tuple(disks), index=tmp_path / "var" / "index.sqlite")


def once(action: Callable[[], None]) -> Callable[..., bool]:
    """A progress callback that runs `action` the first time it is called (mid-copy)."""
    done: list[bool] = []

    def hook(*_: object) -> bool:
        if not done:
            done.append(True)
            action()
        return False  # as should_stop: go on

    return hook


def reserved_rows(index: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(index) as conn:
        return conn.execute("SELECT title, disk, size FROM reserved").fetchall()


def test_a_load_in_progress_keeps_its_room_from_another_load(tmp_path: Path) -> None:
    """Each title fits alone under the cap, both do not: the load started second, while the
    first is copying (none of its files indexed yet), is refused as a sequential one is."""
    cfg = config(tmp_path, {"ssd": 500_000})  # high watermark: 450 kB
    a, b = (make_title(tmp_path / "src", t, SEGMENTS) for t in ("a", "b"))
    first, second = Store(cfg, grace_s=0), Store(cfg, grace_s=0)
    refused: list[Exception] = []

    def load_b() -> None:
        try:
            second.load("b", b)
        except CapacityError as exc:
            refused.append(exc)

    row = first.load("a", a, on_bytes=once(load_b))
    assert row.state == READY
    assert len(refused) == 1, "the second load was let in beside the first one's copy"
    assert str(refused[0]).startswith("title b does not fit on the ssd tier: needs ")
    assert "free below its high watermark" in str(refused[0])
    assert [t.id for t in first.listing()] == ["a"]
    (used,) = first.usage()
    assert used.used == title_bytes(a) <= 500_000
    assert reserved_rows(cfg.index) == []  # released with the rows that count it now
    # Once the first is in, the second is refused for the indexed bytes, as before.
    with pytest.raises(CapacityError):
        second.load("b", b)
    first.close()
    second.close()


def test_a_tier_move_in_progress_keeps_its_room_from_a_load(tmp_path: Path) -> None:
    """A hot title loaded while the mover copies another onto the ssd tier finds the room
    that copy is taking, and goes to the hdd tier instead of filling the ssd past its cap."""
    cfg = config(tmp_path, {"ssd": 500_000, "hdd": 10_000_000})
    cold, hot = (make_title(tmp_path / "src", t, SEGMENTS) for t in ("cold", "hot"))
    mover, loader = Store(cfg, grace_s=0), Store(cfg, grace_s=0)
    assert mover.load("cold", cold).tier == "hdd"
    loaded = []
    moved = mover.move(
        "cold",
        "ssd",
        grace_s=0,
        should_stop=once(lambda: loaded.append(loader.load("hot", hot, rate=10.0))),
    )
    assert moved and loaded[0].tier == "hdd"
    ssd = next(u for u in mover.usage() if u.tier == "ssd")
    assert ssd.used == title_bytes(cold) <= 500_000
    assert reserved_rows(cfg.index) == []
    mover.close()
    loader.close()


def test_a_failed_load_releases_its_room(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"ssd": 500_000})
    a, b = (make_title(tmp_path / "src", t, SEGMENTS) for t in ("a", "b"))
    store = Store(cfg, grace_s=0)

    def fail(_: int) -> None:
        raise OSError("the source went away")

    with pytest.raises(LoadError, match=r"cannot copy .* of a: the source went away"):
        store.load("a", a, on_bytes=fail)
    assert reserved_rows(cfg.index) == []
    assert store.load("b", b).state == READY  # all the room is there again
    store.close()


def test_a_reservation_nobody_holds_counts_for_nothing_and_goes(tmp_path: Path) -> None:
    """A process killed mid-load leaves its reservation row, but not its title's lock (the
    kernel drops it): the row is void at once, and the next reservation deletes it."""
    cfg = config(tmp_path, {"ssd": 500_000})
    store = Store(cfg, grace_s=0)
    disk = store.disks[0].id
    with sqlite3.connect(cfg.index) as conn:
        conn.execute("INSERT INTO reserved VALUES ('ghost', ?, 400000)", (disk,))
    assert store.usage()[0].used == 0
    with store.locks.hold("ghost"):  # a load of it in progress (this lock is another's)
        assert store.usage()[0].used == 400_000
    store.load("a", make_title(tmp_path / "src", "a", SEGMENTS))
    assert reserved_rows(cfg.index) == []
    store.close()


def test_reserved_room_counts_only_for_titles_still_worked_on() -> None:
    reserved = {"a": {"d1": 10, "d2": 5}, "b": {"d1": 7}, "dead": {"d1": 1000}}
    assert reserved_on_disks(reserved, {"a", "b"}) == {"d1": 17, "d2": 5}
    assert reserved_on_disks(reserved, set()) == {}


def test_less_room_never_goes_below_nothing() -> None:
    usage = DiskUsage("d", "ssd", 1000, 200, 700, 600)
    assert less_room(usage, 650) == DiskUsage("d", "ssd", 1000, 850, 50, 0)
    assert less_room(usage, 0) == usage


def test_a_current_index_is_opened_without_ddl(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"ssd": 500_000})
    Store(cfg).close()
    conn = sqlite3.connect(cfg.index, isolation_level=None)
    assert schema_current(conn)
    conn.execute("DROP TABLE reserved")  # an index made before reservations
    assert not schema_current(conn)
    conn.close()
    Store(cfg).close()  # adds what is missing
    with sqlite3.connect(cfg.index) as conn:
        assert schema_current(conn)

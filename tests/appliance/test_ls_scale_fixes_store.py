"""`appliance ls` counts files in SQLite, a few rows per title, not one Python object per
stored file (Store.listing); Store.unsettled names the titles a one-title command (`load`)
must reconcile besides its own, from the index and one listing per disk. Real Stores on real
folders and a real index."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from appliance import replaced
from appliance.config import DiskConfig, StorageConfig
from appliance.index import MISSING, OK, all_titles, transaction
from appliance.listing import TitleListing
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title

SPREAD = [4_000] * 24  # enough files that rendezvous hashing puts some on every disk


def config(tmp_path: Path, names: Sequence[str], keep_s: float = 3600.0) -> StorageConfig:
    for name in names:
        (tmp_path / name).mkdir(exist_ok=True)
    return StorageConfig(
        disks=tuple(DiskConfig(path=tmp_path / name, tier="ssd") for name in names),
        index=tmp_path / "var" / "index.sqlite",
        replaced_keep_s=keep_s,
    )


def listing_file_by_file(store: Store) -> list[TitleListing]:
    """Store.listing as it was: every file row read into Python (the reference)."""
    per_title: dict[str, list[tuple[str, int, str]]] = {}
    for title, disk, size, state in store.conn.execute(
        "SELECT title, disk, size, state FROM files ORDER BY title, disk"
    ):
        per_title.setdefault(title, []).append((disk, size, state))
    result = []
    out = set(store.out_of_service)
    configured = out | {d.id for d in store.disks}
    kept = replaced.summaries(store.conn)
    for row in all_titles(store.conn):
        files = per_title.get(row.id, [])
        old = kept.get(row.id)
        ok = [disk for disk, _, state in files if state == OK]
        result.append(
            TitleListing(
                id=row.id,
                state=row.state,
                tier=row.tier,
                disks=tuple(sorted({d for d in ok if d in configured and d not in out})),
                bytes=row.bytes,
                files=len(files),
                missing=sum(1 for _, _, state in files if state == MISSING),
                digest=row.digest,
                unavailable=sum(1 for disk in ok if disk in out),
                kept_files=old.files if old else 0,
                kept_bytes=old.bytes if old else 0,
                kept_until=old.until if old else None,
                unconfigured=sum(1 for disk in ok if disk not in configured),
            )
        )
    return result


def rows_fetched(store: Store) -> list[int]:
    """A counter of the rows SQLite hands to Python on the store's connection from now on
    (the row factory sees each one)."""
    count = [0]

    def counted(_cursor: sqlite3.Cursor, row: tuple[object, ...]) -> tuple[object, ...]:
        count[0] += 1
        return row

    store.conn.row_factory = counted
    return count


def every_kind_of_title(tmp_path: Path) -> None:
    """Titles on disks d0..d3: spread and whole, one replaced (files kept for its old
    version's sessions), one with missing files, one interrupted mid-load (no files)."""
    store = Store(config(tmp_path, ["d0", "d1", "d2", "d3"]), grace_s=0)
    try:
        for title_id in ("alpha", "bravo", "charlie"):
            store.load(title_id, make_title(tmp_path / "src", title_id, sizes=SPREAD))
        v1 = make_title(tmp_path / "v1", "film", sizes=SPREAD, seed=1, content_named=True)
        v2 = make_title(tmp_path / "v2", "film", sizes=SPREAD, seed=2, content_named=True)
        store.load("film", v1)
        store.load("film", v2, replace=True)
        with transaction(store.conn) as conn:
            conn.execute(
                "UPDATE files SET state = ? WHERE title = 'bravo' AND path LIKE 'v0/%'", (MISSING,)
            )
            conn.execute(
                "INSERT INTO titles (id, digest, state, tier, bytes, loaded_at) "
                "VALUES ('half', 'x', 'loading', 'ssd', 10, 0)"
            )
    finally:
        store.close()


def test_the_listing_is_what_it_was_file_by_file_from_a_few_rows_per_title(
    tmp_path: Path,
) -> None:
    every_kind_of_title(tmp_path)
    # Reopened as `ls` may find it: d1 out of service, d3 taken out of the config.
    d1 = str((tmp_path / "d1").resolve())
    store = Store(config(tmp_path, ["d0", "d1", "d2"]), out_of_service=[d1])
    try:
        expected = listing_file_by_file(store)
        files = store.conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        count = rows_fetched(store)
        listed = store.listing()
    finally:
        store.close()
    assert listed == expected
    by_id = {t.id: t for t in listed}
    # The case of each field is there to be compared.
    assert by_id["bravo"].missing > 0 and by_id["film"].kept_files > 0
    assert all(t.unavailable > 0 and t.unconfigured > 0 for t in listed if t.id != "half")
    assert by_id["half"].files == 0 and by_id["half"].disks == ()
    # A row per title and disk, per title, per title with kept files: not one per file.
    titles, disks = len(listed), 4
    assert count[0] <= titles * disks + 2 * titles < files


def test_a_settled_appliance_has_no_unsettled_titles(tmp_path: Path) -> None:
    every_kind_of_title(tmp_path)
    store = Store(config(tmp_path, ["d0", "d1", "d2", "d3"]))
    try:
        assert store.unsettled() == {"half"}  # stopped mid-load: its row waits for a reconcile
        with transaction(store.conn) as conn:
            conn.execute("DELETE FROM titles WHERE id = 'half'")
        assert store.unsettled() == set()
    finally:
        store.close()


def test_unsettled_titles_are_those_a_crash_or_a_config_edit_left(tmp_path: Path) -> None:
    every_kind_of_title(tmp_path)
    d0 = tmp_path / "d0"
    (d0 / "titles" / "ghost" / "v0").mkdir(parents=True)  # a title the index does not know
    (d0 / "titles" / "ghost~0a1b" / "seg.m4s").parent.mkdir()
    (d0 / "titles" / "not a title").mkdir()  # no title's folder: swept by nobody's reconcile
    d3 = str((tmp_path / "d3").resolve())
    store = Store(config(tmp_path, ["d0", "d1", "d2"]))
    try:
        with transaction(store.conn) as conn:
            conn.execute("UPDATE titles SET state = 'removing' WHERE id = 'alpha'")
        # Titles with files still served from d3 (placement hashes paths that hold tmp_path,
        # so which of them has a missing file there changes from run to run).
        served = "SELECT DISTINCT title FROM files WHERE disk = ? AND state = ?"
        on_d3 = {t for (t,) in store.conn.execute(served, (d3, OK))}
        assert on_d3 & {"bravo", "charlie"}
        assert store.unsettled() == {"half", "alpha", "ghost"} | on_d3
        # Set aside (missing) by a reconcile, d3's files are not asked for again; files kept
        # for a replaced version's sessions on a disk the config lacks still are.
        with transaction(store.conn) as conn:
            conn.execute("UPDATE files SET state = ? WHERE disk = ?", (MISSING, d3))
            conn.execute("UPDATE superseded SET disk = 'elsewhere' WHERE title = 'film'")
        assert store.unsettled() == {"half", "alpha", "ghost", "film"}
    finally:
        store.close()
    assert os.path.isdir(d0 / "titles" / "ghost")  # only asked, nothing changed

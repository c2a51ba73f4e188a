"""A replaced version's segments stay servable for the sessions that started on it
(appliance/replaced.py): only content-named files the new version lacks, only for
[storage] replaced_keep_s, first to go when a load needs room, gone with the title."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from appliance.cli_inspect import _files_cell
from appliance.config import DiskConfig, StorageConfig
from appliance.disks import CapacityError
from appliance.index import IndexReader
from appliance.repair import reconcile
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title

SIZES = [30_000 + i * 1000 for i in range(10)]


def make_store(
    tmp_path: Path,
    *,
    keep_s: float = 3600.0,
    max_bytes: int | None = None,
    grace_s: float = 0,
    disks_n: int = 2,
) -> Store:
    """Two disks by default; one where the capacity arithmetic must not depend on how the
    hash spreads files (disk ids are tmp paths, different each run)."""
    disks = []
    for i, tier in enumerate(("ssd",) * disks_n):
        path = tmp_path / f"disk{i}"
        path.mkdir(parents=True, exist_ok=True)
        disks.append(DiskConfig(path=path, tier=tier, max_bytes=max_bytes))
    config = StorageConfig(
        disks=tuple(disks), index=tmp_path / "var" / "index.sqlite", replaced_keep_s=keep_s
    )
    return Store(config, grace_s=grace_s)


def segments(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.m4s"))}


def served(reader: IndexReader, title_id: str, rel: str) -> bytes | None:
    reader.refresh()
    found = reader.locate(title_id, rel)
    if found is None:
        return None
    try:
        return found.path.read_bytes()
    except FileNotFoundError:
        return None


def version(tmp_path: Path, seed: int, title_id: str = "film") -> Path:
    return make_title(tmp_path / f"v{seed}", title_id, sizes=SIZES, seed=seed, content_named=True)


def replaced_film(tmp_path: Path, **store_args: object) -> tuple[Store, Path, Path]:
    """A store where `film` was loaded (v1), then replaced (v2): v1's segments are kept."""
    v1, v2 = version(tmp_path, 1), version(tmp_path, 2)
    store = make_store(tmp_path, **store_args)  # type: ignore[arg-type]
    store.load("film", v1)
    store.load("film", v2, replace=True)
    return store, v1, v2


def on_disks(store: Store) -> set[str]:
    """Every file under the disks' titles folders, as folder/path."""
    found = set()
    for disk in store.disks:
        for p in disk.titles_dir.rglob("*"):
            if p.is_file():
                found.add(p.relative_to(disk.titles_dir).as_posix())
    return found


def test_a_replaced_versions_segments_keep_serving_its_sessions(tmp_path: Path) -> None:
    v1, v2 = version(tmp_path, 1), version(tmp_path, 2)
    old, new = segments(v1), segments(v2)
    assert not set(old) & set(new)  # a re-encode: every segment has a new name
    store = make_store(tmp_path)
    reader = IndexReader(store.index_path, refresh_per_call=False)
    store.load("film", v1)
    store.load("film", v2, replace=True)
    current = store.title("film").folder + "/"
    store.close()  # waits out the grace: the old folder is pruned to what is kept
    for rel, body in old.items():
        assert served(reader, "film", rel) == body  # a player that started on v1
    for rel, body in new.items():
        assert served(reader, "film", rel) == body
    # Names that are not content's answer from the new version only.
    assert served(reader, "film", "master.m3u8") == (v2 / "master.m3u8").read_bytes()
    assert served(reader, "film", "files.json") == (v2 / "files.json").read_bytes()
    # The old folder keeps its segments and nothing else.
    kept = {p.partition("/")[2] for p in on_disks(store) if not p.startswith(current)}
    assert kept == set(old)


def test_the_listing_shows_what_replaced_versions_keep(tmp_path: Path) -> None:
    v1 = version(tmp_path, 1)
    kept_sizes = {rel: (v1 / rel).stat().st_size for rel in segments(v1)}
    kept_sizes |= {p.name: p.stat().st_size for p in v1.rglob("init_*.mp4")}
    kept_sizes |= {p.name: p.stat().st_size for p in v1.rglob("index_*.m3u8")}
    before = time.time()
    store, _, _ = replaced_film(tmp_path, keep_s=600.0)
    try:
        (film,) = store.listing()
    finally:
        store.close()
    assert (film.kept_files, film.kept_bytes) == (len(kept_sizes), sum(kept_sizes.values()))
    assert film.kept_until is not None and before + 600 <= film.kept_until <= time.time() + 600
    assert "of older versions kept until" in str(_files_cell(film))


def test_nothing_is_kept_with_keep_0_or_for_names_not_content(tmp_path: Path) -> None:
    store, v1, _ = replaced_film(tmp_path, keep_s=0)
    reader = IndexReader(store.index_path, refresh_per_call=False)
    store.close()
    assert all(served(reader, "film", rel) is None for rel in segments(v1))
    # Segments another packager named seg0001.m4s are never kept: the name may come back
    # with other bytes.
    p1 = make_title(tmp_path / "p1", "plain", sizes=SIZES, seed=1)
    p2 = make_title(tmp_path / "p2", "plain", sizes=[*SIZES[:-1]], seed=2)
    store = make_store(tmp_path)
    store.load("plain", p1)
    store.load("plain", p2, replace=True)
    store.close()
    last = sorted(segments(p1))[-1]
    assert last not in segments(p2) and served(reader, "plain", last) is None


def test_kept_files_go_when_their_time_is_up(tmp_path: Path) -> None:
    store, v1, _ = replaced_film(tmp_path, keep_s=1.0)
    reader = IndexReader(store.index_path, refresh_per_call=False)
    rel = sorted(segments(v1))[0]
    assert served(reader, "film", rel) is not None
    assert store.drop_replaced() == 0  # not yet
    time.sleep(1.1)
    assert store.drop_replaced() == 1
    assert served(reader, "film", rel) is None
    assert all(p.startswith(store.title("film").folder + "/") for p in on_disks(store))
    store.close()


def test_reconcile_keeps_the_kept_files_and_drops_them_once_due(tmp_path: Path) -> None:
    """A daemon that died before its grace ended: the next reconcile prunes the old folder to
    the kept files, and the reconcile after they are due deletes it."""
    v1, v2 = version(tmp_path, 1), version(tmp_path, 2)
    store = make_store(tmp_path, keep_s=3600, grace_s=3600)
    store.load("film", v1)
    old_folder = store.title("film").folder
    store.load("film", v2, replace=True)
    store.conn.close()  # killed: no close(), the retired folder is whole
    for disk in store.disks:
        old = disk.titles_dir / old_folder
        if old.exists():
            when = time.time() - 3600
            os.utime(old, (when, when))
    store = make_store(tmp_path, keep_s=3600)
    reconcile(store)
    kept = {p.partition("/")[2] for p in on_disks(store) if p.startswith(old_folder + "/")}
    assert kept == set(segments(v1))
    reader = IndexReader(store.index_path, refresh_per_call=False)
    rel = sorted(segments(v1))[0]
    assert served(reader, "film", rel) == segments(v1)[rel]
    # Due a second ago (0 would read as a deadline set at 1970, before NTP: kept on).
    store.conn.execute("UPDATE superseded SET until = ?", (time.time() - 1,))
    reconcile(store)
    assert not any(p.startswith(old_folder + "/") for p in on_disks(store))
    assert served(reader, "film", rel) is None
    store.close()


def test_kept_files_make_way_for_a_load(tmp_path: Path) -> None:
    v1, v2 = version(tmp_path, 1), version(tmp_path, 2)
    other = make_title(tmp_path / "o", "other", sizes=SIZES, seed=3, content_named=True)
    # 810,000 below the high watermark: two versions (about 347,000 each) fit, not three.
    store = make_store(tmp_path, max_bytes=900_000, disks_n=1)
    store.load("film", v1)
    store.load("film", v2, replace=True)
    used = sum(u.used for u in store.usage())
    assert used >= sum(SIZES) * 2  # the kept segments count as used
    store.load("other", other)  # fits only once the kept segments are dropped
    reader = IndexReader(store.index_path, refresh_per_call=False)
    assert served(reader, "film", sorted(segments(v1))[0]) is None
    assert served(reader, "other", sorted(segments(other))[0]) is not None
    third = make_title(tmp_path / "t", "third", sizes=SIZES, seed=4)
    with pytest.raises(CapacityError):  # nothing kept left to drop: refused as before
        store.load("third", third)
    store.close()


def test_removing_a_title_drops_its_kept_files(tmp_path: Path) -> None:
    store, _, _ = replaced_film(tmp_path)
    store.remove("film")
    assert on_disks(store) == set()
    assert store.conn.execute("SELECT COUNT(*) FROM superseded").fetchone()[0] == 0
    store.close()


def test_a_name_back_in_the_current_version_serves_from_it(tmp_path: Path) -> None:
    """v1, then v2, then v1 again: v1's names are current again, served from the newest
    folder; v1's first folder goes, and v2's segments are kept."""
    v1, v2 = version(tmp_path, 1), version(tmp_path, 2)
    store = make_store(tmp_path)
    reader = IndexReader(store.index_path, refresh_per_call=False)
    store.load("film", v1)
    first = store.title("film").folder
    store.load("film", v2, replace=True)
    second = store.title("film").folder
    store.load("film", v1, replace=True)
    current = store.title("film").folder
    store.close()
    rel = sorted(segments(v1))[0]
    found = reader.locate("film", rel)
    assert found is not None and f"/{current}/" in found.path.as_posix()
    folders = {p.partition("/")[0] for p in on_disks(store)}
    assert first not in folders and {second, current} <= folders
    assert served(reader, "film", sorted(segments(v2))[0]) == segments(v2)[sorted(segments(v2))[0]]


def kept_version(store: Store, title_id: str, disk: int, size: int, until: float) -> str:
    """An old version's kept segment on one disk, as a replace leaves it (its file and
    its row), for capacity cases that need the kept bytes on a chosen disk."""
    folder = f"{title_id}~{int(until) % 10**8:08x}"
    rel = f"v0/seg_{int(until) % 10**10:010x}_00000.m4s"
    d = store.disks[disk]
    path = d.titles_dir / folder / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(b"k" * size)
    with store.conn:
        store.conn.execute(
            "INSERT INTO superseded VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (title_id, rel, d.id, folder, size, "0" * 64, path.stat().st_mtime_ns, until),
        )
    return folder


def kept_folders(store: Store) -> set[str]:
    rows = store.conn.execute("SELECT DISTINCT folder FROM superseded").fetchall()
    return {folder for (folder,) in rows}


def test_a_load_that_cannot_fit_anyway_leaves_the_kept_files(tmp_path: Path) -> None:
    v1, v2 = version(tmp_path, 1), version(tmp_path, 2)
    big = make_title(tmp_path / "b", "big", sizes=[400_000] * 4, seed=5, content_named=True)
    store = make_store(tmp_path, max_bytes=900_000, disks_n=1)
    store.load("film", v1)
    store.load("film", v2, replace=True)
    before = kept_folders(store)
    assert before
    with pytest.raises(CapacityError):
        store.load("big", big)
    with pytest.raises(CapacityError):
        store.check_room("big", {"v0/a": 1_600_000}, 0.0)
    assert kept_folders(store) == before  # players on film's old version still play
    store.close()


def test_the_fills_room_check_frees_kept_files_oldest_first_as_needed(tmp_path: Path) -> None:
    """The fill stages a title's files before `load`: the room must be free when it asks,
    and only the kept files whose room it needs go, the soonest due first."""
    store = make_store(tmp_path, max_bytes=1_000_000)  # 900,000 below the high watermark
    now = time.time()
    older = kept_version(store, "a", 0, 300_000, now + 100)
    newer = kept_version(store, "b", 0, 300_000, now + 200)
    other = kept_version(store, "c", 1, 300_000, now + 50)  # the soonest due, another disk
    placed = store.placer("news", 0.0)
    on_d0 = [f"v0/{i}.m4s" for i in range(400) if placed(f"v0/{i}.m4s") == store.disks[0].id]
    store.check_room("news", dict.fromkeys(on_d0[:3], 100_000), 0.0)  # 300,000: room
    assert kept_folders(store) == {older, newer, other}
    store.check_room("news", dict.fromkeys(on_d0[:5], 100_000), 0.0)  # one version's room
    assert kept_folders(store) == {newer, other}
    store.close()


def test_a_disk_with_room_only_in_kept_files_still_takes_its_share(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_bytes=500_000)  # 450,000 below the high watermark each
    kept_version(store, "old", 0, 450_000, time.time() + 3600)  # disk 0 full of kept bytes
    # 600,000 bytes in 60 files: only fits across both disks (about 300,000 on each, the
    # hash's spread being a few tens of thousands).
    news = make_title(tmp_path / "n", "news", sizes=[10_000] * 60, seed=6, content_named=True)
    row = store.load("news", news)
    assert row.state == "ready"
    assert {d for t in store.listing() for d in t.disks} == {d.id for d in store.disks}
    assert kept_folders(store) == set()
    store.close()


def test_kept_files_follow_a_disk_renamed_in_the_config(tmp_path: Path) -> None:
    store, v1, _ = replaced_film(tmp_path)
    store.close()
    old = segments(v1)
    (tmp_path / "disk1").rename(tmp_path / "disk1b")
    disks = (
        DiskConfig(path=tmp_path / "disk0", tier="ssd"),
        DiskConfig(path=tmp_path / "disk1b", tier="ssd"),
    )
    config = StorageConfig(disks=disks, index=tmp_path / "var" / "index.sqlite")
    store = Store(config, grace_s=0)
    reconcile(store)
    reconcile(store)  # and again, after the old folder's grace: nothing kept is pruned
    reader = IndexReader(store.index_path, refresh_per_call=False)
    assert {rel: served(reader, "film", rel) for rel in old} == old
    store.close()

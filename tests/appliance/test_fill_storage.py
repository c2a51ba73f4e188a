"""The fill's storage adapter on a real Store: held titles, a disk taken out of service
(its titles stop serving, the fill fetches them again), a returned disk re-verified, and
the hand-off of a verified staging folder (moved in on one filesystem, copied across)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance.disks import LoadError
from appliance.fill.downloader import FillError
from appliance.fill.layout import STALE_AFTER_S, StagingLayout, disk_staging, stale_folders
from appliance.fill.storage import StoreStorage, mark_disk_missing, restore_disk
from appliance.index import IndexReader, file_path, title_files
from appliance.repair import reconcile, verify
from appliance.store import Store
from edgeflix import titlefiles
from tests.appliance.storage_fixtures import make_title, storage_toml

SIZES = tuple(20_000 + i * 1000 for i in range(16))


def _setup(tmp_path: Path) -> tuple[Store, StoreStorage, Path]:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    adapter = StoreStorage(cfg.storage)
    folder = make_title(tmp_path / "src", "bunny", SIZES)
    adapter.load("bunny", StagingLayout(folder))
    return adapter.store, adapter, folder


def _disk_with_files(store: Store) -> str:
    return next(
        d.id for d in store.disks if any(p.is_file() for p in (d.titles_dir / "bunny").rglob("*"))
    )


def test_held_and_disk_out_then_back(tmp_path: Path) -> None:
    store, adapter, _ = _setup(tmp_path)
    try:
        digest = adapter.held()["bunny"]
        disk = _disk_with_files(store)
        assert mark_disk_missing(store, disk) == ["bunny"]
        assert adapter.held() == {}  # incomplete: the fill will fetch it again
        reader = IndexReader(store.config.index)
        try:
            lost = [f.path for f in title_files(store.conn, "bunny") if f.disk == disk]
            assert lost and all(reader.locate("bunny", p) is None for p in lost)  # 404s
        finally:
            reader.close()
        ready, still_missing = restore_disk(store, disk)
        assert ready == ["bunny"] and still_missing == []
        assert adapter.held() == {"bunny": digest}
    finally:
        adapter.close()


def test_returned_disk_with_a_damaged_file_stays_out(tmp_path: Path) -> None:
    store, adapter, _ = _setup(tmp_path)
    try:
        disk = _disk_with_files(store)
        mark_disk_missing(store, disk)
        victim = next(p for p in (Path(disk) / "titles" / "bunny").rglob("*.m4s"))
        victim.write_bytes(b"x" * victim.stat().st_size)
        ready, still_missing = restore_disk(store, disk)
        assert ready == [] and len(still_missing) == 1
        assert adapter.held() == {}
        # What the next fill does: a full reload, from a fresh staging folder (the first
        # load moved the files out of `folder`).
        adapter.load("bunny", StagingLayout(make_title(tmp_path / "again", "bunny", SIZES)))
        assert "bunny" in adapter.held()
    finally:
        adapter.close()


def _inodes(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_ino for p in folder.rglob("*") if p.is_file()
    }


def _stored(store: Store, title_id: str) -> dict[str, Path]:
    reader = IndexReader(store.config.index)
    try:
        out = {}
        for entry in store.conn.execute("SELECT path FROM files WHERE title = ?", (title_id,)):
            found = reader.locate(title_id, entry[0])
            assert found is not None
            out[entry[0]] = found.path
        return out
    finally:
        reader.close()


def test_verified_staging_on_the_same_filesystem_is_moved_in(tmp_path: Path) -> None:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    adapter = StoreStorage(cfg.storage)
    try:
        folder = make_title(tmp_path / "staging", "bunny", SIZES)
        model, digest = titlefiles.read(folder)
        before = _inodes(folder)
        adapter.load("bunny", StagingLayout(folder))
        stored = _stored(adapter.store, "bunny")
        assert set(stored) == set(before) == {e.path for e in model.files} | {"files.json"}
        # The very same inodes: renamed, not copied; nothing of them is left in staging.
        assert {p: path.stat().st_ino for p, path in stored.items()} == before
        assert not [p for p in folder.rglob("*") if p.is_file()]
        assert adapter.held() == {"bunny": digest}
        assert verify(adapter.store).findings == []
        assert reconcile(adapter.store).findings == []
    finally:
        adapter.close()


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test's tmp_path")
    with tempfile.TemporaryDirectory(dir=shm) as name:
        yield Path(name)


def test_verified_staging_on_another_filesystem_is_copied(
    tmp_path: Path, other_filesystem: Path
) -> None:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    adapter = StoreStorage(cfg.storage)
    try:
        folder = make_title(other_filesystem, "bunny", SIZES)
        before = _inodes(folder)
        adapter.load("bunny", StagingLayout(folder))
        stored = _stored(adapter.store, "bunny")
        assert _inodes(folder) == before  # the source is untouched
        for rel, path in stored.items():
            assert path.read_bytes() == (folder / rel).read_bytes()
        assert "bunny" in adapter.held()
        assert verify(adapter.store).findings == []
    finally:
        adapter.close()


def test_adopt_still_checks_sizes(tmp_path: Path) -> None:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    store = Store(cfg.storage)
    try:
        folder = make_title(tmp_path / "staging", "bunny", SIZES)
        victim = next(folder.rglob("*.m4s"))
        victim.write_bytes(victim.read_bytes()[:-1])
        with pytest.raises(LoadError, match=r"files\.json says"):
            store.load("bunny", folder, adopt_verified=True)
        assert store.listing() == []
        assert not [p for d in store.disks for p in d.titles_dir.rglob("*") if p.is_file()]
    finally:
        store.close()


def test_adopt_failing_half_way_leaves_nothing_visible(tmp_path: Path) -> None:
    """A file that cannot take its place (a folder squats its name) after others were moved
    in: the load fails, the title is not listed, no file of it remains on the disks, and
    the moved files are back in staging (the very files: a retry need not fetch them)."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    store = Store(cfg.storage)
    try:
        folder = make_title(tmp_path / "staging", "bunny", SIZES)
        for disk in store.disks:  # files.json is placed last of all; block it everywhere
            (disk.titles_dir / "bunny" / "files.json" / "squat").mkdir(parents=True)
        before = _inodes(folder)
        with pytest.raises(LoadError):
            store.load("bunny", folder, adopt_verified=True)
        assert _inodes(folder) == before
        assert store.listing() == []
        assert not [p for d in store.disks for p in d.titles_dir.rglob("*") if p.is_file()]
        assert reconcile(store).findings == []
    finally:
        store.close()


def test_each_file_is_staged_on_its_disk_and_renamed_in(tmp_path: Path) -> None:
    """The layout puts every file in the staging folder of the disk the store will place it
    on (both disks get some), and the hand-off moves those very files in (same inode)."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    adapter = StoreStorage(cfg.storage)
    source = make_title(tmp_path / "src", "bunny", SIZES)
    model = titlefiles.read(source)[0]
    layout = adapter.staging("bunny", tmp_path / "staging" / "bunny")
    place = adapter.store.placer("bunny", 0.0)
    inodes = {}
    layout.folder.mkdir(parents=True)
    shutil.copy(source / titlefiles.FILES_JSON, layout.folder / titlefiles.FILES_JSON)
    for entry in model.files:  # as the downloader leaves them: verified, final names
        staged = layout.file(entry.path)
        assert Path(place(entry.path)) / ".staging" / "bunny" in staged.parents
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / entry.path, staged)
        inodes[entry.path] = staged.stat().st_ino
    assert len({place(e.path) for e in model.files}) == 2
    adapter.load("bunny", layout)
    stored = {
        f.path: file_path(f.disk, "bunny", f.path) for f in title_files(adapter.store.conn, "bunny")
    }
    assert {p: stored[p].stat().st_ino for p in inodes} == inodes
    assert not any(p.is_file() for folder in layout.disk_folders for p in folder.rglob("*"))
    assert adapter.held() == {"bunny": titlefiles.read(source)[1]}
    adapter.close()


def test_long_idle_staging_of_titles_no_one_fetches_is_swept(tmp_path: Path) -> None:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    adapter = StoreStorage(cfg.storage)
    now = 1_900_000_000.0
    disks = [d.path for d in adapter.store.disks]
    made = {}
    for name, disk, age_days in (("dropped", 0, 3), ("fresh", 0, 0.5), ("wanted", 1, 9)):
        folder = disk_staging(disks[disk], name)
        part = folder / "v0" / "seg0001.m4s.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"x" * 100)
        for path in (part, part.parent, folder):
            os.utime(path, (now - age_days * 86400, now - age_days * 86400))
        made[name] = folder
    assert adapter.sweep_staging(["wanted"], now) == ["dropped"]
    assert not made["dropped"].exists() and made["fresh"].exists() and made["wanted"].exists()
    assert adapter.sweep_staging(["wanted"], now) == []
    adapter.close()


def test_stale_folders_rule() -> None:
    now = 10 * STALE_AFTER_S
    ages = {Path("/d/.staging/a"): now - STALE_AFTER_S, Path("/d/.staging/b"): now - 1.0}
    ages[Path("/e/.staging/a")] = now - 2 * STALE_AFTER_S
    assert stale_folders(ages, keep=(), now=now) == [Path("/d/.staging/a"), Path("/e/.staging/a")]
    assert stale_folders(ages, keep=("a",), now=now) == []


def test_one_fill_per_store_at_a_time(tmp_path: Path) -> None:
    """The daemon's fill and an `appliance fill` share the disks' staging: the second one
    to start is refused in one line while the first runs, and may run once it is done."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd",)))
    first, second = StoreStorage(cfg.storage), StoreStorage(cfg.storage)
    with (
        first.exclusive(),
        pytest.raises(FillError, match="another fill is running"),
        second.exclusive(),
    ):
        pass
    with second.exclusive():
        pass

"""The store against damage done behind its back: folders, links and foreign files in a stored
file's place, a damaged or locked index, a damaged hit-count file, a lost index. Reconcile and
verify must report and clean up (never follow a link, never raise), the index must answer with
a StorageError, and a lost index must not cost the titles on the disks."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from appliance.config import DiskConfig, StorageConfig
from appliance.disks import DiskError, LoadError, StorageError
from appliance.fill.storage import mark_disk_missing, restore_disk
from appliance.index import INCOMPLETE, MISSING, READY, IndexReader, connect_writer
from appliance.mover import MoverThread, RateBook, hits_path, title_rate
from appliance.repair import reconcile, verify
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title


def make_store(tmp_path: Path, tiers: tuple[str, ...] = ("hdd",)) -> Store:
    disks = []
    for i, tier in enumerate(tiers):
        path = tmp_path / f"disk{i}-{tier}"
        path.mkdir(parents=True, exist_ok=True)
        disks.append(DiskConfig(path=path, tier=tier))  # type: ignore[arg-type]
    config = StorageConfig(disks=tuple(disks), index=tmp_path / "var" / "index.sqlite")
    return Store(config)


@pytest.fixture
def loaded(tmp_path: Path) -> Store:
    store = make_store(tmp_path)
    store.load("bunny", make_title(tmp_path / "src", "bunny"))
    return store


def stored(store: Store, rel: str, title: str = "bunny") -> Path:
    return store.disks[0].titles_dir / title / rel


def test_a_folder_in_a_files_place_is_dropped_not_a_crash(loaded: Store) -> None:
    seg = stored(loaded, "v0/seg0000.m4s")
    seg.unlink()
    (seg / "deep").mkdir(parents=True)
    (seg / "deep" / "f").write_bytes(b"x")
    report = reconcile(loaded)
    assert [(f.path, f.problem.split(";")[0], f.damage) for f in report.findings] == [
        ("v0/seg0000.m4s", "not a regular file", True)
    ]
    assert not seg.exists()
    assert loaded.title("bunny").state == INCOMPLETE
    assert reconcile(loaded).findings == []  # settled


def test_links_are_dropped_and_their_targets_left_alone(loaded: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # A link to a file of the very same size and content: only the link itself gives it away.
    twin = outside / "twin.m4s"
    twin.write_bytes(stored(loaded, "v1/seg0001.m4s").read_bytes())
    stored(loaded, "v1/seg0001.m4s").unlink()
    stored(loaded, "v1/seg0001.m4s").symlink_to(twin)
    # A folder of the title replaced by a link to a folder holding a same-named file.
    (outside / "v0").mkdir()
    (outside / "v0" / "seg0000.m4s").write_bytes(stored(loaded, "v0/seg0000.m4s").read_bytes())
    for p in stored(loaded, "v0").iterdir():
        p.unlink()
    stored(loaded, "v0").rmdir()
    stored(loaded, "v0").symlink_to(outside / "v0")
    # And a link named like a title.
    (loaded.disks[0].titles_dir / "evil").symlink_to(outside)

    report = reconcile(loaded)
    problems = {f.path: f.problem.split(";")[0] for f in report.findings if f.damage}
    assert problems["v1/seg0001.m4s"] == "a symbolic link in the file's place"
    assert problems["v0/seg0000.m4s"] == "reached through a symbolic link"
    assert not stored(loaded, "v1/seg0001.m4s").is_symlink()
    assert not stored(loaded, "v0").exists()  # the link swept, not what it pointed to
    assert not (loaded.disks[0].titles_dir / "evil").exists()
    assert twin.exists() and (outside / "v0" / "seg0000.m4s").exists()
    reader = IndexReader(loaded.index_path)
    assert reader.locate("bunny", "v1/seg0001.m4s") is None
    assert reader.locate("bunny", "master.m3u8") is not None


def test_verify_reports_a_link_even_to_identical_bytes(loaded: Store, tmp_path: Path) -> None:
    seg = stored(loaded, "v0/seg0002.m4s")
    twin = tmp_path / "twin"
    twin.write_bytes(seg.read_bytes())
    seg.unlink()
    seg.symlink_to(twin)
    report = verify(loaded)
    assert [f.problem.split(";")[0] for f in report.findings] == [
        "a symbolic link in the file's place"
    ]
    assert twin.exists()


def test_an_undeletable_file_is_reported_and_stays_out_of_service(loaded: Store) -> None:
    # A file where the segment's folder was: stat and unlink both fail (ENOTDIR), which must
    # be reported (tests run as root, so no chmod makes an unlink fail).
    seg = stored(loaded, "v0/seg0000.m4s")
    for p in seg.parent.iterdir():
        p.unlink()
    seg.parent.rmdir()
    seg.parent.write_bytes(b"a file where the folder was")
    report = reconcile(loaded)
    assert {f.path for f in report.findings if f.damage} >= {"v0/seg0000.m4s"}
    rows = loaded.conn.execute(
        "SELECT state FROM files WHERE title = 'bunny' AND path = 'v0/seg0000.m4s'"
    ).fetchone()
    assert rows == (MISSING,)
    assert not seg.parent.exists()  # swept as a stray


def test_a_damaged_index_is_a_storage_error(tmp_path: Path, loaded: Store) -> None:
    loaded.close()
    index = loaded.index_path
    with sqlite3.connect(index) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(index.read_bytes())
    raw[4096 : 4096 + 3000] = os.urandom(3000)
    index.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match=r"is damaged .*move it .* aside"):
        connect_writer(index)


def test_a_locked_index_is_a_storage_error(loaded: Store) -> None:
    other = sqlite3.connect(loaded.index_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    loaded.conn.execute("PRAGMA busy_timeout = 100")
    try:
        with pytest.raises(StorageError, match="locked by another process"):
            loaded.remove("bunny")
    finally:
        other.execute("ROLLBACK")
        other.close()
    loaded.conn.execute("PRAGMA busy_timeout = 30000")
    assert loaded.title("bunny").state == READY  # nothing half-done


def test_a_damaged_hits_file_starts_over(tmp_path: Path, loaded: Store) -> None:
    path = hits_path(loaded.index_path)
    path.write_bytes(os.urandom(9000))
    book = RateBook(loaded.index_path, 60.0)
    assert book.rate("bunny") == 0.0
    book.close()


def test_a_lost_index_adopts_complete_titles_and_sweeps_the_rest(tmp_path: Path) -> None:
    store = make_store(tmp_path, ("ssd", "hdd"))
    store.load("bunny", make_title(tmp_path / "src", "bunny"), rate=0.0)
    store.load("bikes", make_title(tmp_path / "src", "bikes"), rate=0.0)
    before = {(f[0], f[1]): f for f in store.conn.execute("SELECT * FROM files")}
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.index_path}{suffix}").unlink(missing_ok=True)
    (store.disks[1].titles_dir / "bikes" / "master.m3u8").unlink()

    fresh = Store(store.config)
    report = reconcile(fresh)
    assert {(f.title, f.problem.split(" (")[0]) for f in report.findings} >= {
        ("bunny", "adopted from its files on the hdd tier")
    }
    assert [t.id for t in fresh.listing()] == ["bunny"]
    assert fresh.title("bunny").state == READY and fresh.title("bunny").tier == "hdd"
    after = {(f[0], f[1]): f for f in fresh.conn.execute("SELECT * FROM files")}
    assert after == {k: v for k, v in before.items() if k[0] == "bunny"}
    assert not (store.disks[1].titles_dir / "bikes").exists()
    assert verify(fresh).findings == []


def test_files_of_a_load_in_progress_are_neither_adopted_nor_swept(tmp_path: Path) -> None:
    # Another process holds the title's lock (flock: a second descriptor conflicts even in
    # this process) while its first files land: reconcile must leave them alone.
    store = make_store(tmp_path)
    src = make_title(tmp_path / "src", "bunny")
    top = store.disks[0].titles_dir / "bunny"
    with store.locks.hold("bunny"):
        top.mkdir()
        (top / "files.json").write_bytes((src / "files.json").read_bytes())
        report = reconcile(Store(store.config))
    assert report.findings == [] and report.busy == ["bunny"]
    assert (top / "files.json").exists() and store.listing() == []


def test_files_of_a_disk_back_from_out_of_service_wait_for_restore(tmp_path: Path) -> None:
    # The daemon took a disk out (its files marked missing), then stopped; the disk is back
    # when a CLI command reconciles: its files must wait for the daemon's re-verification,
    # not be swept as strays (that cost a full re-fill of a disk that was only unplugged).
    store = make_store(tmp_path, ("ssd", "ssd"))
    store.load("bunny", make_title(tmp_path / "src", "bunny", sizes=[9_000] * 16))
    lost = store.disks[1]
    kept = sorted(p for p in lost.titles_dir.rglob("*") if p.is_file())
    assert kept, "the title must be spread over both disks"
    mark_disk_missing(store, lost.id)
    assert store.title("bunny").state == INCOMPLETE

    report = reconcile(Store(store.config))
    assert report.findings == []
    assert sorted(p for p in lost.titles_dir.rglob("*") if p.is_file()) == kept
    ready, bad = restore_disk(store, lost.id)
    assert ready == ["bunny"] and bad == []
    assert store.title("bunny").state == READY


def test_loading_from_the_store_itself_is_refused(loaded: Store) -> None:
    # `load --replace --from <its own stored folder>` used to purge the title, then fail to
    # copy from the folder it had just deleted: the title was gone.
    with pytest.raises(LoadError, match="inside the store"):
        loaded.load("bunny", stored(loaded, ""), replace=True)
    assert loaded.title("bunny").state == READY
    assert verify(loaded).findings == []


def test_a_linked_titles_folder_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    # `titles` inside a disk made a link to some other folder: reconcile used to delete every
    # folder there named like a title id, as strays.
    store = make_store(tmp_path)
    store.close()
    victim = tmp_path / "victim"
    (victim / "important").mkdir(parents=True)
    (victim / "important" / "data").write_bytes(b"precious")
    titles = store.disks[0].titles_dir
    titles.rmdir()
    titles.symlink_to(victim)
    with pytest.raises(DiskError, match="symbolic link"):
        Store(store.config)
    assert (victim / "important" / "data").read_bytes() == b"precious"


def test_an_index_inside_a_disks_titles_folder_is_refused(tmp_path: Path) -> None:
    # Reconcile took the index's folder for a stray title and deleted the index (and the
    # lock files of the command running).
    disk = tmp_path / "disk0"
    (disk / "titles").mkdir(parents=True)
    index = disk / "titles" / "var" / "index.sqlite"
    config = StorageConfig(disks=(DiskConfig(path=disk, tier="hdd"),), index=index)
    with pytest.raises(DiskError, match=r"index .* is inside"):
        Store(config)
    assert not index.exists()


def test_a_disk_inside_another_disks_titles_folder_is_refused(tmp_path: Path) -> None:
    outer = tmp_path / "disk0"
    inner = outer / "titles" / "more"
    inner.mkdir(parents=True)
    (inner / "keep").write_bytes(b"x")
    config = StorageConfig(
        disks=(DiskConfig(path=outer, tier="hdd"), DiskConfig(path=inner, tier="hdd")),
        index=tmp_path / "var" / "index.sqlite",
    )
    with pytest.raises(DiskError, match="inside disk"):
        Store(config)
    assert (inner / "keep").exists()


def test_a_broken_lock_file_is_a_storage_error(loaded: Store, tmp_path: Path) -> None:
    lock = loaded.locks.folder / "other.lock"
    lock.mkdir()
    with pytest.raises(StorageError, match="cannot open the lock file"):
        loaded.load("other", make_title(tmp_path / "src", "other"))
    assert [t.id for t in loaded.listing()] == ["bunny"]


def test_a_disk_whose_mount_path_changed_keeps_its_titles(tmp_path: Path) -> None:
    # The index names disks by path; with the path changed in the config, every file was
    # "missing" on the old path and then swept as a stray from the new one.
    store = make_store(tmp_path)
    store.load("bunny", make_title(tmp_path / "src", "bunny"))
    store.close()
    old = store.disks[0].path
    new = tmp_path / "renamed"
    old.rename(new)
    config = StorageConfig(disks=(DiskConfig(path=new, tier="hdd"),), index=store.index_path)
    moved = Store(config)
    report = reconcile(moved)
    assert [f.problem for f in report.findings] == [f"8 files of {old} found on {new}"]
    assert moved.title("bunny").state == READY
    assert moved.listing()[0].disks == (str(new),)
    assert verify(moved).findings == []


def test_an_unopenable_hits_file_neither_fails_loads_nor_ends_tiering(loaded: Store) -> None:
    hits_path(loaded.index_path).mkdir()  # a folder where the hit counts live
    assert title_rate(loaded.index_path, 60.0, "bunny") == 0.0
    mover = MoverThread(loaded.config, interval_s=0.02)
    mover.start()
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and mover.is_alive():
            time.sleep(0.05)  # several failed rounds
        assert mover.is_alive(), "the tier mover died on the first failed round"
    finally:
        mover.stop(5)

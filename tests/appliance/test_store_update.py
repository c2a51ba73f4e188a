"""Title updates (`load --replace`, a fill of a new version): the new version is written beside
the old one and swapped in by one transaction, so the title is served all the way through;
failures and crashes at any point leave one whole version, and reconcile sweeps the rest."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from appliance.config import DiskConfig, StorageConfig
from appliance.disks import CapacityError, Disk, LoadError, StorageError
from appliance.folders import folder_title
from appliance.index import READY, IndexReader, get_title, title_files
from appliance.repair import reconcile
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title


def make_store(
    tmp_path: Path,
    max_bytes: int | None = None,
    tiers: tuple[str, ...] = ("ssd", "hdd", "hdd"),
    **kwargs: object,
) -> Store:
    disks = []
    for i, tier in enumerate(tiers):
        path = tmp_path / f"disk{i}-{tier}"
        path.mkdir(parents=True, exist_ok=True)
        disks.append(DiskConfig(path=path, tier=tier, max_bytes=max_bytes))
    config = StorageConfig(disks=tuple(disks), index=tmp_path / "var" / "index.sqlite")
    return Store(config, **kwargs)  # type: ignore[arg-type]


def loaded(tmp_path: Path, source: Path) -> tuple[Store, Disk]:
    """A store (no grace) holding `source` as bunny, and one disk that has some of it."""
    store = make_store(tmp_path, grace_s=0)
    store.load("bunny", source)
    return store, next(d for d in store.disks if (d.titles_dir / "bunny").is_dir())


def aged(path: Path, seconds: float = 3600) -> None:
    """Set a folder's mtime back, as if it had been retired (or left) that long ago."""
    when = time.time() - seconds
    os.utime(path, (when, when))


def folders(store: Store) -> list[str]:
    return sorted(
        {p.name for d in store.disks if d.titles_dir.is_dir() for p in d.titles_dir.iterdir()}
    )


def served(reader: IndexReader, rel: str) -> bytes | None:
    found = reader.locate("bunny", rel)
    return found.path.read_bytes() if found else None


@pytest.fixture
def versions(tmp_path: Path) -> tuple[Path, Path]:
    sizes = [30_000 + i * 1000 for i in range(10)]
    return (
        make_title(tmp_path / "v1", "bunny", sizes=sizes, seed=1),
        make_title(tmp_path / "v2", "bunny", sizes=sizes, seed=2),
    )


def test_the_old_version_serves_until_the_swap_and_goes_after_the_grace(
    tmp_path: Path, versions: tuple[Path, Path]
) -> None:
    v1, v2 = versions
    seg = "v0/seg0002.m4s"
    during: list[bytes | None] = []
    at_grace: list[tuple[float, bytes | None, list[str]]] = []
    reader = IndexReader(make_store(tmp_path).index_path)

    def grace(seconds: float) -> None:
        at_grace.append((seconds, served(reader, seg), folders(store)))

    store = make_store(tmp_path, sleep=grace)
    store.load("bunny", v1)
    assert folders(store) == ["bunny"]
    old = (v1 / seg).read_bytes()
    store.load("bunny", v2, replace=True, on_bytes=lambda n: during.append(served(reader, seg)))
    # Every file copied while the old version was still the one served, whole.
    assert len(during) == 12 and all(body == old for body in during)
    # Swapped: the new version is served; the old folder stays for its grace, for a request
    # that located one of its files just before the swap.
    assert served(reader, seg) == (v2 / seg).read_bytes()
    row = get_title(store.conn, "bunny")
    assert row is not None and row.state == READY and row.folder.startswith("bunny~")
    assert folder_title(row.folder) == "bunny"
    assert folders(store) == sorted(["bunny", row.folder])
    store.close()  # waits out what is left of the grace, then deletes the old folder
    ((seconds, body, kept),) = at_grace
    assert 0 < seconds <= 2.0 and body == (v2 / seg).read_bytes() and "bunny" in kept
    assert folders(store) == [row.folder]

    # A second update moves on to another folder; the first's goes at the next load, once
    # its grace is over (none here); rm removes whichever is current.
    store = make_store(tmp_path, grace_s=0)
    store.load("bunny", v1, replace=True)
    store.load("other", make_title(tmp_path / "other", "other"))
    (again,) = (f for f in folders(store) if f != "other")
    assert again != row.folder and served(reader, seg) == old
    store.remove("bunny")
    assert folders(store) == ["other"] and served(reader, seg) is None


def test_a_failed_update_keeps_the_old_version_and_leaves_nothing(
    tmp_path: Path, versions: tuple[Path, Path]
) -> None:
    v1, v2 = versions
    store = make_store(tmp_path, grace_s=0)
    first = store.load("bunny", v1)
    victim = v2 / "v1" / "seg0007.m4s"
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF  # same size, other bytes: found while copying, after other files are in
    victim.write_bytes(bytes(data))
    with pytest.raises(LoadError, match="SHA-256 mismatch"):
        store.load("bunny", v2, replace=True)
    assert folders(store) == ["bunny"]
    assert get_title(store.conn, "bunny") == first
    reader = IndexReader(store.index_path)
    assert served(reader, "v1/seg0007.m4s") == (v1 / "v1" / "seg0007.m4s").read_bytes()


def test_reconcile_sweeps_what_a_crash_mid_update_left(
    tmp_path: Path, versions: tuple[Path, Path]
) -> None:
    v1, v2 = versions
    store, disk = loaded(tmp_path, v1)
    # Killed while writing the new version: part of it in a folder the index never named.
    half = disk.titles_dir / "bunny~0badc0de"
    shutil.copytree(v2 / "v0", half / "v0")
    # Killed after another update's swap, before the old folder was deleted.
    store.load("bunny", v2, replace=True)
    shutil.copytree(v1, disk.titles_dir / "bunny")
    # Not a folder of this title (nor of any): left alone.
    (disk.titles_dir / "bunny~not-hex").mkdir()
    for leftover in (half, disk.titles_dir / "bunny"):
        aged(leftover)  # the crash was a while ago
    report = reconcile(store)
    assert sorted(str(f) for f in report.findings) == [
        "bunny: removed 12 files of an unfinished or replaced version (bunny)",
        "bunny: removed 5 files of an unfinished or replaced version (bunny~0badc0de)",
    ]
    current = get_title(store.conn, "bunny")
    assert current is not None
    assert folders(store) == sorted([current.folder, "bunny~not-hex"])
    assert (
        served(IndexReader(store.index_path), "v0/seg0000.m4s")
        == (v2 / "v0" / "seg0000.m4s").read_bytes()
    )
    assert reconcile(store).findings == []


def test_a_lost_index_adopts_the_version_loaded_last(
    tmp_path: Path, versions: tuple[Path, Path]
) -> None:
    """Killed during the grace, then the index lost: both versions are whole on the disks.
    The one loaded last wins, even when it is the older package (a rollback): a copy keeps
    its source's mtime, so files.json's mtime would pick the wrong one."""
    v1, v2 = versions
    for manifest, when in ((v1 / "files.json", 2_000_000_000), (v2 / "files.json", 1_000_000)):
        os.utime(manifest, (when, when))  # v2, loaded last, is the older package
    store = make_store(tmp_path, sleep=lambda s: None)  # the grace never ends: a kill in it
    store.load("bunny", v1)
    store.load("bunny", v2, replace=True)
    (current,) = [f for f in folders(store) if f != "bunny"]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.index_path}{suffix}").unlink(missing_ok=True)
    fresh = make_store(tmp_path, grace_s=0)
    report = reconcile(fresh)
    assert any("adopted" in str(f) for f in report.findings), report.findings
    row = get_title(fresh.conn, "bunny")
    assert row is not None and row.folder == current and row.state == READY
    reader = IndexReader(fresh.index_path)
    assert served(reader, "v1/seg0003.m4s") == (v2 / "v1" / "seg0003.m4s").read_bytes()
    # The other version was retired moments ago: a later reconcile sweeps it.
    assert folders(fresh) == sorted(["bunny", current])
    for disk in fresh.disks:
        if (disk.titles_dir / "bunny").exists():
            aged(disk.titles_dir / "bunny")
    reconcile(fresh)
    assert folders(fresh) == [current]


def test_a_version_in_its_grace_is_left_to_the_process_that_retired_it(
    tmp_path: Path, versions: tuple[Path, Path]
) -> None:
    """Another process's reconcile (an `appliance load` during a fill) keeps the folder an
    update just retired: a request may still open a file there."""
    v1, v2 = versions
    store = make_store(tmp_path, grace_s=60)
    store.load("bunny", v1)
    store.load("bunny", v2, replace=True)
    other = make_store(tmp_path)
    assert reconcile(other).findings == []
    assert "bunny" in folders(other)


def test_a_retired_folder_made_current_again_is_not_deleted(
    tmp_path: Path, versions: tuple[Path, Path]
) -> None:
    """Within one process's grace, another removes the title and loads it afresh, into the
    bare id: the first process's clean-up must not delete it."""
    v1, v2 = versions
    fill = make_store(tmp_path, grace_s=60, sleep=lambda s: None)
    fill.load("bunny", v1)
    fill.load("bunny", v2, replace=True)  # retires folder "bunny"
    operator = make_store(tmp_path, grace_s=0)
    operator.remove("bunny")
    operator.load("bunny", v1)  # back in folder "bunny"
    fill.close()
    reader = IndexReader(operator.index_path)
    assert served(reader, "v0/seg0000.m4s") == (v1 / "v0" / "seg0000.m4s").read_bytes()
    assert reconcile(operator).findings == []


def test_without_room_for_both_versions_the_update_goes_in_place(
    tmp_path: Path, versions: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    v1, v2 = versions
    # One hdd disk (placement over several depends on their paths) of 550 kB, 495 kB below
    # its high watermark: one version (~357 kB) fits, two do not.
    store = make_store(tmp_path, max_bytes=550_000, tiers=("ssd", "hdd"), grace_s=0)
    store.load("bunny", v1)
    store.load("bunny", v2, replace=True)
    assert folders(store) == ["bunny"]
    assert "title.replace.in_place" in caplog.text
    reader = IndexReader(store.index_path)
    assert served(reader, "v0/seg0000.m4s") == (v2 / "v0" / "seg0000.m4s").read_bytes()


def test_a_tier_move_keeps_the_updated_folder(tmp_path: Path, versions: tuple[Path, Path]) -> None:
    v1, v2 = versions
    store = make_store(tmp_path, grace_s=0)
    store.load("bunny", v1)
    store.load("bunny", v2, replace=True)
    (folder,) = folders(store)
    assert store.move("bunny", "ssd", grace_s=0)
    ssd = next(d for d in store.disks if d.tier == "ssd")
    assert [p.name for p in ssd.titles_dir.iterdir()] == [folder]
    found = IndexReader(store.index_path).locate("bunny", "v0/seg0000.m4s")
    assert found is not None and found.tier == "ssd" and ssd.titles_dir in found.path.parents
    assert found.path.read_bytes() == (v2 / "v0" / "seg0000.m4s").read_bytes()
    assert reconcile(store).findings == []


def test_an_index_from_before_versions_gains_the_column_and_serves_on(
    tmp_path: Path, versions: tuple[Path, Path]
) -> None:
    v1, _ = versions
    store = make_store(tmp_path)
    store.load("bunny", v1)
    store.close()
    # Rebuild the titles table as an older release made it: no folder column.
    with sqlite3.connect(store.index_path) as conn:
        conn.executescript(
            "PRAGMA foreign_keys = OFF;"
            "CREATE TABLE old_titles (id TEXT PRIMARY KEY, digest TEXT NOT NULL, state TEXT NOT "
            "NULL, tier TEXT NOT NULL, bytes INTEGER NOT NULL, loaded_at FLOAT NOT NULL);"
            "INSERT INTO old_titles SELECT id, digest, state, tier, bytes, loaded_at FROM titles;"
            "DROP TABLE titles; ALTER TABLE old_titles RENAME TO titles;"
        )
    again = make_store(tmp_path)
    row = get_title(again.conn, "bunny")
    assert row is not None and row.folder == "bunny"
    assert reconcile(again).findings == []
    reader = IndexReader(again.index_path)
    assert served(reader, "v0/seg0000.m4s") == (v1 / "v0" / "seg0000.m4s").read_bytes()


@pytest.mark.parametrize(
    ("name", "title"),
    [
        ("bunny", "bunny"),
        ("bunny~0a1b", "bunny"),
        ("a.b-c_d~ff", "a.b-c_d"),
        ("bunny~", None),
        ("bunny~XYZ", None),
        ("bunny~0a~0b", None),
        ("..~0a", None),
        (".staging", None),
        ("~0a", None),
    ],
)
def test_folder_names_map_to_their_title(name: str, title: str | None) -> None:
    assert folder_title(name) == title


def on_disk(store: Store) -> int:
    """Bytes of every file under the disks' titles folders, retired versions included."""
    files = [p for d in store.disks for p in d.titles_dir.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def test_a_version_in_its_grace_counts_against_max_bytes(
    tmp_path: Path, versions: tuple[Path, Path]
) -> None:
    v1, v2 = versions
    # One hdd disk with 810 kB below its high watermark: two versions (~357 kB each) fit
    # beside each other, three do not.
    store = make_store(
        tmp_path, max_bytes=900_000, tiers=("ssd", "hdd"), grace_s=600, sleep=lambda _s: None
    )
    store.load("bunny", v1)
    store.load("bunny", v2, replace=True)  # v1 retired, in its grace
    store.load("bunny", v1, replace=True)  # v2 retired too: no room for a third beside
    assert on_disk(store) <= 810_000
    reader = IndexReader(store.index_path)
    assert served(reader, "v0/seg0000.m4s") == (v1 / "v0" / "seg0000.m4s").read_bytes()
    store.close()


def test_staged_files_take_room_under_max_bytes(tmp_path: Path) -> None:
    """Under max_bytes only indexed bytes count as used: a file staged on the disk's own
    filesystem (the fill's) is not yet counted, so renaming it in takes quota like a copy."""
    sizes = [30_000 + i * 1000 for i in range(10)]
    first = make_title(tmp_path / "src", "first", sizes=sizes)
    second = make_title(tmp_path / "staging", "second", sizes=sizes)
    # One tier: with two, the title would go to the other tier, which has room.
    store = make_store(tmp_path, max_bytes=550_000, tiers=("hdd",), grace_s=0)
    store.load("first", first)
    with pytest.raises(CapacityError):
        store.load("second", second, adopt_verified=True)
    assert get_title(store.conn, "second") is None
    assert on_disk(store) <= 495_000
    store.close()


def test_purging_frees_only_files_no_hard_link_keeps(
    tmp_path: Path, versions: tuple[Path, Path]
) -> None:
    """On a whole filesystem, the in-place path counts the old version as freed room; a
    file the fill hard-linked into staging (reused) stays allocated, so it does not count."""
    v1, _ = versions
    store, disk = loaded(tmp_path, v1)
    kept = next(p for p in (disk.titles_dir / "bunny").rglob("*.m4s"))
    (tmp_path / "staging").mkdir()
    os.link(kept, tmp_path / "staging" / kept.name)
    freed = store.capacity.freeing("bunny", {})
    total = sum(f.size for f in title_files(store.conn, "bunny"))
    assert sum(freed.values()) == total - kept.stat().st_size
    assert store.capacity.freeing(None, {disk.id: 5}) == {disk.id: 5}
    store.close()


@pytest.mark.parametrize("update", [False, True])
@pytest.mark.parametrize("fails_at", ["files.json", "index"])
def test_a_failed_adopting_load_puts_the_moved_files_back(
    tmp_path: Path,
    versions: tuple[Path, Path],
    update: bool,
    fails_at: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fill's staged files are moved in; when the load fails (the disk fills up at
    files.json, which goes in last; or the index write after every file is in) they go back
    to staging, so the next fill resumes instead of downloading them again."""
    v1, v2 = versions
    store = make_store(tmp_path, tiers=("hdd",), grace_s=0)
    if update:
        store.load("bunny", v1)
    staged = tmp_path / "staging" / "bunny"
    shutil.copytree(v2, staged)
    before = sorted(p.relative_to(staged) for p in staged.rglob("*") if p.is_file())
    if fails_at == "index":  # a real SQLite failure of the transaction that makes it live
        conn = sqlite3.connect(store.index_path)
        conn.execute(
            "CREATE TRIGGER full BEFORE INSERT ON files BEGIN SELECT RAISE(ABORT, 'full'); END"
        )
        conn.commit()
        conn.close()
    else:
        rename = os.rename

        def full_at_files_json(src: str | Path, dst: str | Path) -> None:
            if Path(dst).name == "files.json" and staged in Path(src).parents:
                raise OSError(errno.ENOSPC, "No space left on device")
            rename(src, dst)

        monkeypatch.setattr(os, "rename", full_at_files_json)
    with pytest.raises(StorageError):
        store.load("bunny", staged, adopt_verified=True, replace=update)
    monkeypatch.undo()
    assert sorted(p.relative_to(staged) for p in staged.rglob("*") if p.is_file()) == before
    assert folders(store) == (["bunny"] if update else [])
    store.close()

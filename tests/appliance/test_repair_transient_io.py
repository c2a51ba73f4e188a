"""A brief I/O error must not cost a title its files: reconcile and the scrub look at an
unreadable file once more after a wait before they drop it, nothing is deleted on the word of
a folder scan that could not read an entry, and the daemon's periodic reconcile takes back
files marked missing that are whole on their disk again (adopt.Readopt).

The errors are injected at the OS boundary (os.lstat, os.scandir, the hashing function), as a
failing disk gives them: no FUSE needed, and root can read a file whatever its mode."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import repair
from appliance.adopt import Readopt
from appliance.config import DiskConfig, StorageConfig
from appliance.index import INCOMPLETE, MISSING, OK, READY, get_title, title_files, transaction
from appliance.repair import RETRY_AFTER_S, reconcile
from appliance.scrub import ScrubState, scrub_step
from appliance.store import Store
from appliance.sweeper import SweepThread
from tests.appliance.storage_fixtures import make_title

EIO = OSError(errno.EIO, os.strerror(errno.EIO))


def _config(tmp_path: Path) -> StorageConfig:
    disks = []
    for i in range(2):
        path = tmp_path / f"disk{i}"
        path.mkdir(parents=True, exist_ok=True)
        disks.append(DiskConfig(path=path, tier="hdd"))
    return StorageConfig(disks=tuple(disks), index=tmp_path / "var" / "index.sqlite")


def _loaded(tmp_path: Path, *titles: str) -> Store:
    store = Store(_config(tmp_path), grace_s=0)
    for title in titles:
        store.load(title, make_title(tmp_path / "src", title))
    return store


def _states(store: Store, title: str) -> tuple[str, dict[str, str]]:
    row = get_title(store.conn, title)
    assert row is not None
    return row.state, {f.path: f.state for f in title_files(store.conn, title)}


class FailingFolder:
    """A folder (and all below it) whose stat and listing fail with EIO while `failing`, as
    the reviewer's FUSE disk did to one title's rendition folder. `heal` is the disk coming
    back; `once` heals each path after its first failed stat (an error that lasts no longer
    than one look)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folders: list[Path], once: bool = False):
        self.tops = [str(f) for f in folders]
        self.failing, self.once = True, once
        self.failed: set[str] = set()
        real_lstat, real_scandir = os.lstat, os.scandir

        def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            self._check(path)
            return real_lstat(path, *args, **kwargs)

        def scandir(path: Any = ".") -> Any:
            self._check(path)
            return real_scandir(path)

        monkeypatch.setattr(os, "lstat", lstat)
        monkeypatch.setattr(os, "scandir", scandir)

    def _check(self, path: Any) -> None:
        where = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
        under = any(where == top or where.startswith(top + os.sep) for top in self.tops)
        if self.failing and under and not (self.once and where in self.failed):
            self.failed.add(where)
            raise EIO

    def heal(self, _seconds: float = 0.0) -> None:
        self.failing = False


# -- (a) reconcile: an unreadable file is looked at once more before it is dropped ----------


def test_a_stat_error_that_passes_within_the_wait_drops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _loaded(tmp_path, "t1", "t2")
    renditions = [d.titles_dir / "t2" / "v0" for d in store.disks]
    disk = FailingFolder(monkeypatch, renditions)
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        disk.heal()  # the disk answers again while reconcile waits

    report = reconcile(store, wait=wait)
    assert disk.failed  # the first look did fail
    assert waits == [RETRY_AFTER_S]
    assert report.findings == []
    assert _states(store, "t2") == (READY, dict.fromkeys(_states(store, "t2")[1], OK))
    assert all(f.location.exists() for f in title_files(store.conn, "t2"))
    assert report.checked_files == 2 * 8  # each title's files once, t2's in the second look
    store.close()


def test_the_daemons_periodic_reconcile_keeps_a_file_a_brief_error_hid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper's own round, as the daemon runs it, with each stat failing once."""
    store = _loaded(tmp_path, "t2")
    renditions = [d.titles_dir / "t2" / "v0" for d in store.disks]
    store.close()
    monkeypatch.setattr(repair, "RETRY_AFTER_S", 0.01, raising=False)
    disk = FailingFolder(monkeypatch, renditions, once=True)
    SweepThread(_config(tmp_path)).sweep()
    disk.heal()
    assert disk.failed
    store = Store(_config(tmp_path))
    assert _states(store, "t2") == (READY, dict.fromkeys(_states(store, "t2")[1], OK))
    store.close()


def test_a_file_unreadable_twice_is_dropped_after_one_wait_for_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _loaded(tmp_path, "t1", "t2", "t3")
    FailingFolder(monkeypatch, [d.titles_dir / t / "v0" for d in store.disks for t in ("t1", "t3")])
    waits: list[float] = []
    report = reconcile(store, wait=waits.append)
    assert waits == [RETRY_AFTER_S]  # one wait per pass, however many titles it holds back
    problems = {(f.title, f.problem.split(";")[0]) for f in report.findings if f.damage}
    assert problems == {("t1", "unreadable (Input/output error)"),
                        ("t3", "unreadable (Input/output error)")}  # fmt: skip
    for title in ("t1", "t3"):
        state, files = _states(store, title)
        assert state == INCOMPLETE
        assert {p for p, s in files.items() if s == MISSING} == {p for p in files if "v0/" in p}
    assert _states(store, "t2")[0] == READY
    store.close()


def test_a_stopping_daemon_does_not_look_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _loaded(tmp_path, "t1")
    FailingFolder(monkeypatch, [d.titles_dir / "t1" / "v0" for d in store.disks])
    stopping: list[bool] = []
    report = reconcile(store, stop=lambda: bool(stopping), wait=lambda _s: stopping.append(True))
    assert report.stopped and report.findings == []
    assert _states(store, "t1")[0] == READY  # left as it was: the next start checks it
    store.close()


# -- the sweep deletes nothing a scan could not read ------------------------------------------


class _Unstatable:
    """A DirEntry whose type cannot be read (EIO): scan_folder lists it as a non-folder."""

    def __init__(self, entry: os.DirEntry[str]) -> None:
        self.name, self.path = entry.name, entry.path

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise EIO

    is_dir = is_file = is_symlink = stat = _fail


class _Listing:
    def __init__(self, real: Any, unstatable: str) -> None:
        self.real, self.unstatable = real, unstatable

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()

    def __iter__(self) -> Iterator[Any]:
        for entry in self.real:
            yield _Unstatable(entry) if entry.name == self.unstatable else entry


def test_a_folder_whose_entry_could_not_be_read_is_not_swept_as_a_stray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing of t2 fails to say what `v0` is; by the sweep, the error has passed."""
    store = _loaded(tmp_path, "t2")
    tops = {str(d.titles_dir / "t2") for d in store.disks}
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        listing = real_scandir(path)
        named = not isinstance(path, int) and os.fsdecode(path) in tops  # rmtree lists fds
        return _Listing(listing, "v0") if named else listing

    monkeypatch.setattr(os, "scandir", scandir)
    reconcile(store)  # no file unreadable: nothing to wait for
    monkeypatch.undo()
    assert all(f.location.exists() for f in title_files(store.conn, "t2"))
    assert reconcile(store).findings == []
    assert _states(store, "t2")[0] == READY
    store.close()


# -- (a) the scrub: a read error is read again before the file is dropped ----------------------


def _hash_failing(monkeypatch: pytest.MonkeyPatch, times: int) -> list[Path]:
    """repair's hashing fails for the first `times` reads of v1/seg0001.m4s."""
    real = repair.sha256_file
    failed: list[Path] = []

    def sha256_file(path: Path, on_chunk: Any = None) -> str:
        if path.name == "seg0001.m4s" and len(failed) < times:
            failed.append(path)
            raise EIO
        return real(path, on_chunk)

    monkeypatch.setattr(repair, "sha256_file", sha256_file)
    return failed


def test_the_scrub_reads_an_unreadable_file_again_before_dropping_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _loaded(tmp_path, "t1")
    failed = _hash_failing(monkeypatch, times=1)
    waits: list[float] = []
    state, report = scrub_step(store, ScrubState(), 10**9, wait=waits.append)
    assert len(failed) == 1 and waits == [RETRY_AFTER_S]
    assert report.findings == [] and state.bad == 0
    assert _states(store, "t1")[0] == READY
    store.close()


def test_the_scrub_still_drops_a_file_that_stays_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _loaded(tmp_path, "t1")
    _hash_failing(monkeypatch, times=2)
    state, report = scrub_step(store, ScrubState(), 10**9, wait=lambda _s: None)
    assert state.bad == 1
    assert [str(f).split(";")[0] for f in report.findings if f.damage] == [
        "t1/v1/seg0001.m4s: unreadable (Input/output error)"
    ]
    state_now, files = _states(store, "t1")
    assert state_now == INCOMPLETE and files["v1/seg0001.m4s"] == MISSING
    store.close()


# -- (b) the periodic reconcile takes back files marked missing that are whole ----------------


def _mark_missing(store: Store, title: str, paths: set[str]) -> None:
    """What a drop whose deletion failed leaves: rows missing, files whole on their disk."""
    with transaction(store.conn) as conn:
        conn.executemany(
            "UPDATE files SET state = ? WHERE title = ? AND path = ?",
            [(MISSING, title, p) for p in paths],
        )
        conn.execute("UPDATE titles SET state = ? WHERE id = ?", (INCOMPLETE, title))


def test_one_periodic_pass_takes_back_whole_files_and_the_title(tmp_path: Path) -> None:
    store = _loaded(tmp_path, "t1", "t2")
    _mark_missing(store, "t2", {f.path for f in title_files(store.conn, "t2")})
    store.close()

    SweepThread(_config(tmp_path)).sweep()

    store = Store(_config(tmp_path))
    assert _states(store, "t2") == (READY, dict.fromkeys(_states(store, "t2")[1], OK))
    assert _states(store, "t1")[0] == READY
    store.close()


def test_what_is_not_the_indexed_file_stays_missing(tmp_path: Path) -> None:
    store = _loaded(tmp_path, "t2")
    files = {f.path: f for f in title_files(store.conn, "t2")}
    damaged, changed, gone = files["v0/seg0000.m4s"], files["v1/seg0001.m4s"], files["master.m3u8"]
    # Same size and mtime, other bytes (damage the disk made, its drop's deletion failed).
    st = damaged.location.stat()
    data = bytearray(damaged.location.read_bytes())
    data[100] ^= 0xFF
    damaged.location.write_bytes(bytes(data))
    os.utime(damaged.location, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(changed.location, ns=(1, 1))  # rewritten since: not the index's to judge
    gone.location.unlink()  # deleted by its drop: only a fill brings it back
    _mark_missing(store, "t2", set(files))

    readopt = Readopt()
    report = reconcile(store, readopt=readopt)

    assert [str(f) for f in report.findings] == [
        f"t2/{damaged.path}: missing, and its content on the disk differs from the index's: deleted"
    ]
    state, rows = _states(store, "t2")
    assert state == INCOMPLETE
    assert {p for p, s in rows.items() if s == MISSING} == {damaged.path, changed.path, gone.path}
    assert readopt.files == len(files) - 3 and readopt.titles == []
    assert not damaged.location.exists()  # damaged: deleted, as its drop meant to
    assert changed.location.exists()
    store.close()


def frozen(disks: set[str]) -> Callable[[], set[str]]:
    return lambda: disks


def test_a_disk_out_of_service_keeps_its_files_missing(tmp_path: Path) -> None:
    store = _loaded(tmp_path, "t2")
    files = title_files(store.conn, "t2")
    _mark_missing(store, "t2", {f.path for f in files})
    out = store.disks[1].id
    store.close()

    # Out at the start of the pass (the daemon holds it), or taken out during it.
    for held, later in (({out}, set()), (set(), {out})):
        store = Store(_config(tmp_path), out_of_service=held)
        readopt = Readopt(out_of_service=frozen(later))
        reconcile(store, readopt=readopt)
        _state, rows = _states(store, "t2")
        back = {f.path for f in files if f.disk != out}
        assert {p for p, s in rows.items() if s == OK} == back
        store.close()


def test_each_pass_hashes_no_more_than_its_budget(tmp_path: Path) -> None:
    store = _loaded(tmp_path, "t2")
    files = title_files(store.conn, "t2")
    _mark_missing(store, "t2", {f.path for f in files})
    passes = 0
    while _states(store, "t2")[0] != READY and passes < 20:
        readopt = Readopt(budget_bytes=1)  # one file a pass, however small the budget
        reconcile(store, readopt=readopt)
        assert readopt.files == 1
        passes += 1
    assert passes == len(files)
    store.close()

"""The fill client's view of the title store (appliance/store.py): what is servable, load a
finished staging folder, remove a title; and DiskWatch's two actions on the index: a dead
disk's files marked missing (their titles stop serving and are re-filled), and a returned
disk re-verified before its files serve again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from appliance.config import StorageConfig
from appliance.disks import Disk, DiskError
from appliance.fill.downloader import FillError
from appliance.fill.layout import DISK_STAGING, PART, StagingLayout, disk_staging, stale_folders
from appliance.index import (
    INCOMPLETE,
    MISSING,
    OK,
    READY,
    file_path,
    title_files,
    transaction,
)
from appliance.mover import RateBook
from appliance.placement import withheld
from appliance.store import Store, locks_folder
from edgeflix import titlefiles
from edgeflix.titlefiles import FILES_JSON, TitleFiles, sha256_file

# The fill's run lock, beside the titles' locks; no ".lock" suffix, so no title's lock file.
RUN_LOCK = "fill-run"


class StoreStorage:
    """Adapts Store to runner.Storage. SQLite connections belong to the thread that opened
    them, so the Store is opened lazily by the first call, in the runner's storage thread.
    `not_writable`: disks whose writes fail now (the daemon's diskwatch.DiskWatch), asked as
    each title is laid out; they and the disks this run gave up (`avoid`) get no new files."""

    def __init__(
        self, config: StorageConfig, not_writable: Callable[[], Collection[str]] = set
    ) -> None:
        self.config = config
        self._not_writable = not_writable
        self._avoided: set[str] = set()
        self._opened: tuple[Disk, ...] = ()  # the store's disks as it opened them
        self._store: Store | None = None
        self._rates: RateBook | None = None
        # Title → file path → disk id: where staging puts each file, set before files.json
        # is known (the tier its rate asks for), then by check_room from the files' sizes
        # (the tier that has room for them), before any file is downloaded.
        self._placers: dict[str, Callable[[str], str]] = {}

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self._open()
            self._opened = self._store.disks
        return self._store

    def _open(self) -> Store:
        return Store(self.config)

    def avoid(self, disk: str) -> None:
        self._avoided.add(disk)

    def _withhold(self) -> None:
        """Placement passes over the disks whose writes fail, as over read-only ones; a disk
        whose writes work again (the health monitor says so) takes files again."""
        store = self.store
        store.disks = withheld(self._opened, {*self._not_writable(), *self._avoided})

    def close(self) -> None:
        if self._rates is not None:
            self._rates.close()
        if self._store is not None:
            self._store.close()

    def held(self) -> dict[str, str]:
        # Incomplete titles (a file lost with a disk) are not held: the fill fetches them again.
        return {t.id: t.digest for t in self.store.listing() if t.state == READY}

    def _rate(self, title_id: str) -> float:
        # The observed request rate picks the tier, exactly as `appliance load` does.
        if self._rates is None:
            self._rates = RateBook(self.store.config.index, self.store.config.decay_half_life_s)
        return self._rates.rate(title_id)

    def staging(self, title_id: str, folder: Path) -> StagingLayout:
        """Each file staged on the disk the store will place it on (at the tier today's rate
        picks; a tier change by hand-off time only costs a copy). No disk of the tier in
        service: everything in `folder`, copied in later as before."""
        self._withhold()
        disks = self.store.disks
        on_disks = tuple(disk_staging(d.path, title_id) for d in disks)
        try:
            self._placers[title_id] = self.store.placer(title_id, self._rate(title_id))
        except DiskError:
            return StagingLayout(folder, disk_folders=on_disks)
        # Asked for every file several times a run: the folders are made once.
        staged = {d.id: where for d, where in zip(disks, on_disks, strict=True)}
        placers = self._placers
        return StagingLayout(
            folder, place=lambda path: staged[placers[title_id](path)], disk_folders=on_disks
        )

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held for a whole fill run: one fill per store at a time. The daemon's fill and an
        `appliance fill` stage into the same disks' .staging and would append to the same
        .part files (and each sweeps what the other may still want)."""
        path = locks_folder(self.config.index) / RUN_LOCK
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FillError(f"cannot open the fill lock {path}: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FillError(
                    "another fill is running on this appliance (the daemon's or another "
                    "`appliance fill`); try again when it has finished"
                ) from None
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def sweep_staging(self, keep: Collection[str], now: float) -> list[str]:
        """Remove staged files no fill will finish (layout.stale_folders) from every disk's
        `.staging`; return the titles swept. Only there: `[fill] staging` is a path the
        operator chose, where we delete nothing we did not just finish with."""
        roots = [d.path / DISK_STAGING for d in self.store.disks]
        candidates = {
            title: _newest_change(title)
            for root in roots
            if root.is_dir()
            for title in root.iterdir()
            if title.is_dir()
        }
        swept = stale_folders(candidates, keep, now)
        for title in swept:
            shutil.rmtree(title, ignore_errors=True)
        return sorted({t.name for t in swept})

    def check_room(self, title_id: str, model: TitleFiles, staged: StagingLayout) -> None:
        """CapacityError before any download when the title will not fit where `load` puts
        it (bytes already staged on a disk's own filesystem count as in place there); then
        staging follows where that is, on the tier that has room."""
        sizes = {f.path: f.size for f in model.files}
        sizes[FILES_JSON] = len(titlefiles.render(model))
        disks = {d.id: d.path for d in self.store.disks}
        devices = {d.id: os.stat(d.path).st_dev for d in self.store.disks}

        def staged_on(placement: Mapping[str, str]) -> dict[str, int]:
            in_place: dict[str, int] = {}
            for entry in model.files:
                disk = placement[entry.path]
                at = disk_staging(disks[disk], title_id) / entry.path
                for candidate in (at, at.with_name(at.name + PART), staged.file(entry.path)):
                    try:
                        st = os.stat(candidate)
                    except OSError:
                        continue
                    if st.st_dev == devices.get(disk):
                        in_place[disk] = in_place.get(disk, 0) + min(st.st_size, entry.size)
                        break
            return in_place

        placed = self.store.check_room(title_id, sizes, self._rate(title_id), staged_on)
        if title_id in self._placers:
            self._placers[title_id] = placed  # staging follows

    def reuse(self, title_id: str, model: TitleFiles, staged: StagingLayout) -> int:
        """An update of a stored title: each file the new version has with the same path,
        size and SHA-256 is hard-linked from the store into staging and re-hashed there, so
        it counts as downloaded and verified and only what changed crosses the network. A
        file on another filesystem than its staging place (another disk, another tier) or
        that fails its hash is downloaded as usual. Returns the bytes staged."""
        stored = {
            f.path: f
            for f in title_files(self.store.conn, title_id)
            if f.state == OK and f.disk not in self.store.out_of_service
        }
        reused = 0
        for entry in model.files:
            f = stored.get(entry.path)
            staged_at = staged.file(entry.path)
            if f is None or (f.size, f.sha256) != (entry.size, entry.sha256):
                continue
            try:
                if staged_at.exists():
                    continue  # already downloaded (a resumed run)
                staged_at.parent.mkdir(parents=True, exist_ok=True)
                os.link(f.location, staged_at)
                # The link's own bytes, hashed here: the staged file is what the fill trusts.
                if sha256_file(staged_at) != entry.sha256:
                    staged_at.unlink()
                    continue
            except OSError:
                continue  # another filesystem (EXDEV), a file gone meanwhile: download it
            reused += entry.size
        return reused

    def load(self, title_id: str, staged: StagingLayout) -> None:
        """Take in staged files the downloader verified against files.json in this process:
        moved in where a file shares a filesystem with its disk (no copy, no second hash),
        copied and verified elsewhere."""
        try:
            self.store.load(
                title_id,
                staged.folder,
                replace=True,
                rate=self._rate(title_id),
                adopt_verified=True,
                located=staged.file,
            )
        finally:
            self._placers.pop(title_id, None)  # a later fill of it lays out staging anew

    def remove(self, title_id: str) -> None:
        # Only placement passes over a disk whose writes fail: the titles on it are deleted
        # as any (Store.remove refuses a disk it takes for read-only).
        store = self.store
        held_back, store.disks = store.disks, self._opened
        try:
            store.remove(title_id)
        finally:
            store.disks = held_back


def mark_disk_missing(store: Store, disk_id: str) -> list[str]:
    """Every file the index places on `disk_id` becomes missing and its titles incomplete (no
    longer served: players get 404 and fail over). Returns the titles affected."""
    with transaction(store.conn) as conn:
        titles = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT title FROM files WHERE disk = ? AND state = ?", (disk_id, OK)
            )
        ]
        conn.execute(
            "UPDATE files SET state = ? WHERE disk = ? AND state = ?", (MISSING, disk_id, OK)
        )
        conn.executemany(
            "UPDATE titles SET state = ? WHERE id = ? AND state = ?",
            [(INCOMPLETE, t, READY) for t in titles],
        )
    return sorted(titles)


def restore_disk(store: Store, disk_id: str) -> tuple[list[str], list[str]]:
    """A disk answers again (DiskWatch's Rescan): re-hash every file the index placed on it
    that is marked missing; good ones serve again, and a title whose files are all good is
    ready again. Bad or absent files stay missing (the next fill replaces the title).
    Returns (titles ready again, files still missing as "title/path")."""
    rows = store.conn.execute(
        "SELECT f.title, f.path, f.size, f.sha256, COALESCE(t.folder, t.id) FROM files f "
        "JOIN titles t ON t.id = f.title WHERE f.disk = ? AND f.state = ?",
        (disk_id, MISSING),
    ).fetchall()
    good: list[tuple[str, str]] = []
    bad: list[tuple[str, str]] = []
    for title, path, size, sha, folder in rows:
        location = file_path(disk_id, folder, path)
        try:
            ok = location.stat().st_size == size and sha256_file(location) == sha
        except OSError:
            ok = False
        (good if ok else bad).append((title, path))
    with transaction(store.conn) as conn:
        conn.executemany(
            "UPDATE files SET state = ? WHERE title = ? AND path = ? AND disk = ?",
            [(OK, t, p, disk_id) for t, p in good],
        )
        titles = sorted({t for t, _ in good})
        ready = []
        for title in titles:
            left = conn.execute(
                "SELECT COUNT(*) FROM files WHERE title = ? AND state != ?", (title, OK)
            ).fetchone()[0]
            if left == 0:
                conn.execute(
                    "UPDATE titles SET state = ? WHERE id = ? AND state = ?",
                    (READY, title, INCOMPLETE),
                )
                ready.append(title)
    return ready, [f"{t}/{p}" for t, p in bad]


def _newest_change(folder: Path) -> float:
    """The latest mtime of `folder` and anything in it (a download in progress keeps it fresh)."""
    newest = folder.stat().st_mtime
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                continue  # renamed in meanwhile
    return newest

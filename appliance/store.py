"""The title store (I/O shell): load, list, remove and move titles across the disks, crash-safely.

Decisions come from placement.py (which disk) and tiering.py (which tier); bytes go through
safefiles.py (temporary name, fsync, rename, fsync directory) and only then into the index
(index.py). repair.py reconciles the index with the disks and re-hashes on demand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from appliance import diskclaim, replaced, tiering
from appliance.config import StorageConfig, Tier
from appliance.disks import (
    SYSFS,
    CapacityError,
    Disk,
    DiskError,
    DiskUsage,
    LoadError,
    StorageError,
    UnknownTitle,
    Watermark,
    by_filesystem,
    check_layout,
    measure,
    open_disks,
    room,
    shared_fs_shortfalls,
)
from appliance.index import (
    INCOMPLETE,
    LOADING,
    MISSING,
    OK,
    READY,
    REMOVING,
    FileRow,
    TitleRow,
    all_titles,
    connect_writer,
    disks_with_files,
    file_path,
    get_title,
    no_index,
    room_taken,
    title_files,
    transaction,
)
from appliance.placement import Bucket, bytes_per_disk, choose, file_key, place_title, shortfalls
from appliance.safefiles import (
    UNLINK_GRACE_S,
    ChecksumMismatch,
    Throttle,
    TitleLocks,
    copy_verified,
    fsync_dir,
    fsync_files,
    move_verified,
    prune_empty_dirs,
    remove_entry,
    undone_on_failure,
    uninterrupted,
    unlink_synced,
)
from edgeflix import titlefiles
from edgeflix.log import event
from edgeflix.titlefiles import FILES_JSON, FileEntry, TitleFilesError, check_title_id

log = logging.getLogger("appliance.store")

# A title's files live in DISK/titles/FOLDER/ (index.file_path). FOLDER is the title's id, or
# `ID~TAG` (TAG: hex) for a version loaded over another: it is written beside the one being
# served, one transaction points the title at it, and the old folder goes after a grace. So
# an update never takes a title out of service, and after a crash at any point the folder the
# index names is whole; any other folder of the title is swept by reconcile. `~` is never in
# an id, so no folder of one title can be another's.
FOLDER_TAG_SEP = "~"
_TAG_RE = re.compile(r"[0-9a-f]{1,32}")


def new_folder(title_id: str) -> str:
    return f"{title_id}{FOLDER_TAG_SEP}{secrets.token_hex(4)}"


def folder_title(name: str) -> str | None:
    """The title a folder under DISK/titles belongs to, or None when it is no title's."""
    base, sep, tag = name.partition(FOLDER_TAG_SEP)
    if sep and not _TAG_RE.fullmatch(tag):
        return None
    try:
        return check_title_id(base)
    except TitleFilesError:
        return None


@dataclass(frozen=True)
class TitleListing:
    id: str
    state: str
    tier: str
    disks: tuple[str, ...]
    bytes: int
    files: int
    missing: int
    digest: str
    # Files the index has on disks out of service (dead, unmounted): not checked, not listed
    # in `disks`; the daemon marks them missing when it takes the disk out.
    unavailable: int = 0
    # Files of replaced versions still served to the sessions that started on them
    # (appliance/replaced.py), their bytes (counted as used space, not in `bytes`) and when
    # the last of them goes (Unix time; None when there are none).
    kept_files: int = 0
    kept_bytes: int = 0
    kept_until: float | None = None
    # Files the index has on a disk no longer in [storage] disks: not listed in `disks`; the
    # next reconcile (the daemon's start, or a command's) marks them missing.
    unconfigured: int = 0


class _DiskCount(NamedTuple):
    """A title's files the index places on one disk: all of them, missing, served (ok)."""

    disk: str
    files: int
    missing: int
    ok: int


def _listed(
    row: TitleRow,
    per_disk: Sequence[_DiskCount],
    configured: Collection[str],
    out: Collection[str],
    old: replaced.KeptSummary | None,
) -> TitleListing:
    """A title's line of `appliance ls`. `configured`: the disks of the config (`out`, those
    out of service, among them); `old`: the files kept for its replaced versions."""
    serving = [c.disk for c in per_disk if c.ok and c.disk in configured and c.disk not in out]
    return TitleListing(
        id=row.id,
        state=row.state,
        tier=row.tier,
        disks=tuple(sorted(serving)),
        bytes=row.bytes,
        files=sum(c.files for c in per_disk),
        missing=sum(c.missing for c in per_disk),
        digest=row.digest,
        unavailable=sum(c.ok for c in per_disk if c.disk in out),
        kept_files=old.files if old else 0,
        kept_bytes=old.bytes if old else 0,
        kept_until=old.until if old else None,
        unconfigured=sum(c.ok for c in per_disk if c.disk not in configured),
    )


_INSERT_FILE = (
    "INSERT INTO files (title, path, disk, size, sha256, mtime_ns, state) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class _Layout(NamedTuple):
    """A title's files on one tier: file path → disk, bytes each disk must take, and bytes
    of it already staged on each disk's own filesystem (renamed in, so no room needed)."""

    placement: dict[str, str]
    needed: dict[str, int]
    staged: Mapping[str, int]


class DamagedSource(StorageError):
    """A tier move found a stored file whose bytes no longer match the index: the caller
    drops it (repair.drop) rather than serve it on and copy the title again every round."""

    def __init__(self, message: str, file: FileRow) -> None:
        super().__init__(message)
        self.file = file


class _Retired(NamedTuple):
    """The folder of a replaced version, deleted after its grace."""

    due: float  # on the monotonic clock
    title_id: str
    folder: str
    bytes_on: dict[str, int]  # disk id → bytes it holds there


@dataclass(frozen=True)
class _Copy:
    """What `load` writes: every file of a title, where it comes from and which disk takes it."""

    title_id: str
    where: Callable[[str], Path]  # file path in files.json → where its bytes are now
    entries: Sequence[FileEntry]
    placement: Mapping[str, str]  # file path → disk id
    tier: Tier
    digest: str
    on_bytes: Callable[[int], None] | None
    adopt: bool  # moved in when on the disk's filesystem (verified by the caller)

    @property
    def total(self) -> int:
        return sum(e.size for e in self.entries)


def locks_folder(index: Path) -> Path:
    return index.parent / f"{index.name}.locks"


# Every load and tier move holds this lock (in the locks folder; no title's lock is named so,
# as ids start with a letter or digit) from its room check until the room it takes is reserved
# in the index: two checks at once would each find the room the other is about to fill.
ROOM_LOCK = ".room.lock"
_RELEASE = "DELETE FROM reserved WHERE title = ?"
_RESERVING = "SELECT DISTINCT title FROM reserved"


def reserved_on_disks(
    reserved: Mapping[str, Mapping[str, int]], live: Collection[str]
) -> dict[str, int]:
    """Room reserved on each disk (title → disk → bytes) by the titles in `live`: those whose
    load or move is still going on (one killed half-way reserves nothing)."""
    total: dict[str, int] = {}
    for title_id, per_disk in reserved.items():
        if title_id in live:
            for disk, size in per_disk.items():
                total[disk] = total.get(disk, 0) + size
    return total


def less_room(usage: DiskUsage, reserved: int) -> DiskUsage:
    """A disk's usage once `reserved` more bytes are on it."""
    return dataclasses.replace(
        usage,
        used=usage.used + reserved,
        free_below_high=max(0, usage.free_below_high - reserved),
        free_below_low=max(0, usage.free_below_low - reserved),
    )


class Store:
    """The appliance's titles on its disks. One per process; the index serialises writers."""

    def __init__(
        self,
        config: StorageConfig,
        *,
        sysfs: Path = SYSFS,
        out_of_service: Collection[str] = (),
        grace_s: float = UNLINK_GRACE_S,
        sleep: Callable[[float], None] = time.sleep,
        create: bool = True,
    ) -> None:
        """`out_of_service`: disk paths the daemon's DiskWatch took out (dead, read-only,
        erroring). They are not opened or touched, and placement only sees the disks left, so
        a re-fill after a disk loss lands on the remaining disks of the tier. `grace_s`: how
        long the old version of an updated title stays after the swap (see UNLINK_GRACE_S).
        Not `create`: StorageError when there is no index yet, before anything is made (for
        the commands that only work on titles already stored)."""
        if not create and not config.index.exists():
            raise no_index(config.index)
        self.grace_s = grace_s
        self.sleep = sleep
        # Folders of replaced versions, deleted once their grace is over. Left behind by a
        # crash, reconcile sweeps them.
        self._retired: list[_Retired] = []
        self.config = config
        out = {str(Path(p).resolve()) for p in out_of_service}
        configured = {str(d.path.resolve()) for d in config.disks}
        self.out_of_service: tuple[str, ...] = tuple(sorted(out & configured))
        in_service = [d for d in config.disks if str(d.path.resolve()) not in out]
        opened = open_disks(in_service, sysfs)
        # A disk the index places files on, without its titles folder, is not mounted (or
        # not yet back): it is out of service for this store, whatever the caller was told
        # a moment ago. Making the folder there would put titles on the bare mount point and
        # make the health probe find the disk "back"; checking it would drop its files.
        held = disks_with_files(config.index)
        vanished = {d.id for d in opened if d.id in held and not d.titles_dir.is_dir()}
        self.out_of_service = tuple(sorted({*self.out_of_service, *vanished}))
        self.disks: tuple[Disk, ...] = tuple(d for d in opened if d.id not in vanished)
        check_layout(self.disks, config.index)
        unclaimed = diskclaim.check(self.disks, config.index)  # before anything is made
        for disk in self.disks:
            if not disk.writable:
                continue  # nothing can be created there; its titles (if any) still serve
            try:
                # Only the folder inside the disk: never re-create a vanished mount point,
                # which would put titles on the root filesystem (and race a disk's removal).
                if not disk.titles_dir.is_dir():
                    disk.titles_dir.mkdir()
                    fsync_dir(disk.path)
            except FileExistsError:
                # Another command on a new box made it just now (a link is refused above);
                # anything else by that name is no titles folder.
                if not disk.titles_dir.is_dir():
                    raise DiskError(
                        f"disk {disk.path}: {disk.titles_dir} is not a folder; move it away"
                    ) from None
            except OSError as exc:
                raise DiskError(
                    f"disk {disk.path}: cannot create {disk.titles_dir}: {exc}"
                ) from None
        self.index_path = config.index
        self.conn = connect_writer(config.index, create=create)
        try:
            self.locks = TitleLocks(locks_folder(config.index))
            if create and unclaimed:
                diskclaim.claim(unclaimed, config.index, self.locks.store_wide(diskclaim.LOCK))
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        """Delete the replaced versions still in their grace (waiting it out), then close."""
        try:
            self._drop_retired(wait=True)
        finally:
            self.conn.close()

    def _drop_retired(self, *, wait: bool = False) -> None:
        if not self._retired:
            return
        if wait:
            self.sleep(max(0.0, max(r.due for r in self._retired) - time.monotonic()))
        now = time.monotonic()
        done = [r for r in self._retired if wait or r.due <= now]
        self._retired = [r for r in self._retired if r not in done]
        for _, title_id, folder, _bytes in done:
            # Under the title's lock, and only while no load since (here or in another
            # process: a removal, then a fresh load into the bare id) made it current again.
            with self.locks.hold(title_id):
                row = get_title(self.conn, title_id)
                if row is not None and row.folder == folder:
                    continue
                keep = replaced.kept_in(self.conn, title_id, folder)
                if keep:
                    replaced.prune(self.disks, folder, keep)
                else:
                    self._remove_folder(title_id, folder)

    def drop_replaced(
        self, *, everything: bool = False, title_id: str | None = None, folder: str | None = None
    ) -> int:
        """Delete the kept files of replaced versions (replaced.py) whose time is up, or all
        of them (`everything`: a load needs their room), or one title's (or one folder's of
        it); returns how many folders went. Their rows go first, so no worker is sent to a
        file being deleted."""
        with transaction(self.conn) as conn:
            taken = replaced.take(
                conn, time.time(), title_id=title_id, folder=folder, everything=everything
            )
        gone = 0
        for title, folder in taken:
            if not replaced.still_named(self.conn, title, folder):
                self._remove_folder(title, folder)
                gone += 1
        if gone:
            event(log, "replaced.dropped", folders=gone,
                  why="needed the room" if everything else "kept long enough")  # fmt: skip
        return gone

    # -- questions ------------------------------------------------------------------------

    @property
    def tiers(self) -> frozenset[Tier]:
        return frozenset(d.tier for d in self.disks)

    def disks_of(self, tier: Tier) -> list[Disk]:
        return [d for d in self.disks if d.tier == tier]

    def usage(self) -> list[DiskUsage]:
        """Each disk's usage, counting the room that loads and tier moves in progress (in
        any process) have reserved: their files are not in the index until they are whole."""
        return self._usage_and_reserved()[0]

    def _usage_and_reserved(self) -> tuple[list[DiskUsage], dict[str, int]]:
        """usage(), and the room reserved on each disk by loads and moves in progress."""
        # Whose reservation is live is asked first: a load that ends after its rows were
        # read, and lets go of its title's lock before the question, would count nowhere.
        # A title reserving after the question is live (it holds the lock the while).
        asked = {t: self._worked_on(t) for (t,) in self.conn.execute(_RESERVING)}
        indexed, reserved = room_taken(self.conn)
        # A version in its grace is out of the index but still on disk: under max_bytes,
        # where only the index counts as used, it must count too.
        for retired in self._retired:
            for disk, size in retired.bytes_on.items():
                indexed[disk] = indexed.get(disk, 0) + size
        live = reserved_on_disks(reserved, {t for t in reserved if asked.get(t, True)})
        usage = [less_room(measure(d, indexed.get(d.id, 0)), live.get(d.id, 0)) for d in self.disks]
        return usage, live

    def _worked_on(self, title_id: str) -> bool:
        """Some process (this one included) holds the title's lock: a reservation of it is
        live. Its holder dead, the kernel dropped the lock, and the reservation is void."""
        with self.locks.hold(title_id, wait=False) as free:
            return not free

    def _deciding_room(self) -> contextlib.AbstractContextManager[None]:
        """Held (ROOM_LOCK) from a load's or move's room check until its room is reserved:
        a room check and one transaction."""
        return self.locks.store_wide(ROOM_LOCK)

    def _reserve(self, title_id: str, sizes: Mapping[str, int]) -> None:
        """Record the room (disk → bytes) the title's load or move is about to fill, under
        the room lock, after its check; it holds the title's lock until the room is released
        (in the transaction that indexes its files, or _released). Reservations of titles
        nobody works on (a process killed half-way) go now: none can be made meanwhile."""
        titles = [t for (t,) in self.conn.execute(_RESERVING)]
        void = [t for t in titles if t != title_id and not self._worked_on(t)]
        rows = [(title_id, disk, size) for disk, size in sorted(sizes.items()) if size > 0]
        with transaction(self.conn) as conn:
            conn.executemany(_RELEASE, [(t,) for t in (title_id, *void)])
            conn.executemany("INSERT INTO reserved (title, disk, size) VALUES (?, ?, ?)", rows)

    def _release(self, title_id: str) -> None:
        if self.conn.execute("SELECT 1 FROM reserved WHERE title = ?", (title_id,)).fetchone():
            with transaction(self.conn) as conn:
                conn.execute(_RELEASE, (title_id,))

    @contextlib.contextmanager
    def _released(self, title_id: str) -> Iterator[None]:
        """The title's reservation is gone once the block ends, however it ends. A failure
        to delete it is let be: void once the title's lock goes, it counts for nothing."""
        try:
            yield
        finally:
            with contextlib.suppress(StorageError):
                self._release(title_id)

    def servable_bytes(self) -> int:
        row = self.conn.execute("SELECT COALESCE(SUM(size), 0) FROM files WHERE state = ?", (OK,))
        return int(row.fetchone()[0])

    def title(self, title_id: str) -> TitleRow:
        row = get_title(self.conn, title_id)
        if row is None:
            raise UnknownTitle(
                f"no title {title_id!r} on this appliance (see `edgeflix appliance ls`)"
            )
        return row

    def listing(self) -> list[TitleListing]:
        # Counted by SQLite per title and disk, a few rows a title: read into Python file by
        # file, ~200 bytes each, a listing of a few thousand lines took a GB at 3M files.
        per_title: dict[str, list[_DiskCount]] = {}
        for title, disk, files, missing, ok in self.conn.execute(
            "SELECT title, disk, COUNT(*), SUM(state = ?), SUM(state = ?) FROM files "
            "GROUP BY title, disk",
            (MISSING, OK),
        ):
            per_title.setdefault(title, []).append(_DiskCount(disk, files, missing, ok))
        out = set(self.out_of_service)
        configured = out | {d.id for d in self.disks}
        kept = replaced.summaries(self.conn)
        return [
            _listed(row, per_title.get(row.id, []), configured, out, kept.get(row.id))
            for row in all_titles(self.conn)
        ]

    def unsettled(self) -> set[str]:
        """Titles whose leftovers change the room a load finds, told by the index and one
        listing of each disk's titles folder (no title's own folder is read): loading or
        removing (an interrupted load or `rm`), with served files or kept files the index
        places on a disk no longer configured (followed or set aside: counted on the wrong
        disk until then), or with a folder on a disk but no title in the index (adopted, or
        swept). A command reconciling only its own title (`load`) reconciles these too; a
        settled appliance has none, so it costs no more than the title itself."""
        conn = self.conn
        busy = conn.execute("SELECT id FROM titles WHERE state IN (?, ?)", (LOADING, REMOVING))
        ids = {title_id for (title_id,) in busy}
        known = {d.id for d in self.disks} | set(self.out_of_service)
        # The few disk ids from `files`' disk index; then the titles on the unknown ones
        # whose files still serve (once set aside, missing, they are not asked for again).
        for (disk,) in conn.execute("SELECT disk FROM files GROUP BY disk").fetchall():
            if disk not in known:
                rows = conn.execute(
                    "SELECT DISTINCT title FROM files WHERE disk = ? AND state = ?", (disk, OK)
                )
                ids |= {title_id for (title_id,) in rows}
        kept = conn.execute("SELECT title, disk FROM superseded")
        ids |= {title_id for (title_id, disk) in kept if disk not in known}
        indexed = {title_id for (title_id,) in conn.execute("SELECT id FROM titles")}
        for disk in self.disks:
            folders: set[str | None] = set()  # none: a read-only disk that never held one
            with contextlib.suppress(OSError), os.scandir(disk.titles_dir) as entries:
                folders = {folder_title(entry.name) for entry in entries}
            ids |= {t for t in folders if t is not None and t not in indexed}
        return ids

    def _check_fit(
        self,
        title_id: str,
        tier: Tier,
        needed: Mapping[str, int],
        freeing: Mapping[str, int],
        watermark: Watermark = "high",
    ) -> None:
        usage, reserved = self._usage_and_reserved()
        rooms = [room(u, watermark) for u in usage]
        rooms = [type(r)(disk=r.disk, free=r.free + freeing.get(r.disk, 0)) for r in rooms]
        # A filesystem several disks share must also hold what is reserved on any of them.
        net = {d.id: freeing.get(d.id, 0) - reserved.get(d.id, 0) for d in self.disks}
        short = shortfalls(needed, rooms) or shared_fs_shortfalls(self.disks, needed, net)
        if short:
            detail = "; ".join(
                f"{s.needed} bytes on {s.disk} with {s.free} free below its {watermark} watermark"
                for s in short
            )
            raise CapacityError(
                f"title {title_id} does not fit on the {tier} tier: needs {sum(needed.values())} "
                f"bytes in all, {detail}"
            )

    def _fits(
        self, title_id: str, tier: Tier, needed: Mapping[str, int], freeing: Mapping[str, int]
    ) -> bool:
        try:
            self._check_fit(title_id, tier, needed, freeing)
        except CapacityError:
            return False
        return True

    def _plus_kept(self, freeing: Mapping[str, int]) -> dict[str, int]:
        """`freeing` and the room the files kept for replaced versions' sessions take: room
        a load may have (_make_room frees it, oldest first, when it is needed)."""
        total = dict(freeing)
        for disk, size in replaced.bytes_on_disks(self.conn).items():
            total[disk] = total.get(disk, 0) + size
        return total

    def _make_room(
        self, title_id: str, tier: Tier, needed: Mapping[str, int], freeing: Mapping[str, int]
    ) -> bool:
        """True when `needed` fits, deleting kept files of replaced versions for it, oldest
        first and only as many as it takes; none at all when even all of them would not do."""
        if self._fits(title_id, tier, needed, freeing):
            return True
        if not self._fits(title_id, tier, needed, self._plus_kept(freeing)):
            return False
        # Only room on the disks the title goes to helps, or on the others of their
        # filesystem when the filesystem's own free space is what counts (no max_bytes).
        wanted = {disk for disk, size in needed.items() if size > 0}
        for group in by_filesystem([d for d in self.disks if not d.max_bytes]):
            if wanted & {d.id for d in group}:
                wanted |= {d.id for d in group}
        for title, folder, disks in replaced.oldest_first(self.conn):
            if disks & wanted:
                self.drop_replaced(title_id=title, folder=folder, everything=True)
                if self._fits(title_id, tier, needed, freeing):
                    return True
        return False

    def writable_disks_of(self, tier: Tier) -> list[Disk]:
        return [d for d in self.disks_of(tier) if d.writable]

    def _buckets(self, tier: Tier, title_id: str, keep: Collection[str] = ()) -> list[Bucket]:
        """Where new files of `title_id` on `tier` may go: its writable disks in service,
        but not one already full to its high watermark (other data filled it, or its share
        of titles did) while another has room: that one would refuse the whole title,
        where the rest of the tier can take it. Room a replaced version frees counts, and
        disks in `keep` stay: the fill staged files of this title there, which fill the disk
        only until they are renamed into place."""
        if not self.disks:
            configured = ", ".join(str(d.path) for d in self.config.disks)
            raise DiskError(f"no disk is in service: all are out ({configured}; see above)")
        disks = self.writable_disks_of(tier)
        if not disks:
            read_only = [d.id for d in self.disks_of(tier)]
            why = f" (read-only: {', '.join(read_only)})" if read_only else ""
            raise DiskError(f"no writable disk of the {tier} tier is in service{why}")
        if len(disks) > 1:
            freeing = self._plus_kept(self._freeing(title_id, {}))
            free = {r.disk: r.free for r in (room(u) for u in self.usage())}
            roomy = [
                d for d in disks if d.id in keep or free.get(d.id, 0) + freeing.get(d.id, 0) > 0
            ]
            disks = roomy or disks  # none has room: the fit check says where it falls short
        return [d.bucket() for d in disks]

    def _placement(
        self, title_id: str, tier: Tier, paths: Sequence[str], keep: Collection[str] = ()
    ) -> dict[str, str]:
        return place_title(title_id, paths, self._buckets(tier, title_id, keep))

    def choose_tier(
        self, title_id: str, rate: float, layout: Callable[[Tier], _Layout] | None = None
    ) -> Tier:
        """The tier its rate asks for (tiering.wanted_tier), unless that one cannot take the
        title and another can: no writable disk of it in service, or, given its `layout`
        there (what each disk must take, what is staged), no room even counting what loading
        it frees. The tier asked for when none can (its error is the one to report)."""
        wanted = tiering.wanted_tier(rate, self.config.hot_rate, self.tiers)
        for tier in tiering.tier_preference(wanted, self.tiers):
            if not self.writable_disks_of(tier):
                continue
            if layout is None:
                return tier
            try:
                fit = layout(tier)
            except DiskError:
                continue
            in_place = self._freeing(title_id, fit.staged)
            if self._fits(title_id, tier, fit.needed, self._plus_kept(in_place)):
                return tier
        return wanted

    def placer(self, title_id: str, rate: float) -> Callable[[str], str]:
        """Where `load` would put each file of `title_id` at request rate `rate`, before its
        files' sizes are known: file path → disk id (for the fill, which stages each file
        on its disk; check_room then says where they go once their sizes are known)."""
        return self._chooser(title_id, self.choose_tier(title_id, rate))

    def _chooser(self, title_id: str, tier: Tier) -> Callable[[str], str]:
        buckets = self._buckets(tier, title_id)
        return lambda path: choose(file_key(title_id, path), buckets)

    def check_room(
        self,
        title_id: str,
        sizes: Mapping[str, int],
        rate: float,
        staged_on: Callable[[Mapping[str, str]], Mapping[str, int]] | None = None,
    ) -> Callable[[str], str]:
        """CapacityError now for a title `load` would refuse for room: the fill asks before
        it downloads, so a title that cannot fit does not first fill a disk with staged
        files. Returns where `load` will put each file (the fill stages them there).
        `sizes`: file path → bytes (files.json included); `staged_on(placement)`: bytes of
        it already staged on each disk's own filesystem where `placement` (file path →
        disk) puts them (a resumed fill), which `load` renames in and so counts as free."""

        def layout(tier: Tier) -> _Layout:
            placement = self._placement(title_id, tier, list(sizes))
            staged = staged_on(placement) if staged_on is not None else {}
            return _Layout(placement, bytes_per_disk(placement, sizes), staged)

        tier = self.choose_tier(title_id, rate, layout)
        _, needed, staged = layout(tier)
        freeing = self._freeing(title_id, staged)
        self._check_fit(title_id, tier, needed, self._plus_kept(freeing))
        # The fill stages the files on the disks before `load`: the room they take must be
        # free now, so kept files of replaced versions go here when it needs theirs.
        self._make_room(title_id, tier, needed, freeing)
        return self._chooser(title_id, tier)

    # -- load ------------------------------------------------------------------------------

    def load(
        self,
        title_id: str,
        source: Path,
        *,
        replace: bool = False,
        rate: float = 0.0,
        on_bytes: Callable[[int], None] | None = None,
        adopt_verified: bool = False,
        located: Callable[[str], Path] | None = None,
    ) -> TitleRow:
        """Copy a packaged title from `source`, verifying every file against its files.json.

        The title becomes servable only once every file is in; on any failure nothing of it is
        left behind. `rate` (decayed requests/s seen so far) picks the tier.

        `adopt_verified=True` is for a caller that has itself checked every file's SHA-256
        against this files.json in this process (the fill client's staging folder): files
        on the same filesystem as their disk are moved in (fsync, rename) instead of copied
        and re-hashed, so `source` is consumed; sizes are still checked; files on another
        filesystem are copied and verified as usual. `located` says where each file of
        files.json is when not at `source / path` (the fill stages files on their disks).
        """
        self._drop_retired()
        self.drop_replaced()
        where = located or (lambda path: source / path)
        check_title_id(title_id)
        if not source.is_dir():
            raise LoadError(f"{source}: not a folder")
        inside = next((d for d in self.disks if d.titles_dir in source.resolve().parents), None)
        if inside is not None:
            # A --replace from the stored copy itself would delete its own source first.
            raise LoadError(f"{source}: is inside the store on {inside.id}; load from a copy")
        model, digest = titlefiles.read(source)
        if model.id != title_id:
            raise LoadError(f"{source}: files.json is for title {model.id!r}, not {title_id!r}")
        manifest_size = (source / FILES_JSON).stat().st_size
        entries = [*model.files, FileEntry(path=FILES_JSON, size=manifest_size, sha256=digest)]
        _check_sources(source, entries, where)
        keep = self._staging_disks(entries, where) if adopt_verified else set()
        sizes = {e.path: e.size for e in entries}

        def layout(tier: Tier) -> _Layout:
            placement = self._placement(title_id, tier, list(sizes), keep)
            staged = self._staged_bytes(entries, placement, where) if adopt_verified else {}
            return _Layout(placement, bytes_per_disk(placement, sizes), staged)

        with self.locks.hold(title_id):
            with self._deciding_room():
                self._release(title_id)  # a killed load's, void: this process holds the title
                tier = self.choose_tier(title_id, rate, layout)
                placement, needed, staged = layout(tier)
                existing = get_title(self.conn, title_id)
                # A title being removed (its files on a disk that is out wait for it: `purge`)
                # is no longer loaded: the new version replaces what waits.
                if existing is not None and not replace and existing.state != REMOVING:
                    raise LoadError(
                        f"title {title_id} is already loaded ({existing.state}); "
                        "use --replace to reload it"
                    )
                side_by_side = self._take_room(title_id, tier, needed, staged, existing)
            copy = _Copy(
                title_id, where, entries, placement, tier, digest, on_bytes, adopt_verified
            )
            with self._released(title_id):
                if existing is None:
                    return self._copy_in(copy)
                if side_by_side:
                    row = self._replace(existing, copy)
                else:
                    row = self._replace_in_place(source, model, copy, adopt_verified)
        self._drop_retired()  # a grace of 0 (tests) is over at once
        return row

    def _take_room(
        self,
        title_id: str,
        tier: Tier,
        needed: Mapping[str, int],
        staged: Mapping[str, int],
        existing: TitleRow | None,
    ) -> bool:
        """Check that a load fits (CapacityError if not), making room for it from the kept
        files of replaced versions, and reserve it; under the room lock. True when a new
        version fits beside the old one, which serves until the new one is whole."""
        beside, in_place = self._freeing(None, staged), self._freeing(title_id, staged)
        # Refused before anything is dropped when it cannot fit even in place.
        self._check_fit(title_id, tier, needed, self._plus_kept(in_place))
        # Files kept for sessions of replaced versions go before a title is taken out of
        # service for its update (in place), and before one is refused.
        side_by_side = False
        if existing is None:
            self._make_room(title_id, tier, needed, beside)
            self._check_fit(title_id, tier, needed, beside)
        elif not (side_by_side := self._make_room(title_id, tier, needed, beside)):
            self._make_room(title_id, tier, needed, in_place)
            self._check_fit(title_id, tier, needed, in_place)
        # Staged bytes renamed in are on their disk's filesystem, counted as used already.
        self._reserve(title_id, {d: n - beside.get(d, 0) for d, n in needed.items()})
        return side_by_side

    def _replace_in_place(
        self, source: Path, model: titlefiles.TitleFiles, copy: _Copy, adopt_verified: bool
    ) -> TitleRow:
        """No room for both versions: the old copy goes first, and the title is out of
        service until the new one is in. The new copy is checked fully before the old one is
        dropped (an adopting caller has just done so; `located` only comes with
        adopt_verified, so a plain folder is verified here)."""
        problems = [] if adopt_verified else titlefiles.verify(source, model)
        if problems:
            raise LoadError(f"{source}: {problems[0]}")
        event(log, "title.replace.in_place", logging.WARNING, title=copy.title_id,
              why="no room for the new version beside the old one")  # fmt: skip
        # The new version takes the title's row at once: old files on a disk out of service
        # are not waited for; reconcile sweeps them off it when it is back (not indexed).
        self.purge(copy.title_id, wait_for_disks=False)
        return self._copy_in(copy)

    def _freeing(self, title_id: str | None, staged: Mapping[str, int]) -> dict[str, int]:
        """Room per disk that a load does not need to find: `staged` bytes (an adopting
        caller's, already on the disk's own filesystem, renamed in) and, with `title_id`,
        what purging its stored version frees (the in-place path). Under max_bytes only
        indexed bytes count as used, so staged files gain nothing there and the old version
        frees all it is indexed at; on a whole filesystem, purging frees only the files that
        no hard link (the fill's reuse of unchanged files) keeps alive."""
        quota = {d.id for d in self.disks if d.max_bytes}
        gained = {d: size for d, size in staged.items() if d not in quota}
        for f in title_files(self.conn, title_id) if title_id is not None else ():
            try:
                if f.disk in quota or f.location.stat().st_nlink == 1:
                    gained[f.disk] = gained.get(f.disk, 0) + f.size
            except OSError:
                continue  # gone already: it frees nothing
        return gained

    def _staging_disks(
        self, entries: Sequence[FileEntry], where: Callable[[str], Path]
    ) -> set[str]:
        """Disks whose filesystem holds staged files of this load, which are renamed in, not
        copied: the room they take there is theirs already. Not under max_bytes, where only
        indexed bytes count as used and staged files take none of the quota."""
        devices = {os.stat(where(e.path)).st_dev for e in entries}
        return {d.id for d in self.disks if not d.max_bytes and os.stat(d.path).st_dev in devices}

    def _staged_bytes(
        self,
        entries: Sequence[FileEntry],
        placement: Mapping[str, str],
        where: Callable[[str], Path],
    ) -> dict[str, int]:
        devices = {d.id: os.stat(d.path).st_dev for d in self.disks}
        staged: dict[str, int] = {}
        for entry in entries:
            disk = placement[entry.path]
            if os.stat(where(entry.path)).st_dev == devices.get(disk):
                staged[disk] = staged.get(disk, 0) + entry.size
        return staged

    def _copy_in(self, copy: _Copy) -> TitleRow:
        """A title new to the index: recorded as loading first, so that a crash half-way
        leaves a row reconcile purges; ready once every file is in. Stopped half-way (an
        error, Ctrl-C), nothing of it is left, whatever Ctrl-C follows (undone_on_failure)."""
        title_id = copy.title_id
        moved: list[tuple[Path, Path]] = []

        def undo() -> None:
            _put_back(moved)
            self.purge(title_id)

        with undone_on_failure(undo):
            with transaction(self.conn) as conn:
                conn.execute(
                    "INSERT INTO titles (id, digest, state, tier, bytes, loaded_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (title_id, copy.digest, LOADING, copy.tier, copy.total, time.time()),
                )
            rows = self._write_files(copy, title_id, moved)
            with transaction(self.conn) as conn:
                conn.executemany(_INSERT_FILE, rows)
                conn.execute(
                    "UPDATE titles SET state = ?, loaded_at = ? WHERE id = ?",
                    (READY, time.time(), title_id),
                )
                conn.execute(_RELEASE, (title_id,))  # its room now counted by these rows
        event(log, "title.loaded", title=title_id, tier=copy.tier, bytes=copy.total,
              files=len(copy.entries))  # fmt: skip
        return self.title(title_id)

    def _replace(self, old: TitleRow, copy: _Copy) -> TitleRow:
        """A new version of a title in the index, written into a folder of its own beside the
        old one (which keeps serving, and is all that is left after a failure); then one
        transaction swaps the title's rows, and the old folder goes after a grace."""
        title_id = copy.title_id
        folder = new_folder(title_id)
        new_paths = {e.path for e in copy.entries}
        old_files = title_files(self.conn, title_id)
        keep_s = self.config.replaced_keep_s
        kept = replaced.kept_files(old_files, new_paths) if keep_s > 0 else []
        kept_paths = {f.path for f in kept}
        # What the old folder holds beyond the kept files (counted in the index) until it goes.
        old_bytes: dict[str, int] = {}
        for f in old_files:
            if f.path not in kept_paths:
                old_bytes[f.disk] = old_bytes.get(f.disk, 0) + f.size
        moved: list[tuple[Path, Path]] = []

        def undo() -> None:
            _put_back(moved)
            self._remove_folder(title_id, folder)

        with undone_on_failure(undo):
            rows = self._write_files(copy, folder, moved)
            with transaction(self.conn) as conn:
                emptied = replaced.record(conn, title_id, kept, new_paths, time.time() + keep_s)
                conn.execute("DELETE FROM files WHERE title = ?", (title_id,))
                conn.execute(
                    "UPDATE titles SET digest = ?, state = ?, tier = ?, bytes = ?, loaded_at = ?, "
                    "folder = ? WHERE id = ?",
                    (copy.digest, READY, copy.tier, copy.total, time.time(), folder, title_id),
                )
                conn.executemany(_INSERT_FILE, rows)
                conn.execute(_RELEASE, (title_id,))
        event(log, "title.replaced", title=title_id, tier=copy.tier, bytes=copy.total,
              files=len(copy.entries), old=old.digest[:12], new=copy.digest[:12],
              kept=len(kept))  # fmt: skip
        # A worker that located a file of the old version just before the swap still opens
        # it: the folder goes after the grace, at a later load or at close (a fill replacing
        # many titles does not wait out a grace for each).
        due = time.monotonic() + self.grace_s
        self._retired.append(_Retired(due, title_id, old.folder, old_bytes))
        _mark_retired(self.disks, old.folder)
        # Older versions whose kept names the new version has again: pruned to what is still
        # kept there, or gone, after the same grace.
        for older in sorted(emptied - {old.folder}):
            self._retired.append(_Retired(due, title_id, older, {}))
        return self.title(title_id)

    def _write_files(
        self, copy: _Copy, folder: str, moved: list[tuple[Path, Path]]
    ) -> list[tuple[object, ...]]:
        """Every file of `copy` at its final name in DISK/titles/`folder`, whole and synced;
        returns the index rows that describe them. Files renamed in (adopted) are added to
        `moved` as they go: a caller that fails, here or after, puts them back (_put_back)
        before it deletes the folder."""
        if copy.adopt:
            fsync_files([copy.where(e.path) for e in copy.entries])
        rows: list[tuple[object, ...]] = []
        for entry in copy.entries:
            disk = copy.placement[entry.path]
            src, dst = copy.where(entry.path), file_path(disk, folder, entry.path)
            try:
                if copy.adopt and move_verified(src, dst, entry.size):
                    moved.append((src, dst))
                    if copy.on_bytes:
                        copy.on_bytes(entry.size)
                else:
                    copy_verified(src, dst, entry.size, entry.sha256, on_bytes=copy.on_bytes)
            except ChecksumMismatch as exc:
                raise LoadError(f"{src}: {exc} (files.json says otherwise)") from None
            except OSError as exc:
                raise LoadError(f"cannot copy {entry.path} of {copy.title_id}: {exc}") from None
            mtime_ns = dst.stat().st_mtime_ns
            rows.append((copy.title_id, entry.path, disk, entry.size, entry.sha256, mtime_ns, OK))
        for moved_to in {dst.parent for _, dst in moved}:
            fsync_dir(moved_to)
        return rows

    def _remove_folder(self, title_id: str, folder: str) -> None:
        """Delete a folder of a title that the index no longer names, on every disk; what
        cannot be deleted now (a disk gone read-only) is swept by the next reconcile."""
        for disk in self.disks:
            path = disk.titles_dir / folder
            try:
                if remove_entry(path):
                    fsync_dir(disk.titles_dir)
            except OSError as exc:
                event(log, "title.folder.left", logging.WARNING, title=title_id, path=str(path),
                      error=exc.strerror or str(exc))  # fmt: skip

    # -- remove ----------------------------------------------------------------------------

    def remove(self, title_id: str) -> dict[str, int]:
        """Delete a title's files and forget it. Returns its files left on disks out of
        service (disk id → count): they cannot be deleted now, so the title stays in the
        index, `removing` and not served, with their rows only, and the reconcile that runs
        when the disk is back (the daemon's re-scan, or any command) deletes them."""
        check_title_id(title_id)
        with self.locks.hold(title_id):
            self.title(title_id)
            # Refuse before changing anything: purge would take the title out of service and
            # delete its files on the other disks, then fail on the read-only one.
            read_only = sorted(
                {f.disk for f in title_files(self.conn, title_id)}
                & {d.id for d in self.disks if not d.writable}
            )
            if read_only:
                raise StorageError(
                    f"cannot remove {title_id}: its files on {', '.join(read_only)} cannot be "
                    "deleted (read-only file system); it keeps serving: remount the disk "
                    "read-write, then remove it"
                )
            pending = self.purge(title_id)
        if pending:
            event(log, "title.removal_pending", logging.WARNING, title=title_id,
                  files=pending)  # fmt: skip
        else:
            event(log, "title.removed", title=title_id)
        return pending

    def purge(self, title_id: str, *, wait_for_disks: bool = True) -> dict[str, int]:
        """Take a title out of service, delete its files everywhere, then its rows.

        The 'removing' state is committed first, so a crash half-way leaves a title that is
        not served and that reconcile finishes removing. Files on a disk out of service
        (dead, unmounted) cannot be deleted now: with `wait_for_disks` their rows and the
        title's stay, so the removal is finished when the disk is back rather than its
        files forgotten there (a whole title left there would even be adopted back).
        Returns those files' count per disk. A Ctrl-C or SIGTERM during it takes effect once
        it is over: stopped half-way, it would leave the title `removing` and most of its
        bytes on the disks until the next reconcile."""
        with uninterrupted():
            return self._purge(title_id, wait_for_disks)

    def _purge(self, title_id: str, wait_for_disks: bool) -> dict[str, int]:
        row = get_title(self.conn, title_id)
        with transaction(self.conn) as conn:
            conn.execute("UPDATE titles SET state = ? WHERE id = ?", (REMOVING, title_id))
        self.drop_replaced(title_id=title_id, everything=True)
        for disk in self.disks:
            folder = disk.titles_dir / (row.folder if row else title_id)
            try:
                # A link in the folder's place is removed itself, never what it points to.
                if remove_entry(folder):
                    fsync_dir(disk.titles_dir)
            except OSError as exc:
                raise StorageError(
                    f"cannot delete {folder}: {exc.strerror}; title {title_id} is out of "
                    "service and its removal is finished by the next reconcile (the daemon's, or "
                    "`appliance reconcile`)"
                ) from None
        out = set(self.out_of_service) if wait_for_disks else set()
        pending: dict[str, int] = {}
        for f in title_files(self.conn, title_id):
            if f.disk in out:
                pending[f.disk] = pending.get(f.disk, 0) + 1
        with transaction(self.conn) as conn:
            if pending:
                marks = ", ".join("?" * len(pending))
                conn.execute(
                    f"DELETE FROM files WHERE title = ? AND disk NOT IN ({marks})",
                    (title_id, *pending),
                )
            else:
                conn.execute("DELETE FROM files WHERE title = ?", (title_id,))
                conn.execute("DELETE FROM titles WHERE id = ?", (title_id,))
        return pending

    # -- tier moves ------------------------------------------------------------------------

    def move(
        self,
        title_id: str,
        to_tier: Tier,
        *,
        throttle: Throttle | None = None,
        should_stop: Callable[[], bool] | None = None,
        grace_s: float = UNLINK_GRACE_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> bool:
        """Copy a ready title to `to_tier`, flip its rows in one transaction, then drop the old
        copies. Serving continues from the old copies until the flip. False when there was
        nothing to do or someone else holds the title. DamagedSource when a stored file
        no longer matches its hash (the caller drops it)."""
        with self.locks.hold(title_id, wait=False) as held:
            if not held:
                return False
            row = get_title(self.conn, title_id)
            if row is None or row.state != READY or row.tier == to_tier:
                return False
            if not self.writable_disks_of(to_tier):
                return False
            files = title_files(self.conn, title_id)
            with self._deciding_room():
                self._release(title_id)  # a killed move's, void: this process holds the title
                placement = self._placement(title_id, to_tier, [f.path for f in files])
                # A file already where the placement puts it (its disk's tier was changed in
                # the config) is only relabelled: copied onto itself, its "old copy" would be
                # dropped after the flip, and with it the only one.
                moving = [f for f in files if _destination(f, placement) != f.location]
                needed = bytes_per_disk(
                    {f.path: placement[f.path] for f in moving}, {f.path: f.size for f in moving}
                )
                self._check_fit(title_id, to_tier, needed, {}, "low")
                self._reserve(title_id, needed)
            staying = len(files) - len(moving)
            copies: list[Path] = []
            keep = [f.location for f in files]
            undo = undone_on_failure(lambda: self._drop_files(title_id, copies, keep=keep))
            with self._released(title_id), undo:
                for f in moving:
                    dst = _destination(f, placement)
                    try:
                        copy_verified(
                            f.location,
                            dst,
                            f.size,
                            f.sha256,
                            throttle=throttle,
                            should_stop=should_stop,
                        )
                    except ChecksumMismatch as exc:
                        raise DamagedSource(
                            f"cannot move {title_id}: {f.location} is damaged ({exc})", f
                        ) from None
                    copies.append(dst)
                self._flip(row, to_tier, moving, placement)
            event(log, "title.moved", title=title_id, frm=row.tier, to=to_tier, bytes=row.bytes,
                  relabelled=staying)  # fmt: skip
            if not moving:
                return True  # nothing copied: no old copy to wait for or drop
            sleep(grace_s)
            try:
                now_at = [_destination(f, placement) for f in files]
                self._drop_files(title_id, [f.location for f in moving], keep=now_at)
            except OSError as exc:
                # The source disk died since (the daemon took it out): its old copies are no
                # longer in the index, and reconcile sweeps them when it is back.
                event(log, "title.move.old_copies_left", logging.WARNING, title=title_id,
                      error=exc.strerror or str(exc))  # fmt: skip
            return True

    def _flip(
        self, row: TitleRow, to_tier: Tier, copied: Sequence[FileRow], placement: Mapping[str, str]
    ) -> None:
        """Point the title's rows at their verified copies on `to_tier`, in one transaction.
        `copied`: the files copied (those already in place keep their rows as they are).

        The rows were read before the copy, without a lock the daemon's health thread would
        take: a source disk taken out meanwhile marked them missing and the title incomplete.
        The copies are whole and verified on a disk in service, so they serve: state OK, and
        the title ready again once none of its files is missing. A row that no longer
        describes the file copied (another disk, another hash) aborts the move instead."""
        title_id = row.id
        with transaction(self.conn) as conn:
            for f in copied:
                dst = _destination(f, placement)
                changed = conn.execute(
                    "UPDATE files SET disk = ?, mtime_ns = ?, state = ? "
                    "WHERE title = ? AND path = ? AND disk = ? AND sha256 = ?",
                    (placement[f.path], dst.stat().st_mtime_ns, OK, title_id, f.path, f.disk,
                     f.sha256),
                ).rowcount  # fmt: skip
                if changed != 1:
                    raise StorageError(
                        f"cannot move {title_id}: {f.path} changed while it was copied; "
                        "the move is tried again later"
                    )
            conn.execute("UPDATE titles SET tier = ? WHERE id = ?", (to_tier, title_id))
            conn.execute(_RELEASE, (title_id,))
            left = conn.execute(
                "SELECT COUNT(*) FROM files WHERE title = ? AND state != ?", (title_id, OK)
            ).fetchone()[0]
            if left == 0:
                conn.execute(
                    "UPDATE titles SET state = ? WHERE id = ? AND state = ?",
                    (READY, title_id, INCOMPLETE),
                )

    def _drop_files(self, title_id: str, paths: list[Path], *, keep: Collection[Path] = ()) -> None:
        """Delete `paths`, never one in `keep` (what the index names after a move): a path
        both dropped and kept is the title's only copy."""
        kept = set(keep)
        paths = [p for p in paths if p not in kept]
        unlink_synced(paths)
        for path in paths:
            disk_titles = next(
                (d.titles_dir for d in self.disks if d.titles_dir in path.parents), None
            )
            if disk_titles is not None:
                prune_empty_dirs(path.parent, disk_titles)


def _destination(f: FileRow, placement: Mapping[str, str]) -> Path:
    """Where a tier move puts a stored file: its placed disk, in the title's folder."""
    return file_path(placement[f.path], f.folder, f.path)


def _check_sources(
    source: Path, entries: Sequence[FileEntry], where: Callable[[str], Path]
) -> None:
    """Refuse before writing anything if a listed file is absent or of the wrong size."""
    for entry in entries:
        path = where(entry.path)
        try:
            st = path.stat()
        except OSError:
            raise LoadError(f"{source}: {entry.path} is listed in files.json but missing") from None
        if not path.is_file():
            raise LoadError(f"{source}: {entry.path} is not a regular file")
        if st.st_size != entry.size:
            raise LoadError(
                f"{source}: {entry.path} has {st.st_size} bytes, files.json says {entry.size}"
            )


# A folder of a title that an update retired is left alone by any reconcile for this long (its
# mtime is set at retirement): the process that retired it deletes it after its own grace,
# and a request that located a file there just before the swap can still open it.
RETIRED_GRACE_S = 60.0


def _put_back(moved: Sequence[tuple[Path, Path]]) -> None:
    """Files a failed load had renamed in go back where they came from (the fill's
    staging), so a retry need not download them again."""
    for src, dst in reversed(moved):
        with contextlib.suppress(OSError):
            os.rename(dst, src)


def _mark_retired(disks: Sequence[Disk], folder: str) -> None:
    for disk in disks:
        with contextlib.suppress(OSError):  # a disk gone read-only: reconcile sweeps it later
            os.utime(disk.titles_dir / folder)


def recently_retired(path: Path, now: float) -> bool:
    try:
        return now - path.stat().st_mtime < RETIRED_GRACE_S
    except OSError:
        return False

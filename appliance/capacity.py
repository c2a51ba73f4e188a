"""Room on the disks for loads and tier moves (part of the store's I/O shell): each disk's
usage counting what loads and moves in progress, in any process, have reserved; whether a
title fits; and room made for it from the files kept for replaced versions' sessions.

A load's or move's files are not in the index until they are whole, so each one reserves
the room it is about to fill (the `reserved` table) between its check and the transaction
that indexes its files, under a store-wide lock: two checks at once would each find the
room the other is about to fill.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

from appliance import replaced
from appliance.config import Tier
from appliance.disks import (
    CapacityError,
    Disk,
    DiskUsage,
    StorageError,
    Watermark,
    by_filesystem,
    measure,
    room,
    shared_fs_shortfalls,
)
from appliance.index import room_taken, title_files, transaction
from appliance.placement import shortfalls
from appliance.safefiles import TitleLocks

# Every load and tier move holds this lock (in the locks folder; no title's lock is named so,
# as ids start with a letter or digit) from its room check until the room it takes is reserved.
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


def release_in(conn: sqlite3.Connection, title_id: str) -> None:
    """Drop the title's reservation inside the caller's transaction: the one that indexes
    its files, whose rows now count the room."""
    conn.execute(_RELEASE, (title_id,))


class Capacity:
    """The room questions of one Store: its index connection, disks in service and locks.
    `in_grace()`: bytes per disk of each replaced version still on disk in its grace (out
    of the index); `drop_kept(title, folder)`: delete a replaced version's kept files."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        disks: Sequence[Disk],
        locks: TitleLocks,
        in_grace: Callable[[], Iterable[Mapping[str, int]]],
        drop_kept: Callable[[str, str], object],
    ) -> None:
        self.conn = conn
        self.disks = disks
        self.locks = locks
        self.in_grace = in_grace
        self.drop_kept = drop_kept

    def usage_and_reserved(self) -> tuple[list[DiskUsage], dict[str, int]]:
        """Each disk's usage counting the room reserved by loads and moves in progress, and
        that room per disk."""
        # Whose reservation is live is asked first: a load that ends after its rows were
        # read, and lets go of its title's lock before the question, would count nowhere.
        # A title reserving after the question is live (it holds the lock the while).
        asked = {t: self._worked_on(t) for (t,) in self.conn.execute(_RESERVING)}
        indexed, reserved = room_taken(self.conn)
        # A version in its grace is out of the index but still on disk: under max_bytes,
        # where only the index counts as used, it must count too.
        for bytes_on in self.in_grace():
            for disk, size in bytes_on.items():
                indexed[disk] = indexed.get(disk, 0) + size
        live = reserved_on_disks(reserved, {t for t in reserved if asked.get(t, True)})
        usage = [less_room(measure(d, indexed.get(d.id, 0)), live.get(d.id, 0)) for d in self.disks]
        return usage, live

    def _worked_on(self, title_id: str) -> bool:
        """Some process (this one included) holds the title's lock: a reservation of it is
        live. Its holder dead, the kernel dropped the lock, and the reservation is void."""
        with self.locks.hold(title_id, wait=False) as free:
            return not free

    def deciding(self) -> contextlib.AbstractContextManager[None]:
        """Held (ROOM_LOCK) from a load's or move's room check until its room is reserved:
        a room check and one transaction."""
        return self.locks.store_wide(ROOM_LOCK)

    def reserve(self, title_id: str, sizes: Mapping[str, int]) -> None:
        """Record the room (disk → bytes) the title's load or move is about to fill, under
        the room lock, after its check; it holds the title's lock until the room is released
        (in the transaction that indexes its files, or `released`). Reservations of titles
        nobody works on (a process killed half-way) go now: none can be made meanwhile."""
        titles = [t for (t,) in self.conn.execute(_RESERVING)]
        void = [t for t in titles if t != title_id and not self._worked_on(t)]
        rows = [(title_id, disk, size) for disk, size in sorted(sizes.items()) if size > 0]
        with transaction(self.conn) as conn:
            conn.executemany(_RELEASE, [(t,) for t in (title_id, *void)])
            conn.executemany("INSERT INTO reserved (title, disk, size) VALUES (?, ?, ?)", rows)

    def release(self, title_id: str) -> None:
        if self.conn.execute("SELECT 1 FROM reserved WHERE title = ?", (title_id,)).fetchone():
            with transaction(self.conn) as conn:
                release_in(conn, title_id)

    @contextlib.contextmanager
    def released(self, title_id: str) -> Iterator[None]:
        """The title's reservation is gone once the block ends, however it ends. A failure
        to delete it is let be: void once the title's lock goes, it counts for nothing."""
        try:
            yield
        finally:
            with contextlib.suppress(StorageError):
                self.release(title_id)

    def check_fit(
        self,
        title_id: str,
        tier: Tier,
        needed: Mapping[str, int],
        freeing: Mapping[str, int],
        watermark: Watermark = "high",
    ) -> None:
        """CapacityError unless `needed` (disk → bytes) fits below the watermark, counting
        `freeing` (disk → bytes the load frees or need not find) as free."""
        usage, reserved = self.usage_and_reserved()
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

    def fits(
        self, title_id: str, tier: Tier, needed: Mapping[str, int], freeing: Mapping[str, int]
    ) -> bool:
        try:
            self.check_fit(title_id, tier, needed, freeing)
        except CapacityError:
            return False
        return True

    def plus_kept(self, freeing: Mapping[str, int]) -> dict[str, int]:
        """`freeing` and the room the files kept for replaced versions' sessions take: room
        a load may have (make_room frees it, oldest first, when it is needed)."""
        total = dict(freeing)
        for disk, size in replaced.bytes_on_disks(self.conn).items():
            total[disk] = total.get(disk, 0) + size
        return total

    def make_room(
        self, title_id: str, tier: Tier, needed: Mapping[str, int], freeing: Mapping[str, int]
    ) -> bool:
        """True when `needed` fits, deleting kept files of replaced versions for it, oldest
        first and only as many as it takes; none at all when even all of them would not do."""
        if self.fits(title_id, tier, needed, freeing):
            return True
        if not self.fits(title_id, tier, needed, self.plus_kept(freeing)):
            return False
        # Only room on the disks the title goes to helps, or on the others of their
        # filesystem when the filesystem's own free space is what counts (no max_bytes).
        wanted = {disk for disk, size in needed.items() if size > 0}
        for group in by_filesystem([d for d in self.disks if not d.max_bytes]):
            if wanted & {d.id for d in group}:
                wanted |= {d.id for d in group}
        for title, folder, disks in replaced.oldest_first(self.conn):
            if disks & wanted:
                self.drop_kept(title, folder)
                if self.fits(title_id, tier, needed, freeing):
                    return True
        return False

    def freeing(self, title_id: str | None, staged: Mapping[str, int]) -> dict[str, int]:
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

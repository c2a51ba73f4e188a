"""The title store (I/O shell): load, list, remove and move titles across the disks, crash-safely.

Decisions come from placement.py (which disk) and tiering.py (which tier); bytes go through
safefiles.py (temporary name, fsync, rename, fsync directory) and only then into the index
(index.py). Beside it: capacity.py (room and reservations), tiermove.py (tier moves),
listing.py (`ls`), folders.py (a title's folders). repair.py reconciles the index with the
disks and re-hashes on demand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from appliance import copyin, diskclaim, replaced, tiering, tiermove
from appliance.capacity import Capacity, release_in
from appliance.config import StorageConfig, Tier
from appliance.disks import (
    SYSFS,
    Disk,
    DiskError,
    DiskUsage,
    LoadError,
    StorageError,
    UnknownTitle,
    check_layout,
    open_disks,
    room,
)
from appliance.folders import mark_retired, new_folder
from appliance.index import (
    LOADING,
    OK,
    READY,
    REMOVING,
    TitleRow,
    connect_writer,
    disks_with_files,
    get_title,
    no_index,
    refuse_newer,
    title_files,
    transaction,
)
from appliance.listing import TitleListing, list_titles, unsettled_titles
from appliance.placement import Bucket, bytes_per_disk, choose, file_key, place_title
from appliance.safefiles import (
    UNLINK_GRACE_S,
    TitleLocks,
    fsync_dir,
    remove_entry,
    undone_on_failure,
    uninterrupted,
)
from edgeflix import titlefiles
from edgeflix.log import event
from edgeflix.titlefiles import FILES_JSON, FileEntry, check_title_id

log = logging.getLogger("appliance.store")

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


class _Retired(NamedTuple):
    """The folder of a replaced version, deleted after its grace."""

    due: float  # on the monotonic clock
    title_id: str
    folder: str
    bytes_on: dict[str, int]  # disk id → bytes it holds there


def locks_folder(index: Path) -> Path:
    return index.parent / f"{index.name}.locks"


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
        refuse_newer(config.index)  # a newer Edgeflix's index: nothing made on its disks
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
            self.capacity = Capacity(
                self.conn, self.disks, self.locks,
                in_grace=lambda: [r.bytes_on for r in self._retired],
                drop_kept=lambda title, folder: self.drop_replaced(
                    title_id=title, folder=folder, everything=True
                ),
            )  # fmt: skip
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
                conn,
                time.time(),
                self.config.replaced_keep_s,
                title_id=title_id,
                folder=folder,
                everything=everything,
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
        return self.capacity.usage_and_reserved()[0]

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
        return list_titles(self.conn, self.disks, self.out_of_service)

    def unsettled(self) -> set[str]:
        """Titles a reconcile must settle before a load trusts the room it finds."""
        return unsettled_titles(self.conn, self.disks, self.out_of_service)

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
            freeing = self.capacity.plus_kept(self.capacity.freeing(title_id, {}))
            free = {r.disk: r.free for r in (room(u) for u in self.usage())}
            roomy = [
                d for d in disks if d.id in keep or free.get(d.id, 0) + freeing.get(d.id, 0) > 0
            ]
            disks = roomy or disks  # none has room: the fit check says where it falls short
        return [d.bucket() for d in disks]

    def placement(
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
            in_place = self.capacity.freeing(title_id, fit.staged)
            if self.capacity.fits(title_id, tier, fit.needed, self.capacity.plus_kept(in_place)):
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
            placement = self.placement(title_id, tier, list(sizes))
            staged = staged_on(placement) if staged_on is not None else {}
            return _Layout(placement, bytes_per_disk(placement, sizes), staged)

        tier = self.choose_tier(title_id, rate, layout)
        _, needed, staged = layout(tier)
        freeing = self.capacity.freeing(title_id, staged)
        self.capacity.check_fit(title_id, tier, needed, self.capacity.plus_kept(freeing))
        # The fill stages the files on the disks before `load`: the room they take must be
        # free now, so kept files of replaced versions go here when it needs theirs.
        self.capacity.make_room(title_id, tier, needed, freeing)
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
        copyin.check_sources(source, entries, where)
        keep = copyin.staging_disks(self.disks, entries, where) if adopt_verified else set()
        sizes = {e.path: e.size for e in entries}

        def layout(tier: Tier) -> _Layout:
            placement = self.placement(title_id, tier, list(sizes), keep)
            staged = (
                copyin.staged_bytes(self.disks, entries, placement, where) if adopt_verified else {}
            )
            return _Layout(placement, bytes_per_disk(placement, sizes), staged)

        with self.locks.hold(title_id):
            with self.capacity.deciding():
                # A killed load's reservation, void: this process holds the title now.
                self.capacity.release(title_id)
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
            copy = copyin.Copy(
                title_id, where, entries, placement, tier, digest, on_bytes, adopt_verified
            )
            with self.capacity.released(title_id):
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
        cap = self.capacity
        beside, in_place = cap.freeing(None, staged), cap.freeing(title_id, staged)
        # Refused before anything is dropped when it cannot fit even in place.
        cap.check_fit(title_id, tier, needed, cap.plus_kept(in_place))
        # Files kept for sessions of replaced versions go before a title is taken out of
        # service for its update (in place), and before one is refused.
        side_by_side = False
        if existing is None:
            cap.make_room(title_id, tier, needed, beside)
            cap.check_fit(title_id, tier, needed, beside)
        elif not (side_by_side := cap.make_room(title_id, tier, needed, beside)):
            cap.make_room(title_id, tier, needed, in_place)
            cap.check_fit(title_id, tier, needed, in_place)
        # Staged bytes renamed in are on their disk's filesystem, counted as used already.
        cap.reserve(title_id, {d: n - beside.get(d, 0) for d, n in needed.items()})
        return side_by_side

    def _replace_in_place(
        self, source: Path, model: titlefiles.TitleFiles, copy: copyin.Copy, adopt_verified: bool
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

    def _copy_in(self, copy: copyin.Copy) -> TitleRow:
        """A title new to the index: recorded as loading first, so that a crash half-way
        leaves a row reconcile purges; ready once every file is in. Stopped half-way (an
        error, Ctrl-C), nothing of it is left, whatever Ctrl-C follows (undone_on_failure)."""
        title_id = copy.title_id
        moved: list[tuple[Path, Path]] = []

        def undo() -> None:
            copyin.put_back(moved)
            self.purge(title_id)

        with undone_on_failure(undo):
            with transaction(self.conn) as conn:
                conn.execute(
                    "INSERT INTO titles (id, digest, state, tier, bytes, loaded_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (title_id, copy.digest, LOADING, copy.tier, copy.total, time.time()),
                )
            rows = copyin.write_files(copy, title_id, moved)
            with transaction(self.conn) as conn:
                conn.executemany(_INSERT_FILE, rows)
                conn.execute(
                    "UPDATE titles SET state = ?, loaded_at = ? WHERE id = ?",
                    (READY, time.time(), title_id),
                )
                release_in(conn, title_id)  # its room now counted by these rows
        event(log, "title.loaded", title=title_id, tier=copy.tier, bytes=copy.total,
              files=len(copy.entries))  # fmt: skip
        return self.title(title_id)

    def _replace(self, old: TitleRow, copy: copyin.Copy) -> TitleRow:
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
            copyin.put_back(moved)
            self._remove_folder(title_id, folder)

        with undone_on_failure(undo):
            rows = copyin.write_files(copy, folder, moved)
            with transaction(self.conn) as conn:
                emptied = replaced.record(conn, title_id, kept, new_paths, time.time() + keep_s)
                conn.execute("DELETE FROM files WHERE title = ?", (title_id,))
                conn.execute(
                    "UPDATE titles SET digest = ?, state = ?, tier = ?, bytes = ?, loaded_at = ?, "
                    "folder = ? WHERE id = ?",
                    (copy.digest, READY, copy.tier, copy.total, time.time(), folder, title_id),
                )
                conn.executemany(_INSERT_FILE, rows)
                release_in(conn, title_id)
        event(log, "title.replaced", title=title_id, tier=copy.tier, bytes=copy.total,
              files=len(copy.entries), old=old.digest[:12], new=copy.digest[:12],
              kept=len(kept))  # fmt: skip
        # A worker that located a file of the old version just before the swap still opens
        # it: the folder goes after the grace, at a later load or at close (a fill replacing
        # many titles does not wait out a grace for each).
        due = time.monotonic() + self.grace_s
        self._retired.append(_Retired(due, title_id, old.folder, old_bytes))
        mark_retired(self.disks, old.folder)
        # Older versions whose kept names the new version has again: pruned to what is still
        # kept there, or gone, after the same grace.
        for older in sorted(emptied - {old.folder}):
            self._retired.append(_Retired(due, title_id, older, {}))
        return self.title(title_id)

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

    # Copy a ready title to another tier, flip its rows in one transaction, then drop the
    # old copies; serving continues from the old copies until the flip (tiermove.py).
    move = tiermove.move

"""A tier move (part of the store's I/O shell): copy a ready title's files to their disks of
another tier, verified, point its rows at the copies in one transaction, then drop the old
copies after a grace. Serving continues from the old copies until the flip; tiering.py and
mover.py decide which title moves when.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.capacity import release_in
from appliance.config import Tier
from appliance.disks import Disk, StorageError
from appliance.index import (
    INCOMPLETE,
    OK,
    READY,
    FileRow,
    TitleRow,
    file_path,
    get_title,
    title_files,
    transaction,
)
from appliance.placement import bytes_per_disk
from appliance.safefiles import (
    UNLINK_GRACE_S,
    ChecksumMismatch,
    Throttle,
    copy_verified,
    prune_empty_dirs,
    undone_on_failure,
    unlink_synced,
)
from edgeflix.log import event

if TYPE_CHECKING:
    import sqlite3

    from appliance.store import Store

log = logging.getLogger("appliance.store")


class DamagedSource(StorageError):
    """A tier move found a stored file whose bytes no longer match the index: the caller
    drops it (repair.drop) rather than serve it on and copy the title again every round."""

    def __init__(self, message: str, file: FileRow) -> None:
        super().__init__(message)
        self.file = file


def move(
    store: Store,
    title_id: str,
    to_tier: Tier,
    *,
    throttle: Throttle | None = None,
    should_stop: Callable[[], bool] | None = None,
    grace_s: float = UNLINK_GRACE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Move a ready title to `to_tier` (Store.move). False when there was nothing to do or
    someone else holds the title. DamagedSource when a stored file no longer matches its hash
    (the caller drops it)."""
    with store.locks.hold(title_id, wait=False) as held:
        if not held:
            return False
        row = get_title(store.conn, title_id)
        if row is None or row.state != READY or row.tier == to_tier:
            return False
        if not store.writable_disks_of(to_tier):
            return False
        files = title_files(store.conn, title_id)
        capacity = store.capacity
        with capacity.deciding():
            capacity.release(title_id)  # a killed move's, void: this process holds the title
            placement = store.placement(title_id, to_tier, [f.path for f in files])
            # A file already where the placement puts it (its disk's tier was changed in
            # the config) is only relabelled: copied onto itself, its "old copy" would be
            # dropped after the flip, and with it the only one.
            moving = [f for f in files if _destination(f, placement) != f.location]
            needed = bytes_per_disk(
                {f.path: placement[f.path] for f in moving}, {f.path: f.size for f in moving}
            )
            capacity.check_fit(title_id, to_tier, needed, {}, "low")
            capacity.reserve(title_id, needed)
        staying = len(files) - len(moving)
        copies: list[Path] = []
        keep = [f.location for f in files]
        undo = undone_on_failure(lambda: _drop_files(store.disks, copies, keep=keep))
        with capacity.released(title_id), undo:
            for f in moving:
                dst = _destination(f, placement)
                try:
                    copy_verified(
                        f.location, dst, f.size, f.sha256,
                        throttle=throttle, should_stop=should_stop,
                    )  # fmt: skip
                except ChecksumMismatch as exc:
                    raise DamagedSource(
                        f"cannot move {title_id}: {f.location} is damaged ({exc})", f
                    ) from None
                copies.append(dst)
            _flip(store.conn, row, to_tier, moving, placement)
        event(log, "title.moved", title=title_id, frm=row.tier, to=to_tier, bytes=row.bytes,
              relabelled=staying)  # fmt: skip
        if not moving:
            return True  # nothing copied: no old copy to wait for or drop
        sleep(grace_s)
        try:
            now_at = [_destination(f, placement) for f in files]
            _drop_files(store.disks, [f.location for f in moving], keep=now_at)
        except OSError as exc:
            # The source disk died since (the daemon took it out): its old copies are no
            # longer in the index, and reconcile sweeps them when it is back.
            event(log, "title.move.old_copies_left", logging.WARNING, title=title_id,
                  error=exc.strerror or str(exc))  # fmt: skip
        return True


def _flip(
    conn: sqlite3.Connection,
    row: TitleRow,
    to_tier: Tier,
    copied: Sequence[FileRow],
    placement: Mapping[str, str],
) -> None:
    """Point the title's rows at their verified copies on `to_tier`, in one transaction.
    `copied`: the files copied (those already in place keep their rows as they are).

    The rows were read before the copy, without a lock the daemon's health thread would
    take: a source disk taken out meanwhile marked them missing and the title incomplete.
    The copies are whole and verified on a disk in service, so they serve: state OK, and
    the title ready again once none of its files is missing. A row that no longer
    describes the file copied (another disk, another hash) aborts the move instead."""
    title_id = row.id
    with transaction(conn) as tx:
        for f in copied:
            dst = _destination(f, placement)
            changed = tx.execute(
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
        tx.execute("UPDATE titles SET tier = ? WHERE id = ?", (to_tier, title_id))
        release_in(tx, title_id)
        left = tx.execute(
            "SELECT COUNT(*) FROM files WHERE title = ? AND state != ?", (title_id, OK)
        ).fetchone()[0]
        if left == 0:
            tx.execute(
                "UPDATE titles SET state = ? WHERE id = ? AND state = ?",
                (READY, title_id, INCOMPLETE),
            )


def _drop_files(disks: Sequence[Disk], paths: list[Path], *, keep: Collection[Path] = ()) -> None:
    """Delete `paths`, never one in `keep` (what the index names after a move): a path
    both dropped and kept is the title's only copy."""
    kept = set(keep)
    paths = [p for p in paths if p not in kept]
    unlink_synced(paths)
    for path in paths:
        disk_titles = next((d.titles_dir for d in disks if d.titles_dir in path.parents), None)
        if disk_titles is not None:
            prune_empty_dirs(path.parent, disk_titles)


def _destination(f: FileRow, placement: Mapping[str, str]) -> Path:
    """Where a tier move puts a stored file: its placed disk, in the title's folder."""
    return file_path(placement[f.path], f.folder, f.path)

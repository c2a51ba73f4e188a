"""Adoption: what is found whole on the disks goes back into the index. A complete title the
index does not know (reconcile in repair.py calls `adopt` for every such title folder), and,
in the daemon's periodic reconcile, files it marks missing that are whole again (`Readopt`).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable

from appliance.config import Tier
from appliance.findings import Report
from appliance.folderscan import FolderScan
from appliance.index import INCOMPLETE, MISSING, OK, READY, FileRow, TitleRow, transaction
from appliance.safefiles import through_symlink, unlink_synced
from appliance.store import Store
from edgeflix import titlefiles
from edgeflix.log import event
from edgeflix.titlefiles import FILES_JSON, FileEntry, TitleFiles, TitleFilesError, sha256_file

log = logging.getLogger("appliance.repair")

# Of the files a pass takes back, at most this many bytes are re-hashed: many of them (a
# disk's worth after a long run of I/O errors) come back over a few passes, rather than in
# one that keeps the disks and the title locks busy for an hour.
READOPT_BYTES_PER_PASS = 1 << 30


def adopt(store: Store, title_id: str, folders: set[str]) -> Tier | None:
    """Record a complete title found on the disks but not in the index (the index was lost,
    damaged and moved aside, or restored from an old copy); returns the tier it was found
    on, or None. Files only ever reach their final names whole and verified (safefiles.py),
    so a title whose files.json lists files that are all present with their sizes on the
    disks of one tier is the title as it was loaded; `appliance verify` re-hashes it like any
    other. Anything less is left for the sweep. Of several versions (an update stopped
    half-way), the newest whole one is taken."""
    found = [f for f in (_stored_files_json(store, folder, title_id) for folder in folders) if f]
    for folder, model, digest, manifest_size, _mtime in sorted(found, key=lambda f: -f[4]):
        entries = [*model.files, FileEntry(path=FILES_JSON, size=manifest_size, sha256=digest)]
        for tier in sorted(store.tiers):
            where = _whole_on_tier(store, tier, folder, entries)
            if where is None:
                continue
            with transaction(store.conn) as conn:
                conn.execute(
                    "INSERT INTO titles (id, digest, state, tier, bytes, loaded_at, folder) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (title_id, digest, READY, tier, sum(e.size for e in entries), time.time(),
                     None if folder == title_id else folder),
                )  # fmt: skip
                conn.executemany(
                    "INSERT INTO files (title, path, disk, size, sha256, mtime_ns, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (title_id, e.path, where[e.path][0], e.size, e.sha256, where[e.path][1], OK)
                        for e in entries
                    ],
                )
            return tier
    return None


def _whole_on_tier(
    store: Store, tier: Tier, folder: str, entries: list[FileEntry]
) -> dict[str, tuple[str, int]] | None:
    """path → (disk, mtime_ns) when every entry is on a disk of `tier` with its size."""
    disks = store.disks_of(tier)
    where: dict[str, tuple[str, int]] = {}
    for entry in entries:
        for disk in disks:
            path = disk.titles_dir / folder / entry.path
            try:
                st = os.lstat(path)
            except OSError:
                continue
            regular = stat.S_ISREG(st.st_mode) and not through_symlink(path)
            if regular and st.st_size == entry.size:
                where[entry.path] = (disk.id, st.st_mtime_ns)
                break
        else:
            return None  # this entry is on no disk of the tier
    return where


def _stored_files_json(
    store: Store, folder: str, title_id: str
) -> tuple[str, TitleFiles, str, int, int] | None:
    """(folder, model, digest, size, ctime_ns) of the files.json in a folder of the title."""
    for disk in store.disks:
        top = disk.titles_dir / folder
        manifest = top / FILES_JSON
        try:
            st = os.lstat(manifest)
            if not stat.S_ISREG(st.st_mode) or through_symlink(manifest):
                continue
            model, digest = titlefiles.read(top)
        except (OSError, TitleFilesError):
            continue
        if model.id == title_id and FILES_JSON not in {e.path for e in model.files}:
            # ctime, not mtime: a copy keeps its source's mtime, but the rename into place
            # sets the ctime, so it says which version was loaded last.
            return folder, model, digest, st.st_size, st.st_ctime_ns
    return None


class Readopt:
    """One reconcile pass's taking back of files marked missing that are whole on a disk in
    service (an I/O error had them dropped, and failed their deletion too): a regular file
    with the index's size and mtime, then its SHA-256, as restore_disk checks a disk back in
    service; they serve again, and their title when none of its files is missing. One whose
    content differs is deleted, as its drop meant to. `out_of_service` is asked again before
    a title's files go back: a disk taken out meanwhile keeps its files missing."""

    def __init__(
        self,
        budget_bytes: int = READOPT_BYTES_PER_PASS,
        out_of_service: Callable[[], set[str]] = set,
    ) -> None:
        self.left = budget_bytes  # bytes this pass may still hash
        self.out_of_service = out_of_service
        self.files = 0  # taken back by this pass
        self.titles: list[str] = []  # ready again by this pass

    def take_back(
        self,
        store: Store,
        row: TitleRow,
        files: list[FileRow],
        scans: dict[str, FolderScan | None],
        report: Report,
    ) -> None:
        """Take back what of `files` (the title's, as its reconcile read them, its lock held)
        is missing and whole in `scans` (its folders as reconcile found them)."""
        whole: list[FileRow] = []
        damaged: list[FileRow] = []
        for f in files:
            if self.left <= 0:
                break  # the next pass goes on
            if f.state != MISSING or f.disk in store.out_of_service:
                continue
            scan = scans.get(f.disk)
            if scan is None or not scan.direct or scan.sizes.get(f.path) != f.size:
                continue  # absent (deleted, as a drop does), cut short, or behind a link
            self.left -= f.size
            verdict = _verdict(f)
            if verdict is True:
                whole.append(f)
            elif verdict is False:
                damaged.append(f)
        _delete(damaged, report)
        out = self.out_of_service()
        whole = [f for f in whole if f.disk not in out]
        if whole:
            ready = _serve_again(store, row.id, whole)
            self.files += len(whole)
            if ready:
                self.titles.append(row.id)
            event(log, "storage.readopted", title=row.id, files=len(whole), ready=ready,
                  disks=",".join(sorted({f.disk for f in whole})))  # fmt: skip


def _verdict(f: FileRow) -> bool | None:
    """True: the file is the index's; False: same size and mtime, other content; None: not
    known (changed since the index recorded it, or unreadable now: left as it is)."""
    try:
        st = os.lstat(f.location)
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
            return None
        return sha256_file(f.location) == f.sha256
    except OSError:
        return None


def _delete(damaged: list[FileRow], report: Report) -> None:
    """Delete files still missing whose content differs from the index's (reconcile logs
    the findings summarised per title, as drop's)."""
    for f in damaged:
        try:
            unlink_synced([f.location])
        except OSError as exc:  # the disk still failing: the next pass tries again
            report.add(f.title, f.path, f"cannot delete it ({exc.strerror})", disk=f.disk)
        else:
            report.add(f.title, f.path, "missing, and its content on the disk differs from "
                       "the index's: deleted", disk=f.disk)  # fmt: skip


def _serve_again(store: Store, title_id: str, whole: list[FileRow]) -> bool:
    """Mark the files ok again, and the title ready when none is missing; True if it is."""
    with transaction(store.conn) as conn:
        conn.executemany(
            "UPDATE files SET state = ? WHERE title = ? AND path = ? AND disk = ? "
            "AND sha256 = ? AND state = ?",
            [(OK, title_id, f.path, f.disk, f.sha256, MISSING) for f in whole],
        )
        left = conn.execute(
            "SELECT COUNT(*) FROM files WHERE title = ? AND state != ?", (title_id, OK)
        ).fetchone()[0]
        if left:
            return False
        changed = conn.execute(
            "UPDATE titles SET state = ? WHERE id = ? AND state = ?", (READY, title_id, INCOMPLETE)
        ).rowcount
    return changed == 1

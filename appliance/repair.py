"""Bring the index and the disks back into agreement: `reconcile` (a stat per stored file: the
daemon's start-up check, in the background once it serves, and every few minutes after),
`settle` (what must be right before the daemon serves, from the index alone) and `verify`
(re-hash everything, on demand).

Reconcile removes what a crash left behind (temporary files, half-loaded or half-removed titles,
copies a tier move did not finish, stray files) and drops files whose size no longer matches the
index; verify does the same for content. A title with a dropped file is marked incomplete and is
no longer served. Both work title by title under store.py's per-title locks. A title found
on the disks but not in the index is adopted back (adopt.py), and so, by the daemon's periodic
reconcile, are files marked missing that are whole on their disk again; each title folder is
read once (folderscan.py); edits of [storage] disks are followed (diskconfig.py). What they
find is a Report of Findings, logged summarised (findings.py).

A stat or read that fails (EIO) is looked at once more after RETRY_AFTER_S before its file is
dropped, and nothing is deleted on the word of a scan that could not read a folder.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path

from appliance import diskconfig, replaced
from appliance.adopt import Readopt, adopt
from appliance.disks import StorageError
from appliance.findings import Finding as Finding  # re-exported: the CLI reports them
from appliance.findings import Report, log_findings
from appliance.folders import folder_title, recently_retired
from appliance.folderscan import FolderScan, scan_folder
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
    get_title,
    title_files,
    transaction,
)
from appliance.safefiles import (
    fsync_dir,
    is_temp_name,
    prune_empty_dirs,
    remove_entry,
    through_symlink,
    unlink_synced,
    walk_files,
)
from appliance.store import Store
from edgeflix.titlefiles import sha256_file

log = logging.getLogger("appliance.repair")

# A file whose stat or read fails is checked once more this long after before it is dropped: a
# disk or its path that hiccups (a bus reset, a multipath fail-over, a brief EIO) is back by
# then, and a file dropped for it would serve no more until a fill. One failing longer is
# dropped; if its deletion failed with it, the daemon's periodic reconcile takes it back once
# it reads whole again (adopt.Readopt).
RETRY_AFTER_S = 2.0
UNREADABLE = "unreadable"  # how check_size and check_content's problems for an OSError begin


def unreadable(problem: str | None) -> bool:
    """The problem is an I/O error (worth a second look), not what the file is."""
    return problem is not None and problem.startswith(UNREADABLE)


def check_twice(check: Callable[[], str | None], wait: Callable[[float], object]) -> str | None:
    """`check()`'s problem, asked once more after RETRY_AFTER_S when it was an I/O error."""
    problem = check()
    if unreadable(problem):
        wait(RETRY_AFTER_S)
        problem = check()
    return problem


def _folders_on_disks(store: Store, only: Collection[str] | None) -> dict[str, set[str]]:
    """Title id → the names of its folders on the disks (its id, and `id~tag` versions), of
    the titles in `only` (None: of all)."""
    folders: dict[str, set[str]] = {}
    for disk in store.disks:
        if not disk.titles_dir.is_dir():
            continue  # a read-only disk that never held a title
        for entry in os.scandir(disk.titles_dir):
            # A link named like a title is someone's placement, never ours: swept like a stray.
            title_id = folder_title(entry.name)
            if not title_id or (only is not None and title_id not in only):
                continue
            if entry.is_dir(follow_symlinks=False) or entry.is_symlink():
                folders.setdefault(title_id, set()).add(entry.name)
    return folders


def reconcile(
    store: Store,
    only: Collection[str] | None = None,
    *,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    wait: Callable[[float], object] = time.sleep,
    readopt: Readopt | None = None,
) -> Report:
    """Check every title the index or the disks know, or only the titles in `only` (a
    command about one title need not pay for a scan of them all); skip titles another
    process holds. `stop` is asked between titles (a daemon stopping ends the check there,
    what it found so far logged); `progress` hears (titles done, titles in all) before each.
    A title with a file that could not be read is left as it is and checked once more after
    one `wait(RETRY_AFTER_S)` for them all, at the end. `readopt` (the daemon's): files
    marked missing found whole again serve again, within its budget."""
    report = Report()
    folders = _folders_on_disks(store, only)
    if only is None:
        store.drop_replaced()  # kept long enough for the sessions of the versions they were in
        ids = {t.id for t in all_titles(store.conn)} | set(folders)
    else:  # a title neither indexed nor on a disk has nothing to check (nor a valid id, maybe)
        ids = {t for t in only if t in folders or get_title(store.conn, t) is not None}
    again: list[str] = []  # titles with a file unreadable: checked again after the wait
    for done, title_id in enumerate(sorted(ids)):
        if stop is not None and stop():
            report.stopped = True
            break
        if progress is not None:
            progress(done, len(ids))
        with store.locks.hold(title_id, wait=False) as held:
            if not held:
                report.busy.append(title_id)
            elif not _reconcile_title(store, title_id, folders, report, readopt, may_defer=True):
                again.append(title_id)
    if again and not report.stopped:
        wait(RETRY_AFTER_S)  # once per pass, not per title: a failing disk must not stall it
        for title_id in again:
            if stop is not None and stop():
                report.stopped = True
                break
            with store.locks.hold(title_id, wait=False) as held:
                if not held:
                    report.busy.append(title_id)
                else:
                    _reconcile_title(store, title_id, folders, report, readopt, may_defer=False)
    diskconfig.add_findings(report)
    log_findings(report.findings)
    return report


def settle(store: Store) -> Report:
    """The part of reconcile a daemon does before it serves: the titles the index and one
    listing of each disk's titles folder say are unsettled (Store.unsettled; no title's own
    folder read, no stored file looked at). Interrupted loads and removals are finished;
    files placed on a disk no longer in [storage] disks are followed to their new path or set
    aside, as they would go on serving from a disk nothing checks; title folders the index
    lacks are adopted when whole (a lost index: all of them, so the box serves what it holds
    from its first request). The rest (sizes, strays, other versions, tier labels) is
    reconcile's, which may come later: meanwhile a stored file missing or cut short is
    answered 404, never sent, since the server compares the size of each file it opens with
    the index's (edgeflix/http/server.py)."""
    report = Report()
    ids = store.unsettled()
    folders = _folders_on_disks(store, ids) if ids else {}  # a settled box: nothing to list
    for title_id in sorted(ids):
        with store.locks.hold(title_id, wait=False) as held:
            if not held:
                report.busy.append(title_id)
                continue
            row = get_title(store.conn, title_id)
            if row is None:
                # Adoption checks each file's size as it finds it, so the title serves at
                # once; a folder that is not a whole title is the walk's to sweep.
                _adopt(store, title_id, folders.get(title_id, set()), report)
            elif row.state in (LOADING, REMOVING):
                _finish_interrupted(store, row, report)
            else:
                diskconfig.set_aside(store, row, diskconfig.rehome(store, row, report), report)
    diskconfig.add_findings(report)
    log_findings(report.findings)
    return report


def _adopt(store: Store, title_id: str, folders: set[str], report: Report) -> bool:
    tier = adopt(store, title_id, folders)
    if tier is not None:
        report.add(title_id, "", f"adopted from its files on the {tier} tier (not in the index)")
    return tier is not None


def _finish_interrupted(store: Store, row: TitleRow, report: Report) -> None:
    """Finish a load or removal a crash stopped: its title is not served, its files go."""
    what = "an interrupted load" if row.state == LOADING else "an interrupted removal"
    try:
        pending = store.purge(row.id)
    except StorageError as exc:
        # A read-only disk holds some of it: the title stays out of service and the next
        # reconcile finishes it; the other titles and disks must still be checked.
        report.add(row.id, "", f"cannot finish {what}: {exc}")
        return
    if not pending:
        report.add(row.id, "", f"removed {what}")
    # else: its last files are on a disk out of service (`appliance rm` said so, and
    # `ls` shows it removing): the reconcile after that disk's return finishes it.


def _reconcile_title(
    store: Store,
    title_id: str,
    on_disks: dict[str, set[str]],
    report: Report,
    readopt: Readopt | None,
    *,
    may_defer: bool,
) -> bool:
    """Check one title (its lock held); False when, `may_defer`, a file of it could not be
    read: then nothing of it was dropped or deleted, and it is to be checked again later."""
    folders = on_disks.get(title_id, set())
    row = get_title(store.conn, title_id)
    if row is None and _adopt(store, title_id, folders, report):
        row = get_title(store.conn, title_id)
    if row is None:
        store.drop_replaced(title_id=title_id, everything=True)  # a title gone: nothing kept
        removed = sum(_wipe(store, folder, title_id, report) for folder in sorted(folders))
        if removed:
            report.add(title_id, "", f"removed {removed} stray files of a title not in the index")
        return True
    _drop_other_versions(store, row, folders, report)
    if row.state in (LOADING, REMOVING):
        _finish_interrupted(store, row, report)
        return True
    files = diskconfig.set_aside(store, row, diskconfig.rehome(store, row, report), report)
    # One scan of the title's folder per disk serves the size checks, readopt and the sweep.
    scans = _scan(store, row)
    # A disk out of service: the daemon's take-out and re-scan own its files.
    checked = [f for f in files if f.state == OK and f.disk not in store.out_of_service]
    found = ((f, scanned_size_problem(f, scans.get(f.disk))) for f in checked)
    dropped = [(f, problem) for f, problem in found if problem]
    if may_defer and any(unreadable(problem) for _, problem in dropped):
        return False
    report.checked_files += len(checked)
    drop(store, title_id, dropped, report, announce=False)
    if readopt is not None:  # files missing before this check; those just dropped stay so
        readopt.take_back(store, row, files, scans, report)
    if dropped:  # their deletion changed the folders: the sweep sees them as they are now
        scans = _scan(store, row)
    _sweep(store, row, files, scans, report)
    diskconfig.align_tier(store, row, report)
    return True


def _scan(store: Store, row: TitleRow) -> dict[str, FolderScan | None]:
    return {disk.id: scan_folder(disk.titles_dir / row.folder) for disk in store.disks}


def scanned_size_problem(f: FileRow, scan: FolderScan | None) -> str | None:
    """check_size's answer, from the folder's scan when it holds the file as a regular file
    (the common case, at no system call); anything else gets the full check, which says
    what is wrong (missing, a link, reached through a link, unreadable) or finds it fine."""
    if scan is not None and scan.direct:
        size = scan.sizes.get(f.path)
        if size == f.size:
            return None
        if size is not None:
            return f"size {size} != {f.size} in the index"
    return check_size(f)


def _drop_other_versions(store: Store, row: TitleRow, folders: set[str], report: Report) -> None:
    """Folders of the title other than the one the index names: a version an update was
    writing when it stopped, or the one it replaced (folders.py, FOLDER_TAG_SEP)."""
    now = time.time()
    for folder in sorted(folders - {row.folder}):
        if any(recently_retired(d.titles_dir / folder, now) for d in store.disks):
            continue  # retired by an update moments ago: its own process deletes it
        keep = replaced.kept_in(store.conn, row.id, folder)
        if keep:  # a replaced version's files kept for its sessions: only the rest goes
            replaced.prune(store.disks, folder, keep)
            continue
        removed = _wipe(store, folder, row.id, report)
        if removed:
            report.add(row.id, "", f"removed {removed} files of an unfinished or replaced "
                       f"version ({folder})")  # fmt: skip


def drop(
    store: Store,
    title_id: str,
    dropped: list[tuple[FileRow, str]],
    report: Report,
    *,
    announce: bool = True,
) -> None:
    """Mark files missing, delete what is left of them, and take the title out of service.
    `announce`: log what was dropped (summarised) now; reconcile logs all it found at its end."""
    if not dropped:
        return
    with transaction(store.conn) as conn:
        conn.executemany(
            "UPDATE files SET state = ? WHERE title = ? AND path = ?",
            [(MISSING, title_id, f.path) for f, _ in dropped],
        )
        conn.execute(
            "UPDATE titles SET state = ? WHERE id = ? AND state = ?", (INCOMPLETE, title_id, READY)
        )
        serving = conn.execute(
            "SELECT disk FROM files WHERE title = ? AND state = ?", (title_id, OK)
        ).fetchall()
    if any(disk not in store.out_of_service for (disk,) in serving):
        outcome = "title incomplete (its other files still serve)"
    else:
        outcome = "title incomplete, none of its files serve"
    added = len(report.findings)
    for f, why in dropped:
        report.add(
            title_id, f.path, f"{why}; dropped: {outcome} until a fill or reload", True, f.disk
        )
        try:
            unlink_synced([f.location])
        except OSError as exc:
            # The row already says missing, so nothing serves it; the next start tries again.
            report.add(title_id, f.path, f"cannot delete it ({exc.strerror})", disk=f.disk)
    if announce:
        log_findings(report.findings[added:])


def _sweep(
    store: Store,
    row: TitleRow,
    files: list[FileRow],
    scans: dict[str, FolderScan | None],
    report: Report,
) -> None:
    """Delete files under the title's folders (as `scans` found them) that the index does not
    place there. A file the index marks missing is kept: its disk was out of service and is
    back, or an I/O error had it dropped, and the daemon re-verifies it (fill/storage.py
    restore_disk, adopt.Readopt) rather than filling it again."""
    title_id = row.id
    wanted = {(f.disk, f.path) for f in files}
    for disk in store.disks:
        top = disk.titles_dir / row.folder
        scan = scans.get(disk.id)
        if scan is None:  # absent, or a link or file in the folder's place
            if _sweepable(top) and _remove(top, title_id, report):
                report.add(title_id, "", f"removed a non-folder in the title's place on {disk.id}")
            continue
        strays = [
            top / rel
            for rel in scan.entries
            if (disk.id, rel) not in wanted and _sweepable(top / rel)
        ]
        if not strays or not disk.writable:
            continue  # a read-only disk: its strays are swept once it is writable again
        try:
            unlink_synced(strays)
        except OSError as exc:
            # Gone read-only (or failing) since the store was opened: the rest still counts.
            report.add(
                title_id, "", f"cannot delete stray files on {disk.id} ({exc.strerror})",
                disk=disk.id,
            )  # fmt: skip
            continue
        for path in strays:
            rel = path.relative_to(top).as_posix()
            what = "partial file" if is_temp_name(path.name) else "file not in the index"
            report.add(title_id, rel, f"removed {what} on {disk.id}", disk=disk.id)
            prune_empty_dirs(path.parent, disk.titles_dir)


def _sweepable(path: Path) -> bool:
    """Something not a folder is at `path` now. The scan lists only non-folders (and None for
    a title folder that is not one), so a folder here is one it met an I/O error on: deleting
    it would take a whole rendition or title with it once the error passes. What cannot be
    looked at now cannot be deleted either: the next pass sees it."""
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _remove(path: Path, title_id: str, report: Report) -> bool:
    try:
        removed = remove_entry(path)
    except OSError as exc:
        report.add(title_id, "", f"cannot delete {path} ({exc.strerror})")
        return False
    if removed:
        fsync_dir(path.parent)
    return removed


def _wipe(store: Store, folder: str, title_id: str, report: Report) -> int:
    """Delete a folder of the title on every disk; returns the files removed."""
    removed = 0
    for disk in store.disks:
        top = disk.titles_dir / folder
        count = sum(1 for _ in walk_files(top)) or 1  # a placed link counts as one
        if _remove(top, title_id, report):
            removed += count
    return removed


def verify(
    store: Store,
    on_bytes: Callable[[int], None] | None = None,
    wait: Callable[[float], object] = time.sleep,
) -> Report:
    """Re-hash every file the index serves; mismatches are dropped like reconcile's, and an
    unreadable file after a second look (check_twice)."""
    report = Report()
    for title in all_titles(store.conn):
        with store.locks.hold(title.id) as _held:
            dropped = []
            for f in title_files(store.conn, title.id):
                if f.disk in store.out_of_service:
                    # Missing (the daemon took the disk out) or not: unknown until it is back.
                    report.unchecked[f.disk] = report.unchecked.get(f.disk, 0) + 1
                    continue
                if f.state != OK:
                    continue
                report.checked_files += 1
                problem = check_twice(partial(check_content, f), wait)
                report.checked_bytes += f.size
                if on_bytes:
                    on_bytes(f.size)
                if problem:
                    dropped.append((f, problem))
            drop(store, title.id, dropped, report)
    return report


def check_size(f: FileRow) -> str | None:
    """What is wrong with a stored file short of its content, or None. Only a regular file
    reached without symbolic links counts: the server would follow a link anywhere."""
    try:
        st = os.lstat(f.location)
    except FileNotFoundError:
        return "missing from its disk"
    except OSError as exc:
        return f"{UNREADABLE} ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link in the file's place"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if through_symlink(f.location):
        return "reached through a symbolic link"
    if st.st_size != f.size:
        return f"size {st.st_size} != {f.size} in the index"
    return None


def check_content(f: FileRow, on_chunk: Callable[[int], None] | None = None) -> str | None:
    """What is wrong with a stored file, its content included, or None. `on_chunk` sees the
    bytes of each chunk read (a throttle)."""
    problem = check_size(f)
    if problem:
        return problem
    try:
        if sha256_file(f.location, on_chunk) != f.sha256:
            return "SHA-256 does not match the index"
    except FileNotFoundError:
        return "missing from its disk"
    except OSError as exc:
        return f"{UNREADABLE} ({exc.strerror})"
    return None

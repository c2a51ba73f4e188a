"""Bring the index and the disks back into agreement: `reconcile` (cheap, on every start) and
`verify` (re-hash everything, on demand).

Reconcile removes what a crash left behind (temporary files, half-loaded or half-removed titles,
copies a tier move did not finish, stray files) and drops files whose size no longer matches the
index; verify does the same for content. A title with a dropped file is marked incomplete and is
no longer served. Both work title by title under store.py's per-title locks.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.index import (
    INCOMPLETE,
    LOADING,
    MISSING,
    OK,
    READY,
    REMOVING,
    FileRow,
    all_titles,
    get_title,
    title_files,
    transaction,
)
from appliance.safefiles import fsync_dir, is_temp_name, prune_empty_dirs, unlink_synced
from appliance.store import Store
from edgeflix.log import event
from edgeflix.titlefiles import TITLE_ID_RE, sha256_file

log = logging.getLogger("appliance.repair")


@dataclass(frozen=True)
class Finding:
    title: str
    path: str  # file path inside the title, or "" for the whole title
    problem: str

    def __str__(self) -> str:
        where = f"{self.title}/{self.path}" if self.path else self.title
        return f"{where}: {self.problem}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # titles another process was working on
    checked_files: int = 0
    checked_bytes: int = 0

    def add(self, title: str, path: str, problem: str) -> None:
        finding = Finding(title, path, problem)
        self.findings.append(finding)
        event(log, "storage.finding", logging.WARNING, title=title, path=path, problem=problem)


def _title_ids_on_disks(store: Store) -> set[str]:
    ids = set()
    for disk in store.disks:
        for entry in os.scandir(disk.titles_dir):
            if entry.is_dir(follow_symlinks=False) and TITLE_ID_RE.match(entry.name):
                ids.add(entry.name)
    return ids


def reconcile(store: Store) -> Report:
    """Check every title the index or the disks know; skip titles another process holds."""
    report = Report()
    ids = {t.id for t in all_titles(store.conn)} | _title_ids_on_disks(store)
    for title_id in sorted(ids):
        with store.locks.hold(title_id, wait=False) as held:
            if not held:
                report.busy.append(title_id)
                continue
            _reconcile_title(store, title_id, report)
    return report


def _reconcile_title(store: Store, title_id: str, report: Report) -> None:
    row = get_title(store.conn, title_id)
    if row is None:
        removed = _wipe(store, title_id)
        if removed:
            report.add(title_id, "", f"removed {removed} stray files of a title not in the index")
        return
    if row.state in (LOADING, REMOVING):
        store.purge(title_id)
        what = "an interrupted load" if row.state == LOADING else "an interrupted removal"
        report.add(title_id, "", f"removed {what}")
        return
    dropped = []
    for f in title_files(store.conn, title_id):
        if f.state != OK:
            continue
        report.checked_files += 1
        try:
            size = f.location.stat().st_size
        except FileNotFoundError:
            dropped.append((f, "missing from its disk"))
            continue
        if size != f.size:
            dropped.append((f, f"size {size} != {f.size} in the index"))
    _drop(store, title_id, dropped, report)
    _sweep(store, title_id, report)


def _drop(store: Store, title_id: str, dropped: list[tuple[FileRow, str]], report: Report) -> None:
    """Mark files missing, delete what is left of them, and take the title out of service."""
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
    unlink_synced([f.location for f, _ in dropped])
    for f, why in dropped:
        report.add(title_id, f.path, f"{why}; dropped, title not served until reloaded")


def _sweep(store: Store, title_id: str, report: Report) -> None:
    """Delete files under the title's folders that the index does not place there."""
    wanted = {(f.disk, f.path) for f in title_files(store.conn, title_id) if f.state == OK}
    for disk in store.disks:
        top = disk.titles_dir / title_id
        strays = [
            p for p in _walk_files(top) if (disk.id, p.relative_to(top).as_posix()) not in wanted
        ]
        unlink_synced(strays)
        for path in strays:
            rel = path.relative_to(top).as_posix()
            what = "partial file" if is_temp_name(path.name) else "file not in the index"
            report.add(title_id, rel, f"removed {what} on {disk.id}")
            prune_empty_dirs(path.parent, disk.titles_dir)


def _walk_files(top: Path) -> Iterator[Path]:
    if not top.is_dir():
        return
    for folder, _dirs, names in os.walk(top):
        for name in names:
            yield Path(folder) / name


def _wipe(store: Store, title_id: str) -> int:
    removed = 0
    for disk in store.disks:
        top = disk.titles_dir / title_id
        if top.is_dir():
            removed += sum(1 for _ in _walk_files(top))
            shutil.rmtree(top)
            fsync_dir(disk.titles_dir)
    return removed


def verify(store: Store, on_bytes: Callable[[int], None] | None = None) -> Report:
    """Re-hash every file the index serves; mismatches are dropped like reconcile's."""
    report = Report()
    for title in all_titles(store.conn):
        with store.locks.hold(title.id) as _held:
            dropped = []
            for f in title_files(store.conn, title.id):
                if f.state != OK:
                    continue
                report.checked_files += 1
                problem = _check_content(f)
                report.checked_bytes += f.size
                if on_bytes:
                    on_bytes(f.size)
                if problem:
                    dropped.append((f, problem))
            _drop(store, title.id, dropped, report)
    return report


def _check_content(f: FileRow) -> str | None:
    try:
        size = f.location.stat().st_size
        if size != f.size:
            return f"size {size} != {f.size} in the index"
        if sha256_file(f.location) != f.sha256:
            return "SHA-256 does not match the index"
    except FileNotFoundError:
        return "missing from its disk"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    return None

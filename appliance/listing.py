"""What the store holds, as `appliance ls` and reconcile ask (part of the store's I/O shell):
a line per title counted by SQLite per title and disk, and the titles whose leftovers a
reconcile must settle before a load can trust the room it finds. A box that never loaded a
title has no index yet: it holds nothing, which `ls` and `status` say without making one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from appliance import replaced
from appliance.disks import Disk, StorageError
from appliance.folders import folder_title
from appliance.index import LOADING, MISSING, OK, REMOVING, TitleRow, all_titles


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


def never_loaded(index: Path) -> bool:
    """Whether there is no index at `index` yet: a fresh box, before its first `load`, `fill`
    or `run` makes one, holds no titles (a mistyped [storage] index looks the same, so the
    commands name the path). A path that cannot be looked up is a StorageError, not a box
    that holds nothing."""
    try:
        os.stat(index)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError as exc:
        raise StorageError(f"cannot read the index {index}: {exc.strerror or exc}") from None
    return False


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


def list_titles(
    conn: sqlite3.Connection, disks: Sequence[Disk], out_of_service: Collection[str]
) -> list[TitleListing]:
    """Every title's line (Store.listing)."""
    # Counted by SQLite per title and disk, a few rows a title: read into Python file by
    # file, ~200 bytes each, a listing of a few thousand lines took a GB at 3M files.
    per_title: dict[str, list[_DiskCount]] = {}
    for title, disk, files, missing, ok in conn.execute(
        "SELECT title, disk, COUNT(*), SUM(state = ?), SUM(state = ?) FROM files "
        "GROUP BY title, disk",
        (MISSING, OK),
    ):
        per_title.setdefault(title, []).append(_DiskCount(disk, files, missing, ok))
    out = set(out_of_service)
    configured = out | {d.id for d in disks}
    kept = replaced.summaries(conn)
    return [
        _listed(row, per_title.get(row.id, []), configured, out, kept.get(row.id))
        for row in all_titles(conn)
    ]


def unsettled_titles(
    conn: sqlite3.Connection, disks: Sequence[Disk], out_of_service: Collection[str]
) -> set[str]:
    """Titles whose leftovers change the room a load finds (Store.unsettled), told by the
    index and one listing of each disk's titles folder (no title's own folder is read):
    loading or removing (an interrupted load or `rm`), with served files or kept files the
    index places on a disk no longer configured (followed or set aside: counted on the wrong
    disk until then), or with a folder on a disk but no title in the index (adopted, or
    swept). A command reconciling only its own title (`load`) reconciles these too; a
    settled appliance has none, so it costs no more than the title itself."""
    busy = conn.execute("SELECT id FROM titles WHERE state IN (?, ?)", (LOADING, REMOVING))
    ids = {title_id for (title_id,) in busy}
    known = {d.id for d in disks} | set(out_of_service)
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
    for disk in disks:
        folders: set[str | None] = set()  # none: a read-only disk that never held one
        with contextlib.suppress(OSError), os.scandir(disk.titles_dir) as entries:
            folders = {folder_title(entry.name) for entry in entries}
        ids |= {t for t in folders if t is not None and t not in indexed}
    return ids

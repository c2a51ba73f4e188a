"""Files of a replaced version, kept for the sessions that started on it.

A player that loaded a title's playlists before an update (`load --replace`, a fill) swapped
in a new version goes on asking for the names those playlists hold, for as long as it
plays. The old version's content-named files (init_<tag>.mp4, seg_<tag>_N.m4s,
index_<tag>.m3u8: edgeflix/http/content.py) that the new version lacks stay servable from the
old version's folder for [storage] replaced_keep_s (index table `superseded`;
index.IndexReader looks there when the current version has no such file). master.m3u8,
manifest.mpd, files.json and other names always answer from the new version, and a name the
new version has is never served from an old one.
Kept files count as used space, go first when a load needs room, and go for good once their
time is up (store.py calls in here; so does reconcile, every few minutes in the daemon).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from appliance.config import StorageConfig
from appliance.disks import Disk
from appliance.index import OK, FileRow, query_read_only
from appliance.safefiles import fsync_dir, prune_empty_dirs, walk_files
from edgeflix import wallclock
from edgeflix.http.content import is_content_named
from edgeflix.metrics import Sample


def kept_files(old: Sequence[FileRow], new_paths: Collection[str]) -> list[FileRow]:
    """The files of the version being replaced that its sessions may still ask for: named by
    their content, whole, and not in the new version (which serves those names itself)."""
    return [
        f for f in old if f.state == OK and f.path not in new_paths and is_content_named(f.path)
    ]


def record(
    conn: sqlite3.Connection,
    title_id: str,
    kept: Sequence[FileRow],
    new_paths: Collection[str],
    until: float,
) -> set[str]:
    """Inside the replacing transaction: names the new version has are served from it from
    now on, so older versions' rows for them go; `kept` are served from the old folder.
    Returns the older folders that lost rows (the caller deletes any no row names now)."""
    named = set(new_paths)
    rows = conn.execute(
        "SELECT path, folder FROM superseded WHERE title = ?", (title_id,)
    ).fetchall()
    touched = {folder for path, folder in rows if path in named}
    conn.executemany(
        "DELETE FROM superseded WHERE title = ? AND path = ?",
        [(title_id, path) for path, _ in rows if path in named],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO superseded (title, path, disk, folder, size, sha256, mtime_ns, "
        "until) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(title_id, f.path, f.disk, f.folder, f.size, f.sha256, f.mtime_ns, until) for f in kept],
    )
    return touched


def kept_in(conn: sqlite3.Connection, title_id: str, folder: str) -> set[tuple[str, str]]:
    """(disk, path) of the files kept in one old folder of a title."""
    rows = conn.execute(
        "SELECT disk, path FROM superseded WHERE title = ? AND folder = ?", (title_id, folder)
    ).fetchall()
    return {(disk, path) for disk, path in rows}


def kept_of(conn: sqlite3.Connection, title_id: str) -> list[FileRow]:
    """A title's kept files, as rows (folder: the old version's)."""
    rows = conn.execute(
        "SELECT title, path, disk, size, sha256, mtime_ns, ?, folder FROM superseded "
        "WHERE title = ? ORDER BY path",
        (OK, title_id),
    ).fetchall()
    return [FileRow(*row) for row in rows]


@dataclass(frozen=True)
class KeptSummary:
    """What a title's replaced versions still hold, for `appliance ls`."""

    files: int
    bytes: int
    until: float  # when the last of them goes


def summaries(conn: sqlite3.Connection) -> dict[str, KeptSummary]:
    rows = conn.execute(
        "SELECT title, COUNT(*), SUM(size), MAX(until) FROM superseded GROUP BY title"
    ).fetchall()
    return {title: KeptSummary(n, int(size or 0), until) for title, n, size, until in rows}


def bytes_on_disks(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT disk, SUM(size) FROM superseded GROUP BY disk").fetchall()
    return {disk: int(total or 0) for disk, total in rows}


def due(until: float, now: float, keep_s: float) -> float:
    """When kept files recorded to go at `until` (wall clock, at the replace) go, seen at
    `now`: never later than `keep_s` from now, as one recorded while the clock was years
    ahead would keep its files for years; and `keep_s` from now when recorded off a clock
    not yet set (1970, before NTP), now set, as they would go at the first reconcile after
    the step, under players still on that version."""
    cap = now + keep_s
    if not wallclock.comparable(until, now):
        return cap
    return min(until, cap)


def settle(conn: sqlite3.Connection, now: float, keep_s: float) -> int:
    """Record `due`'s times for the rows whose `until` it changes, in the caller's
    transaction; returns how many changed."""
    rows = conn.execute(
        "SELECT title, path, until FROM superseded WHERE until > ? OR until < ?",
        (now + keep_s, wallclock.FLOOR),
    ).fetchall()
    changed: list[tuple[float, str, str]] = []
    for title, path, until in rows:
        at = due(until, now, keep_s)
        if at != until:
            changed.append((at, title, path))
    conn.executemany("UPDATE superseded SET until = ? WHERE title = ? AND path = ?", changed)
    return len(changed)


def take(
    conn: sqlite3.Connection,
    now: float,
    keep_s: float,
    *,
    title_id: str | None = None,
    folder: str | None = None,
    everything: bool = False,
) -> list[tuple[str, str]]:
    """Delete the rows whose time is up (`due`, with `keep_s` the [storage] replaced_keep_s
    now; all of them with `everything`; only `title_id`'s, or its `folder`'s, when given) in
    the caller's transaction; returns the (title, folder) pairs they named, whose files the
    caller deletes once no row names the folder."""
    if not everything:
        settle(conn, now, keep_s)
    where, args = "1 = 1", list[object]()
    if title_id is not None:
        where, args = "title = ?", [title_id]
        if folder is not None:
            where, args = "title = ? AND folder = ?", [title_id, folder]
    if not everything:
        where += " AND until <= ?"
        args.append(now)
    folders = conn.execute(
        f"SELECT DISTINCT title, folder FROM superseded WHERE {where}", args
    ).fetchall()
    conn.execute(f"DELETE FROM superseded WHERE {where}", args)
    return [(title, folder) for title, folder in folders]


def oldest_first(conn: sqlite3.Connection) -> list[tuple[str, str, frozenset[str]]]:
    """(title, folder, disks it has kept files on) of every old version with kept files,
    the soonest due first."""
    rows = conn.execute(
        "SELECT title, folder, GROUP_CONCAT(DISTINCT disk) FROM superseded "
        "GROUP BY title, folder ORDER BY MIN(until), title, folder"
    ).fetchall()
    return [(title, folder, frozenset(disks.split(","))) for title, folder, disks in rows]


def still_named(conn: sqlite3.Connection, title_id: str, folder: str) -> bool:
    """Some row still names the folder: the title's current one, or kept files in it."""
    current = conn.execute(
        "SELECT 1 FROM titles WHERE id = ? AND COALESCE(folder, id) = ?", (title_id, folder)
    ).fetchone()
    return current is not None or bool(kept_in(conn, title_id, folder))


def prune(disks: Sequence[Disk], folder: str, keep: Collection[tuple[str, str]]) -> int:
    """Delete the files of an old version's folder that are not kept (its playlists, the
    files the new version shares): only the kept ones hold space for their sessions.
    Returns the files deleted."""
    removed = 0
    for disk in disks:
        top = disk.titles_dir / folder
        if not disk.writable:
            continue  # read-only: pruned by a later reconcile
        for path in list(walk_files(top)):
            if (disk.id, path.relative_to(top).as_posix()) in keep:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            prune_empty_dirs(path.parent, disk.titles_dir)
        if removed:
            fsync_dir(disk.titles_dir)
    return removed


def metric_families(storage: StorageConfig) -> list[tuple[str, str, str, list[Sample]]]:
    """For the admin /metrics: what replaced versions still take, per disk (read-only)."""
    rows = query_read_only(
        storage.index, "SELECT disk, COUNT(*), SUM(size) FROM superseded GROUP BY disk"
    )
    return [
        ("edgeflix_appliance_replaced_kept_files", "gauge",
         "Files of replaced versions kept for the sessions that started on them, per disk.",
         [Sample({"disk": disk}, count) for disk, count, _ in rows]),
        ("edgeflix_appliance_replaced_kept_bytes", "gauge",
         "Bytes those files take, per disk (they go first when a load needs room).",
         [Sample({"disk": disk}, int(size or 0)) for disk, _, size in rows]),
    ]  # fmt: skip

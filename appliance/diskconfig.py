"""Titles follow edits of [storage] disks between two starts (reconcile in repair.py calls
this for each title): a disk whose path changed is followed to its new path, the files of
a disk taken out of the config stop serving (until it is back), and a title takes the tier
its disks are configured with now, so the mover never "moves" it onto the disk it is on.
"""

from __future__ import annotations

import os
import stat

from appliance import replaced
from appliance.findings import Report, named, titles
from appliance.index import (
    INCOMPLETE,
    MISSING,
    OK,
    READY,
    FileRow,
    TitleRow,
    file_path,
    title_files,
    transaction,
)
from appliance.safefiles import through_symlink
from appliance.store import Store


def add_findings(report: Report) -> None:
    """What happened to many titles at once is said once: per disk taken out of the config,
    per tier relabelling."""
    for disk, per_title in sorted(report.off_config.items()):
        report.add(
            "",
            "",
            f"disk {disk} is not in [storage] disks: its {sum(per_title.values())} files of "
            f"{titles(len(per_title))} ({named(sorted(per_title))}) are no longer served, the "
            "titles incomplete; put the disk back in the config to serve them again (the "
            "daemon re-verifies them at start), or fill the titles again",
            True,
            disk,
        )
    for (old, new), ids in sorted(report.relabelled.items()):
        report.add(
            "",
            "",
            f"{titles(len(ids))} ({named(ids)}) relabelled from the {old} tier to {new}: the "
            f"disks holding their files are configured {new} now (nothing moved)",
        )


def rehome(store: Store, row: TitleRow, report: Report) -> list[FileRow]:
    """Files the index places on a disk path no longer configured (its mount point was
    renamed or moved in the config): found at the same place on a configured disk with
    their size, the index follows them there (the sweep would otherwise delete them as
    strays on their new path); otherwise set_aside takes them out of service. Returns the
    title's files as the index has them now."""
    title_id = row.id
    known = known_disks(store)
    files = title_files(store.conn, title_id)
    moved = _found_elsewhere(store, known, files)
    kept_rows = replaced.kept_of(store.conn, title_id)
    kept = _found_elsewhere(store, known, kept_rows)
    # Files kept for replaced versions' sessions follow their disk too, silently; those on
    # a disk gone from the config are no longer served (their rows go: nothing re-verifies
    # them, and their folder is swept as an old version's if the disk comes back).
    found = {f.path for _, f in kept}
    stranded = [f for f in kept_rows if f.disk not in known and f.path not in found]
    if kept or stranded:
        with transaction(store.conn) as conn:
            conn.executemany(
                "UPDATE superseded SET disk = ? WHERE title = ? AND path = ?",
                [(disk, title_id, f.path) for disk, f in kept],
            )
            conn.executemany(
                "DELETE FROM superseded WHERE title = ? AND path = ?",
                [(title_id, f.path) for f in stranded],
            )
    if not moved:
        return files
    with transaction(store.conn) as conn:
        conn.executemany(
            "UPDATE files SET disk = ? WHERE title = ? AND path = ?",
            [(disk, title_id, f.path) for disk, f in moved],
        )
    for old in sorted({f.disk for _, f in moved}):
        count = sum(1 for _, f in moved if f.disk == old)
        new = sorted({disk for disk, f in moved if f.disk == old})
        report.add(title_id, "", f"{count} files of {old} found on {', '.join(new)}")
    return title_files(store.conn, title_id)


def known_disks(store: Store) -> set[str]:
    """The disks of the config: in service, or out of it (the daemon's take-out and re-scan
    own the files of those)."""
    return {d.id for d in store.disks} | set(store.out_of_service)


def set_aside(store: Store, row: TitleRow, files: list[FileRow], report: Report) -> list[FileRow]:
    """Files still placed on a disk that is no longer configured (taken out of [storage]
    disks, not found on a configured disk by _rehome): the index holds absolute paths, so
    they would go on serving from a disk nothing checks, places on or counts. They are
    marked missing and the title incomplete, but left on their disk: put back in the
    config, the daemon's start re-verifies them (restore_disk) and they serve again.
    Counted per disk in `report.off_config`; returns the title's files as they are now."""
    known = known_disks(store)
    off = [f for f in files if f.state == OK and f.disk not in known]
    if not off:
        return files
    with transaction(store.conn) as conn:
        conn.executemany(
            "UPDATE files SET state = ? WHERE title = ? AND path = ? AND disk = ?",
            [(MISSING, row.id, f.path, f.disk) for f in off],
        )
        conn.execute(
            "UPDATE titles SET state = ? WHERE id = ? AND state = ?", (INCOMPLETE, row.id, READY)
        )
    for f in off:
        per_title = report.off_config.setdefault(f.disk, {})
        per_title[row.id] = per_title.get(row.id, 0) + 1
    return title_files(store.conn, row.id)


def align_tier(store: Store, row: TitleRow, report: Report) -> None:
    """Bring the title's tier in line with the configured tier of the disks holding its
    files: a disk relabelled in the config (ssd → hdd, or two disks' tiers swapped) would
    otherwise have the mover "move" the title to the tier its files are already on. Of a
    title on disks of several tiers, the label stays when it is one of them, else it takes
    the tier holding most of its bytes. Files on disks out of service do not count."""
    tiers: dict[str, str] = {d.id: d.tier for d in store.disks}
    held: dict[str, int] = {}
    for f in title_files(store.conn, row.id):
        on = tiers.get(f.disk)
        if f.state == OK and on is not None:
            held[on] = held.get(on, 0) + f.size
    if not held or row.tier in held:
        return
    tier = max(sorted(held), key=lambda t: held[t])
    with transaction(store.conn) as conn:
        conn.execute("UPDATE titles SET tier = ? WHERE id = ?", (tier, row.id))
    report.relabelled.setdefault((row.tier, tier), []).append(row.id)


def _found_elsewhere(
    store: Store, known: set[str], files: list[FileRow]
) -> list[tuple[str, FileRow]]:
    """Files placed on a disk no longer configured, found whole at the same place on one
    that is: (that disk's id, the file)."""
    moved = []
    for f in files:
        if f.disk in known:
            continue
        for disk in store.disks:
            path = file_path(disk.id, f.folder, f.path)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size == f.size and not through_symlink(path):
                moved.append((disk.id, f))
                break
    return moved

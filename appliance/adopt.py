"""Adoption: a complete title found on the disks but not in the index goes back into it
(reconcile in repair.py calls this for every title folder the index does not know).
"""

from __future__ import annotations

import os
import stat
import time

from appliance.config import Tier
from appliance.index import OK, READY, transaction
from appliance.safefiles import through_symlink
from appliance.store import Store
from edgeflix import titlefiles
from edgeflix.titlefiles import FILES_JSON, FileEntry, TitleFiles, TitleFilesError


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

"""Where a title's files wait between download and hand-off to the store.

files.json (and the run's state) live in the title's folder under `[fill] staging`. Each
media file is staged on the filesystem of the disk it will be stored on (`<disk>/.staging/
<title>/`), so the hand-off is a rename: no second write, no second hash, and a title being
updated is gone only for the renames, not for a copy. Where the storage side cannot say
(no disk of the tier in service), files stay in the title's folder and are copied in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgeflix.titlefiles import FILES_JSON

# A staged name (and partfile.py's validator beside it) ends in one of the suffixes
# titlefiles.STAGING_SUFFIXES refuses in files.json: no title's file can take its place.
PART = ".part"
DISK_STAGING = ".staging"  # at a disk's root, beside its titles/ folder (which the store owns)


def disk_staging(disk_root: Path, title_id: str) -> Path:
    return disk_root / DISK_STAGING / title_id


# Staging of a title no run is fetching is swept once nothing in it changed for this long:
# longer than any fill window's pause, so a title another process (`appliance fill` beside
# the daemon) is filling, or will resume in tonight's window, is left alone.
STALE_AFTER_S = 2 * 24 * 3600.0


def stale_folders(
    newest_change: Mapping[Path, float], keep: Collection[str], now: float
) -> list[Path]:
    """Title staging folders (named by title id) to sweep: not wanted by this run, and idle
    for STALE_AFTER_S (`newest_change`: the latest mtime inside each folder)."""
    return sorted(
        folder
        for folder, changed in newest_change.items()
        if folder.name not in keep and now - changed >= STALE_AFTER_S
    )


@dataclass(frozen=True)
class StagingLayout:
    folder: Path  # files.json, and any file `place` does not name a disk for
    place: Callable[[str], Path] | None = None  # file path → its disk's staging folder
    disk_folders: tuple[Path, ...] = ()  # every disk's staging folder for this title

    def file(self, path: str) -> Path:
        """Where the verified file `path` (relative, as in files.json) waits."""
        if self.place is None or path == FILES_JSON:
            return self.folder / path
        return self.place(path) / path

    def part(self, path: str) -> Path:
        """Where it is written while it downloads."""
        final = self.file(path)
        return final.with_name(final.name + PART)

    def folders(self) -> tuple[Path, ...]:
        """Everything this title occupies in staging (to start over or to clean up)."""
        return (self.folder, *self.disk_folders)

"""A title's files written onto the disks for a load (part of the store's I/O shell): the
sources checked before anything is written, each file copied and verified (or, staged by
the fill on the disk's own filesystem and verified there, renamed in), and put back where
they came from when the load fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Tier
from appliance.disks import Disk, LoadError
from appliance.index import OK, file_path
from appliance.safefiles import (
    ChecksumMismatch,
    copy_verified,
    fsync_dir,
    fsync_files,
    move_verified,
)
from edgeflix.titlefiles import FileEntry


@dataclass(frozen=True)
class Copy:
    """What `load` writes: every file of a title, where it comes from and which disk takes it."""

    title_id: str
    where: Callable[[str], Path]  # file path in files.json → where its bytes are now
    entries: Sequence[FileEntry]
    placement: Mapping[str, str]  # file path → disk id
    tier: Tier
    digest: str
    on_bytes: Callable[[int], None] | None
    adopt: bool  # moved in when on the disk's filesystem (verified by the caller)

    @property
    def total(self) -> int:
        return sum(e.size for e in self.entries)


def check_sources(source: Path, entries: Sequence[FileEntry], where: Callable[[str], Path]) -> None:
    """Refuse before writing anything if a listed file is absent or of the wrong size."""
    for entry in entries:
        path = where(entry.path)
        try:
            st = path.stat()
        except OSError:
            raise LoadError(f"{source}: {entry.path} is listed in files.json but missing") from None
        if not path.is_file():
            raise LoadError(f"{source}: {entry.path} is not a regular file")
        if st.st_size != entry.size:
            raise LoadError(
                f"{source}: {entry.path} has {st.st_size} bytes, files.json says {entry.size}"
            )


def put_back(moved: Sequence[tuple[Path, Path]]) -> None:
    """Files a failed load had renamed in go back where they came from (the fill's
    staging), so a retry need not download them again."""
    for src, dst in reversed(moved):
        with contextlib.suppress(OSError):
            os.rename(dst, src)


def staging_disks(
    disks: Sequence[Disk], entries: Sequence[FileEntry], where: Callable[[str], Path]
) -> set[str]:
    """Disks whose filesystem holds staged files of this load, which are renamed in, not
    copied: the room they take there is theirs already. Not under max_bytes, where only
    indexed bytes count as used and staged files take none of the quota."""
    devices = {os.stat(where(e.path)).st_dev for e in entries}
    return {d.id for d in disks if not d.max_bytes and os.stat(d.path).st_dev in devices}


def staged_bytes(
    disks: Sequence[Disk],
    entries: Sequence[FileEntry],
    placement: Mapping[str, str],
    where: Callable[[str], Path],
) -> dict[str, int]:
    """Bytes of this load already staged on each disk's own filesystem where `placement`
    puts them (renamed in, so they need no room there)."""
    devices = {d.id: os.stat(d.path).st_dev for d in disks}
    staged: dict[str, int] = {}
    for entry in entries:
        disk = placement[entry.path]
        if os.stat(where(entry.path)).st_dev == devices.get(disk):
            staged[disk] = staged.get(disk, 0) + entry.size
    return staged


def write_files(
    copy: Copy, folder: str, moved: list[tuple[Path, Path]]
) -> list[tuple[object, ...]]:
    """Every file of `copy` at its final name in DISK/titles/`folder`, whole and synced;
    returns the index rows that describe them. Files renamed in (adopted) are added to
    `moved` as they go: a caller that fails, here or after, puts them back (put_back)
    before it deletes the folder."""
    if copy.adopt:
        fsync_files([copy.where(e.path) for e in copy.entries])
    rows: list[tuple[object, ...]] = []
    for entry in copy.entries:
        disk = copy.placement[entry.path]
        src, dst = copy.where(entry.path), file_path(disk, folder, entry.path)
        try:
            if copy.adopt and move_verified(src, dst, entry.size):
                moved.append((src, dst))
                if copy.on_bytes:
                    copy.on_bytes(entry.size)
            else:
                copy_verified(src, dst, entry.size, entry.sha256, on_bytes=copy.on_bytes)
        except ChecksumMismatch as exc:
            raise LoadError(f"{src}: {exc} (files.json says otherwise)") from None
        except OSError as exc:
            raise LoadError(f"cannot copy {entry.path} of {copy.title_id}: {exc}") from None
        mtime_ns = dst.stat().st_mtime_ns
        rows.append((copy.title_id, entry.path, disk, entry.size, entry.sha256, mtime_ns, OK))
    for moved_to in {dst.parent for _, dst in moved}:
        fsync_dir(moved_to)
    return rows

"""Which index a disk belongs to: a marker on the disk's root naming the index whose titles
are stored there.

Two indexes over one disk (a second config file, a copied unit, a test config pointed at the
real disks) would each adopt the other's complete titles as found on the disks, sweep its
loads in progress as strays, and delete files the other still serves. So a disk whose marker
names another index that still exists is refused before anything is opened or created. An
index that moved (the marker names a path where no file is any more) takes the disk over,
and so does the index at the marker's own path, whatever happened to the file in between (a
damaged index moved aside and rebuilt by reconcile's adoption is still that disk's index).

The marker also tells one disk from another at the same mount point (`identity`: a disk
replaced has a new one, written at its claim), and a marker's temporary file that a killed
claim left is swept under the claim's lock (`sweep_temporaries`).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.disks import Disk, DiskError
from edgeflix import atomicfile
from edgeflix.atomicfile import write_atomic
from edgeflix.log import event

log = logging.getLogger("appliance.diskclaim")
MARKER = ".edgeflix-disk.json"
# The store-wide lock (safefiles.TitleLocks.store_wide) claims are written under.
LOCK = ".disk-claim.lock"
# A marker is a few hundred bytes; a bigger file there is not ours (read no further).
_MAX_MARKER_BYTES = 64 * 1024

Verdict = Literal["ours", "claim", "taken"]


@dataclass(frozen=True)
class Marker:
    index: str  # resolved path of the index that stores titles on the disk


def is_marker(name: str) -> bool:
    """The marker's name, or that of a temporary copy left by a kill while it was written
    (write_atomic's `.<name>.<random>.tmp`, or `.<name>.tmp` from before)."""
    return name == MARKER or atomicfile.is_temporary_of(name, MARKER)


def identity(disk: Path) -> str | None:
    """Which disk is mounted at `disk`: the inode and write time of its marker, written once
    at the disk's claim and carried by the disk (a disk put in its place has another, or
    none until claimed). None: no marker there. Raises OSError when it cannot be looked at
    (a failing disk: the caller cannot tell)."""
    try:
        st = os.lstat(disk / MARKER)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return f"{st.st_ino}:{st.st_mtime_ns}"


def sweep_temporaries(disks: Sequence[Disk], lock: AbstractContextManager[None]) -> list[Path]:
    """Remove the marker's temporary files a claim killed mid-way left on `disks` (writable
    ones), under `lock`, the one claims are written under: none is in progress meanwhile,
    whatever their age. A disk that cannot be read is left for its own checks."""
    removed: list[Path] = []
    with lock:
        for disk in disks:
            if not disk.writable:
                continue
            try:
                removed += atomicfile.sweep_temporaries(disk.path, (MARKER,))
            except OSError as exc:
                event(log, "disk.sweep_failed", logging.WARNING, disk=disk.id, error=exc.strerror)
    for path in removed:
        event(log, "disk.temporary_swept", disk=str(path.parent), file=path.name)
    return removed


def verdict(recorded: str | None, ours: str, recorded_exists: bool, same_file: bool) -> Verdict:
    """What to do with a disk whose marker names `recorded` (None: no readable marker), for
    the index at `ours` (both resolved paths). `recorded_exists`: a file is at `recorded`;
    `same_file`: it is our index under another name (a hard link, a bind mount)."""
    if recorded == ours or same_file:
        return "ours"
    if recorded is None or not recorded_exists:
        return "claim"  # a disk new to Edgeflix, from before markers, or its index moved
    return "taken"


def parse(raw: bytes) -> Marker | None:
    """The marker's content, or None when it is not one (damaged, or someone else's file)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    index = doc.get("index") if isinstance(doc, dict) else None
    return Marker(index) if isinstance(index, str) and os.path.isabs(index) else None


def read(disk: Disk) -> Marker | None:
    try:
        with open(disk.path / MARKER, "rb") as f:
            raw = f.read(_MAX_MARKER_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        # A failing disk: its own checks (DiskWatch, open_disks) say so; not ours to refuse.
        event(log, "disk.marker_unreadable", logging.WARNING, disk=disk.id, error=exc.strerror)
        return None
    return parse(raw) if len(raw) <= _MAX_MARKER_BYTES else None


def check(disks: Sequence[Disk], index: Path) -> list[Disk]:
    """Refuse (DiskError) a disk another existing index claims; return the disks this index
    should (re)claim. Reads only: nothing is written before every disk has been checked."""
    ours = str(index.resolve())
    unclaimed = []
    for disk in disks:
        marker = read(disk)
        recorded = marker.index if marker else None
        exists = recorded is not None and os.path.isfile(recorded)
        same = recorded is not None and exists and _same_file(recorded, ours)
        match verdict(recorded, ours, exists, same):
            case "taken":
                raise DiskError(
                    f"disk {disk.path} holds the titles of the appliance index {recorded}; two "
                    "indexes over one disk would adopt and delete each other's files. Use that "
                    f"index's config, or if {recorded} is a leftover, move it away and try again"
                )
            case "claim":
                unclaimed.append(disk)
    return unclaimed


def claim(disks: Sequence[Disk], index: Path, lock: AbstractContextManager[None]) -> None:
    """Mark `disks` (writable ones; a read-only disk stays as it is) as the index's, under
    `lock` (store-wide, beside the index): the first commands on a new box often start together, and
    two writers of one marker would share its temporary file. Checked again under the lock,
    so a disk another index claimed meanwhile is refused, not taken over."""
    ours = str(index.resolve())
    data = json.dumps({"index": ours}).encode() + b"\n"
    with lock:
        for disk in check([d for d in disks if d.writable], index):
            try:
                write_atomic(disk.path / MARKER, data, 0o644)
            except OSError as exc:
                raise DiskError(
                    f"disk {disk.path}: cannot write {MARKER}: {exc.strerror}"
                ) from None
            event(log, "disk.claimed", logging.DEBUG, disk=disk.id, index=ours)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False

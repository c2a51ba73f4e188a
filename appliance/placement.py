"""Which disk of a tier holds each file of a title, and whether a title fits: pure decisions.

Files are spread by weighted rendezvous (highest-random-weight) hashing of `title/path`, weighted
by disk capacity, so each disk holds its share, losing one disk costs only that share, and adding
a disk moves only the files the new disk wins. store.py turns these decisions into writes.
Also which disk a failed write was on (`blamed_disks`, for diskwatch.DiskWatch's count) and the
disks placement must pass over while their writes fail (`withheld`).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import math
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.disks import Disk  # disks.py imports this module: types only

# The errors of a write that say the disk itself failed: EIO, or its filesystem turned
# read-only under us (ext4's errors=remount-ro). A full disk (ENOSPC) is not failing.
WRITE_ERRNOS = frozenset({errno.EIO, errno.EROFS})


@dataclass(frozen=True)
class Bucket:
    """A disk as placement sees it: a stable id and a weight (its capacity)."""

    id: str
    weight: float


@dataclass(frozen=True)
class Room:
    """How many more bytes a disk accepts below its high watermark."""

    disk: str
    free: int


@dataclass(frozen=True)
class Shortfall:
    disk: str
    needed: int
    free: int


def _unit(key: str, bucket: str) -> float:
    """A uniform number in (0, 1) from the pair; stable across processes and versions."""
    raw = hashlib.blake2b(f"{bucket}\0{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(raw, "big") + 0.5) / 2.0**64


def choose(key: str, buckets: Sequence[Bucket]) -> str:
    """The bucket that wins `key`: score -w/ln(u) gives each bucket a w/sum(w) chance."""
    if not buckets:
        raise ValueError("no buckets to place on")
    best, best_score = "", -math.inf
    for bucket in buckets:
        if bucket.weight <= 0:
            continue
        score = -bucket.weight / math.log(_unit(key, bucket.id))
        # Ties are astronomically unlikely; break them by id so the result never depends on order.
        if score > best_score or (score == best_score and bucket.id < best):
            best, best_score = bucket.id, score
    if not best:
        raise ValueError("every bucket has zero weight")
    return best


def file_key(title_id: str, path: str) -> str:
    return f"{title_id}/{path}"


def place_title(title_id: str, paths: Iterable[str], buckets: Sequence[Bucket]) -> dict[str, str]:
    """Map every file path of a title to the disk id that should hold it."""
    return {path: choose(file_key(title_id, path), buckets) for path in paths}


def bytes_per_disk(placement: Mapping[str, str], sizes: Mapping[str, int]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for path, disk in placement.items():
        totals[disk] = totals.get(disk, 0) + sizes[path]
    return totals


def shortfalls(needed: Mapping[str, int], rooms: Iterable[Room]) -> list[Shortfall]:
    """Disks that cannot take what the placement puts on them (empty: the title fits)."""
    free = {room.disk: room.free for room in rooms}
    return [
        Shortfall(disk=disk, needed=amount, free=free.get(disk, 0))
        for disk, amount in sorted(needed.items())
        if amount > free.get(disk, 0)
    ]


def withheld(disks: Sequence[Disk], ids: Collection[str]) -> tuple[Disk, ...]:
    """`disks` with those in `ids` not writable: their files serve on, placement passes them
    over (Store.writable_disks_of), as for a disk mounted read-only."""
    return tuple(dataclasses.replace(d, writable=False) if d.id in ids else d for d in disks)


def disk_of(path: str | os.PathLike[str], disks: Iterable[str]) -> str | None:
    """The disk (a mount path, as its id) that `path` lies on, the innermost if nested."""
    where = Path(path)
    inside = [d for d in disks if Path(d) == where or Path(d) in where.parents]
    return max(inside, key=len, default=None)


def blamed_disks(
    errors: Iterable[OSError], written: Collection[str], unnamed_to: str | None = None
) -> dict[str, OSError]:
    """Disk → the first of `errors` (EIO, EROFS; others are ignored) that counts against it:
    an error whose path (open, mkdir, rename name it) lies on a disk in `written`, the
    disks the operation wrote to, counts against that disk. One without a path (write()
    and fsync() name none) counts against `unnamed_to`, given when the caller knows it was
    the only disk involved, and else against none: a healthy disk is never blamed for
    another one's failure, nor for a source read elsewhere."""
    blamed: dict[str, OSError] = {}
    for exc in errors:
        if exc.errno not in WRITE_ERRNOS:
            continue
        named = [n for n in (exc.filename, exc.filename2) if isinstance(n, str | os.PathLike)]
        found = [d for n in named if (d := disk_of(n, written)) is not None]
        disk = found[0] if found else (unnamed_to if not named else None)
        if disk is not None:
            blamed.setdefault(disk, exc)
    return blamed

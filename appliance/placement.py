"""Which disk of a tier holds each file of a title, and whether a title fits: pure decisions.

Files are spread by weighted rendezvous (highest-random-weight) hashing of `title/path`, weighted
by disk capacity, so each disk holds its share, losing one disk costs only that share, and adding
a disk moves only the files the new disk wins. store.py turns these decisions into writes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


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

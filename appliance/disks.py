"""The appliance's disks: mount points from `[storage] disks`, their tier, and how full they are.

A tier left out of the config is read from the block device under the path (sysfs
`queue/rotational`, following partitions to their disk and dm/md/loop devices to what backs
them). placement.py decides where files go on these disks; store.py writes them. The storage
errors live here too, at the bottom of the storage stack.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from appliance.placement import Bucket, Room, Shortfall
from edgeflix.errors import EdgeflixError

if TYPE_CHECKING:
    # Types only: serving workers import this module (via index.py) and stay free of pydantic.
    from appliance.config import DiskConfig, Tier

SYSFS = Path("/sys")
TIERS: tuple[Tier, ...] = ("ssd", "hdd")
# Unknown hardware counts as slow: promoting a title to a tier we only guessed is worse than
# leaving a fast disk underused.
DEFAULT_TIER: Tier = "hdd"
TITLES_DIR = "titles"
# Loads may fill a disk up to its high watermark; background tier moves stop at the low one,
# so a tier filled by moves still has room for the next load.
Watermark = Literal["high", "low"]
_MAX_DEPTH = 8


class StorageError(EdgeflixError):
    """Root of the appliance storage errors."""


class DiskError(StorageError):
    """A configured disk is missing, not a folder, or not writable."""


class CapacityError(StorageError):
    """A title does not fit below the high watermark of the disks it would land on."""


class UnknownTitle(StorageError):
    """The title is not on this appliance."""


class LoadError(StorageError):
    """A title cannot be loaded: bad source folder, mismatching files, or already present."""


@dataclass(frozen=True)
class Disk:
    id: str  # the resolved mount path; also the disk's key in the index
    path: Path
    tier: Tier
    capacity: int  # bytes the appliance may use here: max_bytes or the filesystem size
    high_watermark: float
    low_watermark: float
    max_bytes: int | None
    # False on a read-only filesystem: its files serve, nothing new is placed there.
    writable: bool = True

    @property
    def titles_dir(self) -> Path:
        return self.path / TITLES_DIR

    def bucket(self) -> Bucket:
        return Bucket(id=self.id, weight=float(self.capacity))


@dataclass(frozen=True)
class DiskUsage:
    disk: str
    tier: Tier
    capacity: int
    used: int
    free_below_high: int
    free_below_low: int


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def rotational(major: int, minor: int, sysfs: Path = SYSFS, depth: int = 0) -> bool | None:
    """The rotational flag of device MAJ:MIN (None when sysfs cannot say)."""
    if depth > _MAX_DEPTH:
        return None
    try:
        device = (sysfs / "dev" / "block" / f"{major}:{minor}").resolve(strict=True)
    except OSError:
        return None  # major 0 (tmpfs, overlay, btrfs subvolumes) or no sysfs at all
    return _device_rotational(device, sysfs, depth)


def _device_rotational(device: Path, sysfs: Path, depth: int) -> bool | None:
    if (device / "partition").exists():
        device = device.parent  # sda1 → sda: the queue belongs to the whole disk
    backing = _read_text(device / "loop" / "backing_file")
    if backing:
        # A loop device is as fast as the disk its backing file sits on.
        try:
            st = os.stat(backing)
        except OSError:
            return None
        return rotational(os.major(st.st_dev), os.minor(st.st_dev), sysfs, depth + 1)
    slaves_dir = device / "slaves"
    members = sorted(slaves_dir.iterdir()) if slaves_dir.is_dir() else []
    if members:
        # dm/md stack over real disks and often report a made-up flag themselves: one spinning
        # member makes the whole device as slow as a spinning disk.
        flags = [_device_rotational(m.resolve(), sysfs, depth + 1) for m in members]
        if any(flag is True for flag in flags):
            return True
        if flags and all(flag is False for flag in flags):
            return False
    flag = _read_text(device / "queue" / "rotational")
    if flag not in ("0", "1"):
        return None
    return flag == "1"


def detect_tier(path: Path, sysfs: Path = SYSFS, default: Tier = DEFAULT_TIER) -> Tier:
    """ssd or hdd for the block device holding `path`; `default` when it cannot be told."""
    st = os.stat(path)
    flag = rotational(os.major(st.st_dev), os.minor(st.st_dev), sysfs)
    if flag is None:
        return default
    return "hdd" if flag else "ssd"


def read_only_fs(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def titles_read_only(path: Path) -> str | None:
    """Why nothing new can be written on the disk at `path`, or None: its filesystem is
    read-only, or its titles folder is (a read-only bind mount over it, or permissions
    this user cannot write through), which the disk's own root does not show."""
    if read_only_fs(path):
        return "file system is mounted read-only"
    titles = path / TITLES_DIR
    if not titles.is_dir():
        return None
    if read_only_fs(titles):
        return f"{TITLES_DIR} folder is mounted read-only"
    if not os.access(titles, os.W_OK | os.X_OK):
        return f"{TITLES_DIR} folder is not writable by this user"
    return None


def check_disk_path(path: Path) -> Path:
    """The resolved path of a usable disk, or a DiskError saying what is wrong. A disk on a
    read-only filesystem (ext4 remounted itself read-only on errors) is usable for reading."""
    try:
        if not path.exists():
            raise DiskError(f"disk {path} does not exist (mount it or fix [storage] disks)")
        if not path.is_dir():
            raise DiskError(f"disk {path} is not a folder")
        wanted = os.R_OK | os.X_OK if read_only_fs(path) else os.W_OK | os.X_OK
    except OSError as exc:
        raise DiskError(f"disk {path}: {exc.strerror or exc} (is the disk failing?)") from None
    if not os.access(path, wanted):
        raise DiskError(f"disk {path} is not writable by this user")
    return path.resolve()


def open_disks(configs: Sequence[DiskConfig], sysfs: Path = SYSFS) -> tuple[Disk, ...]:
    """Check every configured disk and work out its tier and capacity."""
    disks = []
    for cfg in configs:
        path = check_disk_path(cfg.path)
        try:
            tier = cfg.tier or detect_tier(path, sysfs)
            total = shutil.disk_usage(path).total
            writable = titles_read_only(path) is None
        except OSError as exc:
            raise DiskError(f"disk {path}: {exc.strerror or exc} (is the disk failing?)") from None
        capacity = min(cfg.max_bytes, total) if cfg.max_bytes else total
        disks.append(
            Disk(
                id=str(path),
                path=path,
                tier=tier,
                capacity=capacity,
                high_watermark=cfg.high_watermark,
                low_watermark=cfg.low_watermark,
                max_bytes=cfg.max_bytes,
                writable=writable,
            )
        )
    return tuple(disks)


def measure(disk: Disk, indexed_bytes: int) -> DiskUsage:
    """Usage of one disk. With max_bytes only what the index holds there counts as used."""
    fs = shutil.disk_usage(disk.path)
    used = indexed_bytes if disk.max_bytes else fs.total - fs.free
    high = min(int(disk.capacity * disk.high_watermark) - used, fs.free)
    low = min(int(disk.capacity * disk.low_watermark) - used, fs.free)
    return DiskUsage(
        disk=disk.id,
        tier=disk.tier,
        capacity=disk.capacity,
        used=used,
        free_below_high=max(0, high),
        free_below_low=max(0, low),
    )


def room(usage: DiskUsage, watermark: Watermark = "high") -> Room:
    free = usage.free_below_high if watermark == "high" else usage.free_below_low
    return Room(disk=usage.disk, free=free)


def filesystem_id(path: Path) -> int:
    """The filesystem holding `path`. Disks on one filesystem share its space (and its block
    device): whatever is per filesystem counts once for them, not once per disk."""
    return os.stat(path).st_dev


def by_filesystem(disks: Sequence[Disk]) -> list[list[Disk]]:
    """The disks grouped by filesystem, groups and disks in config order."""
    groups: dict[int, list[Disk]] = {}
    for disk in disks:
        groups.setdefault(filesystem_id(disk.path), []).append(disk)
    return list(groups.values())


def shared_fs_shortfalls(
    disks: Sequence[Disk], needed: Mapping[str, int], freeing: Mapping[str, int]
) -> list[Shortfall]:
    """Disks that share one filesystem each see all of its free space: together they must
    still fit in it, or a copy runs out of space half-way."""
    short = []
    for group in by_filesystem(disks):
        if len(group) < 2:
            continue
        wanted = sum(needed.get(d.id, 0) for d in group)
        free = shutil.disk_usage(group[0].path).free + sum(freeing.get(d.id, 0) for d in group)
        if wanted > free:
            names = "+".join(d.id for d in group)
            short.append(Shortfall(disk=f"{names} (one filesystem)", needed=wanted, free=free))
    return short


def check_layout(disks: Sequence[Disk], index: Path) -> None:
    """Refuse layouts where reconcile, which deletes what it does not know from a disk's
    titles folder, would delete the index, another disk, or someone else's folders."""
    index_at = index.resolve()
    seen: dict[tuple[int, int], Disk] = {}
    for disk in disks:
        st = os.stat(disk.path)
        twin = seen.setdefault((st.st_dev, st.st_ino), disk)
        if twin is not disk:
            # Each disk's reconcile would delete the other's files as strays.
            raise DiskError(
                f"disks {twin.path} and {disk.path} are the same folder (a bind mount or a "
                "second mount of one filesystem); list it once"
            )
        if disk.titles_dir in index_at.parents:
            raise DiskError(
                f"the index {index} is inside {disk.titles_dir}, where everything is a "
                "title's; put [storage] index elsewhere"
            )
        outer = next((d for d in disks if d.titles_dir in (disk.path, *disk.path.parents)), None)
        if outer is not None:
            raise DiskError(f"disk {disk.path} is inside disk {outer.path}'s titles folder")
        if disk.titles_dir.is_symlink():
            raise DiskError(
                f"disk {disk.path}: {disk.titles_dir} is a symbolic link, not the store's own "
                "folder; remove the link (point the disk's path at the target instead)"
            )

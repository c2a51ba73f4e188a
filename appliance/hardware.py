"""What this box is: CPU, memory, disks, NICs, board and temperatures, as a frozen profile,
and the serving capacity the appliance can honestly advertise from it.

Reads sysfs/procfs under an injectable root (unit tests build fixture trees in tmp_path) and
NIC link state from psutil; the daemon and `appliance status` call `probe()`, health.py
supplies what `advertised_capacity_bps` lowers the figure for.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import psutil

from appliance.disks import filesystem_id
from appliance.disks import rotational as rotational_of
from appliance.health import Health

DiskKind = Literal["hdd", "ssd", "nvme", "sd", "unknown"]


class NicStat(Protocol):
    """The fields of psutil.net_if_stats() we use (speed in Mb/s, 0 when unknown)."""

    @property
    def isup(self) -> bool: ...
    @property
    def speed(self) -> int: ...
    @property
    def mtu(self) -> int: ...


@dataclass(frozen=True)
class HostRoots:
    """Where the kernel's views live; tests point these at fixture trees."""

    sys: Path = Path("/sys")
    proc: Path = Path("/proc")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    logical_cores: int
    physical_cores: int | None


@dataclass(frozen=True)
class DiskInfo:
    path: str  # the configured storage directory
    device: str | None  # block device name, e.g. "sda" (whole disk), None when unknown
    model: str | None
    size_bytes: int | None  # the whole block device
    kind: DiskKind
    rotational: bool | None
    mount: str | None  # mount point holding `path`
    fs_total_bytes: int | None
    fs_free_bytes: int | None
    filesystem: int | None = None  # disks.filesystem_id of `path`: equal for shared folders


@dataclass(frozen=True)
class NicInfo:
    name: str
    speed_bps: int | None  # None: the driver does not say (virtio, Wi-Fi, down)
    mtu: int
    up: bool
    virtual: bool  # loopback, bridges, veth, ifb: never a path to players


@dataclass(frozen=True)
class Temperature:
    sensor: str
    celsius: float


@dataclass(frozen=True)
class HardwareProfile:
    cpu: CpuInfo
    memory_bytes: int
    disks: tuple[DiskInfo, ...]
    nics: tuple[NicInfo, ...]
    board: str | None  # e.g. "Raspberry Pi 4 Model B Rev 1.4"
    temperatures: tuple[Temperature, ...]
    throttled: bool  # the firmware reports under-voltage or frequency capping right now

    def hottest_celsius(self) -> float | None:
        return max((t.celsius for t in self.temperatures), default=None)


@dataclass(frozen=True)
class CapacityPolicy:
    """Nominal sequential read per disk kind (bits/s) and how much heat or throttling costs."""

    disk_bps: Mapping[str, int] = field(
        default_factory=lambda: {
            "hdd": 1_200_000_000,  # ~150 MB/s
            "ssd": 4_000_000_000,  # ~500 MB/s SATA
            "nvme": 16_000_000_000,  # ~2 GB/s
            # SD card or eMMC (mmcblk*): ~40-90 MB/s; a Pi 4's SD bus tops out near 50 MB/s
            "sd": 400_000_000,
            # No block device to read (overlay, tmpfs, btrfs): assume a spinning disk. SD
            # cards always show as mmcblk, so an unknown device need not be priced as one.
            "unknown": 1_200_000_000,
        }
    )
    hot_celsius: float = 80.0
    critical_celsius: float = 90.0
    hot_factor: float = 0.5
    critical_factor: float = 0.25
    throttled_factor: float = 0.5
    degraded_factor: float = 0.75


# --- pure parts ----------------------------------------------------------------------------


def parse_cpu_model(cpuinfo: str) -> str:
    """x86 names the CPU in `model name`; arm64 boards often only in `Model` or `Hardware`."""
    values: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in values and value.strip():
            values[key.strip()] = value.strip()
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        if key in values:
            return values[key]
    return "unknown"


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """(device, mount point) pairs from /proc/self/mounts, octal escapes decoded."""
    pairs = []
    # Split on the kernel's own separators only: str.splitlines() and str.split() also break
    # on characters a name may hold unescaped (form feed, U+2028, a no-break space).
    for line in text.split("\n"):
        fields = line.split(" ")
        if len(fields) >= 2:
            pairs.append((_unescape(fields[0]), _unescape(fields[1])))
    return pairs


# The kernel escapes exactly these four bytes in /proc mounts (fs/proc_namespace.c, mangle());
# every other byte, UTF-8 included, is written as it is. A backslash in a name is itself
# escaped (\\134), so one left-to-right pass undoes the escaping exactly.
_MOUNT_ESCAPE = re.compile(r"\\(040|011|012|134)")


def _unescape(text: str) -> str:
    return _MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def mount_of(path: str, mounts: Sequence[tuple[str, str]]) -> str | None:
    """The longest mount point that contains `path`."""
    best: str | None = None
    for _, point in mounts:
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best)):
            best = point
    return best


def parse_throttled(text: str) -> bool:
    """Raspberry Pi `get_throttled` bitmask: bits 0-3 are conditions active right now."""
    try:
        return int(text.strip(), 16) & 0xF != 0
    except ValueError:
        return False


def disk_kind(device: str, rotational: bool | None) -> DiskKind:
    if device.startswith("nvme"):
        return "nvme"
    if device.startswith("mmcblk"):
        # SD cards and eMMC say rotational=0 but read at a tenth of a SATA SSD. (An SD card in
        # a USB reader shows as sdX and cannot be told from a USB SSD: it stays "ssd".)
        return "sd"
    if rotational is None:
        return "unknown"
    return "hdd" if rotational else "ssd"


def _rate_key(disk: DiskInfo) -> str:
    """What one read rate belongs to: the whole block device, else the filesystem, else (no
    stat at all) the folder itself."""
    if disk.device is not None:
        return f"device {disk.device}"
    if disk.filesystem is not None:
        return f"filesystem {disk.filesystem}"
    return f"folder {disk.path}"


def advertised_capacity_bps(
    profile: HardwareProfile, health: Health | None = None, policy: CapacityPolicy | None = None
) -> int:
    """Bits/s this box can serve: min(player-facing NICs, disks in service), then lowered for
    throttling, heat and degraded health; 0 when failing or nothing can serve.
    """
    policy = policy or CapacityPolicy()
    out = set(health.disks_out_of_service) if health else set()
    # A disk's read rate is the block device's: folders sharing one (two folders of one
    # filesystem, two partitions of one disk) share it and count once.
    rates = {_rate_key(d): policy.disk_bps[d.kind] for d in profile.disks if d.path not in out}
    disk_total = sum(rates.values())
    nic_speeds = [n.speed_bps for n in profile.nics if n.up and not n.virtual and n.speed_bps]
    # Titles are spread over all disks and every NIC can carry players, so both sum.
    limits = [disk_total] + ([sum(nic_speeds)] if nic_speeds else [])
    factor = 1.0
    if profile.throttled:
        factor *= policy.throttled_factor
    hottest = profile.hottest_celsius()
    if hottest is not None and hottest >= policy.critical_celsius:
        factor *= policy.critical_factor
    elif hottest is not None and hottest >= policy.hot_celsius:
        factor *= policy.hot_factor
    if health is not None and health.state == "failing":
        return 0
    if health is not None and health.state == "degraded":
        factor *= policy.degraded_factor
    return int(min(limits) * factor)


# --- sysfs / procfs readers ---------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _read_fs_names(path: Path) -> str:
    """A file of path names, decoded as os decodes names (bytes that are not UTF-8 too), so
    they compare equal to the paths Path.resolve() gives."""
    try:
        return os.fsdecode(path.read_bytes())
    except OSError:
        return ""


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def block_device(roots: HostRoots, major: int, minor: int) -> Path | None:
    """The sysfs directory of the whole disk holding device MAJ:MIN (a partition's parent)."""
    link = roots.sys / "dev" / "block" / f"{major}:{minor}"
    try:
        node = link.resolve(strict=True)
    except OSError:
        return None
    if (node / "partition").exists():
        node = node.parent
    return node


def describe_disk(path: Path, roots: HostRoots, mounts: Sequence[tuple[str, str]]) -> DiskInfo:
    """Everything we can learn about the storage directory `path` without root tools."""
    resolved = str(path.resolve())
    device: Path | None = None
    fs_total = fs_free = filesystem = None
    st: os.stat_result | None = None
    try:
        st = os.stat(path)
        filesystem = filesystem_id(path)
        device = block_device(roots, os.major(st.st_dev), os.minor(st.st_dev))
        usage = shutil.disk_usage(path)
        fs_total, fs_free = usage.total, usage.free
    except OSError:
        pass
    if device is None:
        return DiskInfo(
            resolved,
            None,
            None,
            None,
            "unknown",
            None,
            mount_of(resolved, mounts),
            fs_total,
            fs_free,
            filesystem,
        )
    # Through loop devices to their backing file's disk and through dm/md to their members
    # (disks.py): their own flags are made up (a loop device says "rotational" on any disk).
    assert st is not None  # a device was found from it
    rotational = rotational_of(os.major(st.st_dev), os.minor(st.st_dev), roots.sys)
    sectors = _read_int(device / "size")
    return DiskInfo(
        path=resolved,
        device=device.name,
        model=_read(device / "device" / "model") or None,
        size_bytes=sectors * 512 if sectors is not None else None,
        kind=disk_kind(device.name, rotational),
        rotational=rotational,
        mount=mount_of(resolved, mounts),
        fs_total_bytes=fs_total,
        fs_free_bytes=fs_free,
        filesystem=filesystem,
    )


def read_temperatures(roots: HostRoots) -> tuple[Temperature, ...]:
    """Thermal zones and hwmon inputs (millidegrees), the same files psutil reads."""
    temps: list[Temperature] = []
    for zone in sorted((roots.sys / "class" / "thermal").glob("thermal_zone*")):
        milli = _read_int(zone / "temp")
        if milli is not None:
            temps.append(Temperature(_read(zone / "type") or zone.name, milli / 1000))
    for mon in sorted((roots.sys / "class" / "hwmon").glob("hwmon*")):
        name = _read(mon / "name") or mon.name
        for sensor in sorted(mon.glob("temp*_input")):
            milli = _read_int(sensor)
            if milli is not None:
                label = _read(mon / sensor.name.replace("_input", "_label"))
                temps.append(Temperature(f"{name}/{label or sensor.name}", milli / 1000))
    return tuple(temps)


def describe_nics(roots: HostRoots, stats: Mapping[str, NicStat]) -> tuple[NicInfo, ...]:
    nics = []
    for name, st in sorted(stats.items()):
        link = roots.sys / "class" / "net" / name
        try:
            virtual = "/virtual/" in str(link.resolve(strict=True))
        except OSError:
            virtual = name == "lo"
        nics.append(
            NicInfo(
                name=name,
                speed_bps=st.speed * 1_000_000 if st.speed > 0 else None,
                mtu=st.mtu,
                up=st.isup,
                virtual=virtual,
            )
        )
    return tuple(nics)


def probe(
    disk_paths: Sequence[Path],
    roots: HostRoots | None = None,
    nic_stats: Mapping[str, NicStat] | None = None,
) -> HardwareProfile:
    """Build the profile of this host (or of the fixture tree under `roots`)."""
    roots = roots or HostRoots()
    mounts = parse_mounts(_read_fs_names(roots.proc / "self" / "mounts"))
    board = _read(roots.proc / "device-tree" / "model")
    throttled_text = _read(roots.sys / "devices/platform/soc/soc:firmware/get_throttled")
    return HardwareProfile(
        cpu=CpuInfo(
            model=parse_cpu_model(_read(roots.proc / "cpuinfo") or ""),
            logical_cores=psutil.cpu_count(logical=True) or 1,
            physical_cores=psutil.cpu_count(logical=False),
        ),
        memory_bytes=psutil.virtual_memory().total,
        disks=tuple(describe_disk(p, roots, mounts) for p in disk_paths),
        nics=describe_nics(roots, psutil.net_if_stats() if nic_stats is None else nic_stats),
        board=board.rstrip("\x00") if board else None,
        temperatures=read_temperatures(roots),
        throttled=parse_throttled(throttled_text) if throttled_text else False,
    )

"""Hardware profile from fixture sysfs/procfs trees, and the advertised capacity policy."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.hardware import (
    CpuInfo,
    DiskInfo,
    HardwareProfile,
    HostRoots,
    NicInfo,
    Temperature,
    advertised_capacity_bps,
    mount_of,
    parse_cpu_model,
    parse_mounts,
    parse_throttled,
    probe,
)
from appliance.health import Health


class Stat(NamedTuple):
    isup: bool
    speed: int
    mtu: int


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build_pi_tree(root: Path, storage: Path, *, rotational: int, device: str = "sda") -> HostRoots:
    """A Raspberry Pi-like sysfs/procfs whose dev/block entry matches `storage`'s real st_dev,
    so probe() walks the same path it walks on a real box."""
    sys_root, proc_root = root / "sys", root / "proc"
    st_dev = os.stat(storage).st_dev
    disk = sys_root / "devices/platform/scb/usb1/1-1/host0/block" / device
    part = disk / f"{device}1"
    _write(part / "partition", "1\n")
    _write(disk / "queue/rotational", f"{rotational}\n")
    _write(disk / "size", "7814037168\n")  # sectors: 4 TB
    _write(disk / "device/model", "WDC WD40EFRX-68N\n")
    link = sys_root / "dev/block" / f"{os.major(st_dev)}:{os.minor(st_dev)}"
    link.parent.mkdir(parents=True)
    link.symlink_to(part)
    for name, target in {
        "eth0": "devices/platform/scb/eth0",
        "lo": "devices/virtual/net/lo",
    }.items():
        (sys_root / target).mkdir(parents=True)
        (sys_root / "class/net").mkdir(parents=True, exist_ok=True)
        (sys_root / "class/net" / name).symlink_to(sys_root / target)
    _write(sys_root / "class/thermal/thermal_zone0/temp", "84500\n")
    _write(sys_root / "class/thermal/thermal_zone0/type", "cpu-thermal\n")
    _write(sys_root / "devices/platform/soc/soc:firmware/get_throttled", "0x50005\n")
    _write(proc_root / "device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\x00")
    _write(proc_root / "cpuinfo", "processor\t: 0\nBogoMIPS\t: 108.00\nModel\t: Raspberry Pi 4\n")
    _write(
        proc_root / "self/mounts",
        f"/dev/{device}1 {storage} ext4 rw 0 0\n/dev/root / ext4 rw 0 0\n",
    )
    return HostRoots(sys=sys_root, proc=proc_root)


def test_probe_reads_pi_fixture_tree(tmp_path: Path) -> None:
    storage = tmp_path / "srv" / "hdd0"
    storage.mkdir(parents=True)
    roots = build_pi_tree(tmp_path / "host", storage, rotational=1)
    nics = {"eth0": Stat(True, 1000, 1500), "lo": Stat(True, 0, 65536)}
    profile = probe([storage], roots, nic_stats=nics)

    assert profile.board == "Raspberry Pi 4 Model B Rev 1.4"
    assert profile.cpu.model == "Raspberry Pi 4"
    assert profile.cpu.logical_cores >= 1
    assert profile.memory_bytes > 0
    (disk,) = profile.disks
    assert disk.device == "sda"
    assert disk.kind == "hdd" and disk.rotational is True
    assert disk.model == "WDC WD40EFRX-68N"
    assert disk.size_bytes == 7814037168 * 512
    assert disk.mount == str(storage)
    assert disk.fs_total_bytes and disk.fs_total_bytes > 0
    eth0, lo = profile.nics
    assert (eth0.name, eth0.speed_bps, eth0.mtu, eth0.virtual) == ("eth0", 10**9, 1500, False)
    assert lo.virtual and lo.speed_bps is None
    assert profile.temperatures == (Temperature("cpu-thermal", 84.5),)
    assert profile.throttled


def test_probe_nvme_and_no_pi(tmp_path: Path) -> None:
    storage = tmp_path / "nvme"
    storage.mkdir()
    roots = build_pi_tree(tmp_path / "host", storage, rotational=0, device="nvme0n1")
    (roots.proc / "device-tree/model").unlink()
    (roots.sys / "devices/platform/soc/soc:firmware/get_throttled").write_text("0x0\n")
    profile = probe([storage], roots, nic_stats={})
    assert profile.board is None and not profile.throttled
    assert profile.disks[0].kind == "nvme"


def test_probe_sd_card_is_its_own_slow_kind(tmp_path: Path) -> None:
    # A Pi booted from its SD card: mmcblk0 says rotational=0, like an SSD, but reads at
    # well under 1 Gb/s, so even a 2.5 GbE USB NIC does not make the box a 1 Gb/s server.
    storage = tmp_path / "sd"
    storage.mkdir()
    roots = build_pi_tree(tmp_path / "host", storage, rotational=0, device="mmcblk0")
    (roots.sys / "devices/platform/soc/soc:firmware/get_throttled").write_text("0x0\n")
    _write(roots.sys / "class/thermal/thermal_zone0/temp", "50000\n")
    profile = probe([storage], roots, nic_stats={"eth0": Stat(True, 2500, 1500)})
    assert profile.disks[0].device == "mmcblk0" and profile.disks[0].kind == "sd"
    assert advertised_capacity_bps(profile) == 400_000_000


def test_probe_unknown_device_and_missing_path(tmp_path: Path) -> None:
    roots = HostRoots(sys=tmp_path / "empty-sys", proc=tmp_path / "empty-proc")
    profile = probe([tmp_path, tmp_path / "gone"], roots, nic_stats={})
    assert [d.kind for d in profile.disks] == ["unknown", "unknown"]
    assert profile.disks[1].fs_total_bytes is None
    assert profile.cpu.model == "unknown" and profile.temperatures == ()


def test_probe_real_host_does_not_crash(tmp_path: Path) -> None:
    profile = probe([tmp_path])
    assert profile.cpu.logical_cores >= 1 and profile.disks[0].path == str(tmp_path.resolve())


def test_hwmon_labels(tmp_path: Path) -> None:
    roots = HostRoots(sys=tmp_path / "sys", proc=tmp_path / "proc")
    _write(roots.sys / "class/hwmon/hwmon0/name", "coretemp\n")
    _write(roots.sys / "class/hwmon/hwmon0/temp1_input", "45000\n")
    _write(roots.sys / "class/hwmon/hwmon0/temp1_label", "Package id 0\n")
    profile = probe([], roots, nic_stats={})
    assert profile.temperatures == (Temperature("coretemp/Package id 0", 45.0),)


@pytest.mark.parametrize(
    ("text", "model"),
    [
        ("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n", "AMD EPYC 7B13"),
        ("Hardware\t: BCM2835\nModel\t: Raspberry Pi 3 Model B\n", "Raspberry Pi 3 Model B"),
        ("Hardware\t: BCM2835\n", "BCM2835"),
        ("", "unknown"),
    ],
)
def test_parse_cpu_model(text: str, model: str) -> None:
    assert parse_cpu_model(text) == model


def test_mounts_longest_prefix_and_escapes() -> None:
    mounts = parse_mounts(
        "/dev/a / ext4 rw 0 0\n/dev/b /srv/my\\040disk xfs rw 0 0\n/dev/c /srv/m ext4 rw 0 0\n"
    )
    assert mounts[1] == ("/dev/b", "/srv/my disk")
    assert mount_of("/srv/my disk/titles", mounts) == "/srv/my disk"
    assert mount_of("/srv/mx", mounts) == "/"
    assert mount_of("/srv/m", mounts) == "/srv/m"


def _kernel_escape(name: bytes) -> bytes:
    """What the kernel writes for a name in /proc mounts: only these four bytes escaped."""
    for byte in b"\\ \t\n":
        name = name.replace(bytes([byte]), b"\\%03o" % byte)
    return name


def test_mounts_decode_exactly_the_kernel_escapes() -> None:
    # vidéos as the kernel writes it: the UTF-8 bytes as they are, the space as \040
    mounts = parse_mounts(
        "/dev/sdb1 /srv/vid\u00e9os\\040disk ext4 rw 0 0\n"
        "/dev/sdc1 /srv/a\\134040b\\011\\012\\134x xfs rw 0 0\n"
        "/dev/sda1 / ext4 rw 0 0\n"
    )
    assert mounts[0] == ("/dev/sdb1", "/srv/vid\u00e9os disk")
    assert mounts[1] == ("/dev/sdc1", "/srv/a\\040b\t\n\\x")
    assert mount_of("/srv/vid\u00e9os disk/store", mounts) == "/srv/vid\u00e9os disk"


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b))
def test_mount_names_round_trip(raw: bytes) -> None:
    line = b"/dev/sdb1 /srv/" + _kernel_escape(raw) + b" ext4 rw 0 0\n/dev/sda1 / ext4 rw 0 0\n"
    mounts = parse_mounts(os.fsdecode(line))
    assert mounts[0] == ("/dev/sdb1", "/srv/" + os.fsdecode(raw))


@pytest.mark.parametrize("name", [b"vid\xc3\xa9os disk", b"caf\xe9\\x", b"a\xc2\xa0b"])
def test_probe_finds_the_mount_of_a_non_ascii_folder(tmp_path: Path, name: bytes) -> None:
    mount = Path(os.fsdecode(bytes(tmp_path) + b"/" + name))
    storage = mount / "store"
    storage.mkdir(parents=True)
    # tmp_path: the same st_dev as `storage`, and a name the tree builder can write as text
    roots = build_pi_tree(tmp_path / "host", tmp_path, rotational=1)
    (roots.proc / "self/mounts").write_bytes(
        b"/dev/sda1 " + _kernel_escape(bytes(mount)) + b" ext4 rw 0 0\n/dev/root / ext4 rw 0 0\n"
    )
    assert probe([storage], roots, nic_stats={}).disks[0].mount == str(mount)


@pytest.mark.parametrize(
    ("text", "now"), [("0x0", False), ("0x50000", False), ("0x4", True), ("junk", False)]
)
def test_parse_throttled(text: str, now: bool) -> None:
    assert parse_throttled(text) is now


def _profile(
    kinds: list[str],
    nic_mbps: list[int | None],
    temp: float | None = None,
    throttled: bool = False,
    disks: tuple[DiskInfo, ...] = (),
) -> HardwareProfile:
    disks += tuple(
        DiskInfo(f"/d{i}", None, None, None, k, None, None, None, None)  # type: ignore[arg-type]
        for i, k in enumerate(kinds)
    )
    nics = tuple(
        NicInfo(f"eth{i}", s * 10**6 if s else None, 1500, True, False)
        for i, s in enumerate(nic_mbps)
    )
    temps = (Temperature("cpu", temp),) if temp is not None else ()
    return HardwareProfile(CpuInfo("x", 4, 4), 1 << 30, disks, nics, None, temps, throttled)


def test_capacity_is_min_of_nic_and_disks() -> None:
    # one HDD (1.2 Gb/s) behind a 10 GbE NIC: the disk limits
    assert advertised_capacity_bps(_profile(["hdd"], [10_000])) == 1_200_000_000
    # four NVMe behind 1 GbE: the NIC limits
    assert advertised_capacity_bps(_profile(["nvme"] * 4, [1000])) == 10**9
    # unknown NIC speed (virtio): only the disks count
    assert advertised_capacity_bps(_profile(["ssd"], [None])) == 4 * 10**9


def test_probe_two_folders_of_one_filesystem_read_at_one_disk_rate(tmp_path: Path) -> None:
    # The README's layout: disk0 and disk1 are folders of one filesystem on one HDD.
    disks = [tmp_path / "var" / "disk0", tmp_path / "var" / "disk1"]
    for disk in disks:
        disk.mkdir(parents=True)
    roots = build_pi_tree(tmp_path / "host", disks[0], rotational=1)
    profile = probe(disks, roots, nic_stats={"eth0": Stat(True, 10_000, 1500)})
    cool = replace(profile, temperatures=(), throttled=False)
    assert advertised_capacity_bps(cool) == 1_200_000_000
    assert profile.disks[0].filesystem == profile.disks[1].filesystem is not None


def test_capacity_counts_each_block_device_once() -> None:
    def disk(path: str, device: str | None, filesystem: int | None) -> DiskInfo:
        return DiskInfo(path, device, None, None, "hdd", True, None, None, None, filesystem)

    def capacity(*disks: DiskInfo) -> int:
        return advertised_capacity_bps(_profile([], [10_000], disks=disks))

    hdd = 1_200_000_000
    # no block device known (overlay, tmpfs): one filesystem is one rate
    assert capacity(disk("/a", None, 7), disk("/b", None, 7)) == hdd
    assert capacity(disk("/a", None, 7), disk("/b", None, 8)) == 2 * hdd
    # two partitions of one disk share its heads; two disks do not
    assert capacity(disk("/a", "sda", 2049), disk("/b", "sda", 2050)) == hdd
    assert capacity(disk("/a", "sda", 2049), disk("/b", "sdb", 2065)) == 2 * hdd
    # one of two folders out of service: the device still serves the other at full rate
    one_out = Health("ok", (), disks_out_of_service=("/a",))
    shared = _profile([], [10_000], disks=(disk("/a", None, 7), disk("/b", None, 7)))
    assert advertised_capacity_bps(shared, one_out) == hdd


def test_capacity_lowered_by_heat_throttle_and_health() -> None:
    base = advertised_capacity_bps(_profile(["nvme"], [1000]))
    assert advertised_capacity_bps(_profile(["nvme"], [1000], temp=85)) == base // 2
    assert advertised_capacity_bps(_profile(["nvme"], [1000], temp=95)) == base // 4
    assert advertised_capacity_bps(_profile(["nvme"], [1000], throttled=True)) == base // 2
    failing = Health("failing", ("no disk in service",))
    assert advertised_capacity_bps(_profile(["nvme"], [1000]), failing) == 0
    one_out = Health("degraded", ("x",), disks_out_of_service=("/d0",))
    two_hdd = _profile(["hdd", "hdd"], [10_000])
    assert advertised_capacity_bps(two_hdd, one_out) == int(1_200_000_000 * 0.75)


@given(
    kinds=st.lists(
        st.sampled_from(["hdd", "ssd", "nvme", "sd", "unknown"]), min_size=1, max_size=6
    ),
    nics=st.lists(st.one_of(st.none(), st.integers(1, 100_000)), max_size=4),
    temp=st.one_of(st.none(), st.floats(0, 120)),
    throttled=st.booleans(),
)
def test_capacity_never_exceeds_unthrottled_cool_figure(
    kinds: list[str], nics: list[int | None], temp: float | None, throttled: bool
) -> None:
    cool = advertised_capacity_bps(_profile(kinds, nics))
    hot = advertised_capacity_bps(_profile(kinds, nics, temp=temp, throttled=throttled))
    assert 0 < hot <= cool


def test_a_device_mapper_disk_is_as_fast_as_its_members(tmp_path: Path) -> None:
    """dm/md devices report a flag of their own that says nothing about the disks beneath:
    the kind comes from the members, as disks.py decides the tier."""
    storage = tmp_path / "store"
    storage.mkdir()
    sys_root, proc_root = tmp_path / "sys", tmp_path / "proc"
    ssd = sys_root / "devices/pci0000:00/ata1/block/sda"
    _write(ssd / "queue/rotational", "0\n")
    _write(ssd / "sda2/partition", "2\n")
    dm = sys_root / "devices/virtual/block/dm-0"
    _write(dm / "queue/rotational", "1\n")  # made up: an LVM volume on an SSD
    _write(dm / "size", "1000\n")
    (dm / "slaves").mkdir()
    (dm / "slaves/sda2").symlink_to(ssd / "sda2")
    st_dev = os.stat(storage).st_dev
    link = sys_root / "dev/block" / f"{os.major(st_dev)}:{os.minor(st_dev)}"
    link.parent.mkdir(parents=True)
    link.symlink_to(dm)
    _write(proc_root / "cpuinfo", "processor\t: 0\n")
    (disk,) = probe([storage], HostRoots(sys=sys_root, proc=proc_root), nic_stats={}).disks
    assert disk.device == "dm-0" and disk.kind == "ssd" and disk.rotational is False

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.config import DiskConfig
from appliance.disks import DiskError, detect_tier, measure, open_disks, rotational


def _device(sysfs: Path, rel: str, rotational_flag: str | None, partition: bool = False) -> Path:
    node = sysfs / "devices" / rel
    node.mkdir(parents=True)
    if partition:
        (node / "partition").write_text("1\n")
    elif rotational_flag is not None:
        (node / "queue").mkdir()
        (node / "queue" / "rotational").write_text(rotational_flag + "\n")
    return node


def _link(sysfs: Path, majmin: str, node: Path) -> None:
    links = sysfs / "dev" / "block"
    links.mkdir(parents=True, exist_ok=True)
    # Relative like the kernel's own links, so the tree is valid wherever tmp_path is.
    (links / majmin).symlink_to(os.path.relpath(node, links))


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    nvme = _device(root, "pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1", "0")
    _link(root, "259:0", nvme)
    _link(
        root,
        "259:1",
        _device(root, "pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/nvme0n1p1", None, partition=True),
    )
    sda = _device(root, "pci0000:00/ata1/host0/target0:0:0/0:0:0:0/block/sda", "0")
    _link(root, "8:0", sda)
    sda2 = _device(
        root, "pci0000:00/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda2", None, partition=True
    )
    _link(root, "8:2", sda2)
    sdb = _device(root, "pci0000:00/ata2/host1/target1:0:0/1:0:0:0/block/sdb", "1")
    _link(root, "8:16", sdb)
    sdb1 = _device(
        root, "pci0000:00/ata2/host1/target1:0:0/1:0:0:0/block/sdb/sdb1", None, partition=True
    )
    _link(root, "8:17", sdb1)
    # dm-0 spans the SSD partition and the HDD partition; dm-1 sits on the SSD only. Both claim
    # to be non-rotational themselves, as device-mapper devices often do.
    for name, majmin, members in (("dm-0", "253:0", [sda2, sdb1]), ("dm-1", "253:1", [sda2])):
        dm = _device(root, f"virtual/block/{name}", "0")
        (dm / "slaves").mkdir()
        for member in members:
            (dm / "slaves" / member.name).symlink_to(member)
        _link(root, majmin, dm)
    _link(root, "7:0", _device(root, "virtual/block/loop0", None))  # no queue info at all
    garbage = _device(root, "virtual/block/weird", "maybe")
    _link(root, "7:9", garbage)
    return root


@pytest.mark.parametrize(
    ("majmin", "expected"),
    [
        ("259:0", False),  # NVMe namespace
        ("259:1", False),  # its partition → parent's queue
        ("8:0", False),  # SATA SSD
        ("8:2", False),
        ("8:16", True),  # HDD
        ("8:17", True),  # HDD partition
        ("253:0", True),  # dm over SSD + HDD: as slow as its spinning member
        ("253:1", False),
        ("7:0", None),  # no rotational flag
        ("7:9", None),  # unreadable flag
        ("1:99", None),  # no such device
    ],
)
def test_rotational_flag_from_fixture_sysfs(
    sysfs: Path, majmin: str, expected: bool | None
) -> None:
    major, minor = (int(x) for x in majmin.split(":"))
    assert rotational(major, minor, sysfs) is expected


def test_detect_tier_follows_the_device_under_the_path(sysfs: Path, tmp_path: Path) -> None:
    st = os.stat(tmp_path)
    majmin = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    links = sysfs / "dev" / "block"
    (links / majmin).unlink(missing_ok=True)
    (links / majmin).symlink_to(
        os.path.relpath(
            sysfs / "devices" / "pci0000:00/ata2/host1/target1:0:0/1:0:0:0/block/sdb/sdb1", links
        )
    )
    assert detect_tier(tmp_path, sysfs) == "hdd"
    (links / majmin).unlink()
    (links / majmin).symlink_to(
        os.path.relpath(sysfs / "devices" / "pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1", links)
    )
    assert detect_tier(tmp_path, sysfs) == "ssd"


def test_unknown_device_gets_the_default(tmp_path: Path) -> None:
    empty = tmp_path / "nosys"
    empty.mkdir()
    assert detect_tier(tmp_path, empty) == "hdd"
    assert detect_tier(tmp_path, empty, default="ssd") == "ssd"


def test_loop_device_takes_the_tier_of_its_backing_file(sysfs: Path, tmp_path: Path) -> None:
    backing = tmp_path / "image.img"
    backing.write_bytes(b"\0" * 16)
    loop = sysfs / "devices" / "virtual/block/loop0"
    (loop / "loop").mkdir()
    (loop / "loop" / "backing_file").write_text(f"{backing}\n")
    st = os.stat(backing)
    majmin = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    links = sysfs / "dev" / "block"
    (links / majmin).unlink(missing_ok=True)
    (links / majmin).symlink_to(
        os.path.relpath(
            sysfs / "devices" / "pci0000:00/ata1/host0/target0:0:0/0:0:0:0/block/sda", links
        )
    )
    assert rotational(7, 0, sysfs) is False


def test_open_disks_detects_missing_tier_and_checks_paths(sysfs: Path, tmp_path: Path) -> None:
    disk = tmp_path / "d0"
    disk.mkdir()
    (disk0,) = open_disks([DiskConfig(path=disk, max_bytes=10_000)], sysfs)
    assert disk0.tier == "hdd"  # tmp_path's device is not in the fixture tree → default
    assert disk0.capacity == 10_000 and disk0.id == str(disk.resolve())
    usage = measure(disk0, indexed_bytes=4_000)
    assert usage.used == 4_000 and usage.free_below_high == 9_000 - 4_000
    with pytest.raises(DiskError, match="does not exist"):
        open_disks([DiskConfig(path=tmp_path / "nope")], sysfs)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DiskError, match="not a folder"):
        open_disks([DiskConfig(path=tmp_path / "file")], sysfs)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_disk_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "ro"
    disk.mkdir()
    disk.chmod(0o555)
    with pytest.raises(DiskError, match="not writable"):
        open_disks([DiskConfig(path=disk)])

"""Real small ext4 filesystems on loop devices, for tests of the appliance on disks that die
the way real ones do: EIO on every I/O (EXT4_IOC_SHUTDOWN, a disk off the bus), a read-only
remount (ext4 errors=remount-ro), ENOSPC on a full disk, and a disk that comes back after fsck.

`real_disks` (fixture) makes them under tmp_path and always unmounts (lazily when busy) and
detaches them, even when the test fails. Needs root, util-linux (losetup, mount) and
e2fsprogs (mkfs.ext4, e2fsck); skips with the reason when any is missing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration import daemon_support

# _IOR('X', 125, __u32): the ioctl xfstests' godown uses; flag 2 = EXT4_GOING_FLAGS_NOLOGFLUSH
# (no journal flush: what a disk that fell off the bus leaves behind).
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2
_TOOLS = ("losetup", "mkfs.ext4", "e2fsck", "mount", "umount")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=check)


def unavailable() -> str | None:
    """Why loop filesystems cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "real-disk tests need root (loop devices and mount)"
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return f"real-disk tests need {', '.join(missing)} (Debian: util-linux, e2fsprogs, mount)"
    return None


@dataclass
class LoopDisk:
    """One ext4 image on a loop device, mounted at `mount`."""

    image: Path
    mount: Path
    device: str = ""
    mounted: bool = False
    log: list[str] = field(default_factory=list)

    def attach(self) -> None:
        self.device = _run("losetup", "-f", "--show", str(self.image)).stdout.strip()

    def mount_fs(self, *options: str) -> None:
        opts = ",".join(("errors=remount-ro", *options))
        _run("mount", "-t", "ext4", "-o", opts, self.device, str(self.mount))
        self.mounted = True

    def shutdown(self) -> None:
        """Every I/O on the filesystem fails with EIO from now on, like a disk that fell off
        the bus (open files included)."""
        fd = os.open(self.mount, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flag = EXT4_GOING_FLAGS_NOLOGFLUSH.to_bytes(4, "little")
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, flag)
        finally:
            os.close(fd)

    def remount(self, mode: str) -> None:
        """`ro` or `rw`, in place: what ext4 does itself on errors=remount-ro."""
        _run("mount", "-o", f"remount,{mode}", str(self.mount))

    def unmount(self, lazy: bool = True) -> None:
        """umount; if busy (a daemon's open file) and `lazy`, detach it now (freed when the
        last fd closes), else raise."""
        if not self.mounted:
            return
        result = _run("umount", str(self.mount), check=False)
        if result.returncode != 0:
            if not lazy:
                raise AssertionError(f"umount {self.mount}: {result.stderr.strip()}")
            _run("umount", "-l", str(self.mount), check=False)
        self.mounted = False

    def fsck(self) -> int:
        """e2fsck -fy on the unmounted disk; its exit code (0 clean, 1 errors fixed). The
        device can stay held for a moment after umount returns (udev's probe of the change,
        a shut-down filesystem's last release): "is in use" is retried, for up to 5 s."""
        for _ in range(50):
            result = _run("e2fsck", "-fy", self.device, check=False)
            if "is in use" not in result.stdout + result.stderr:
                break
            time.sleep(0.1)
        self.log.append(result.stdout)
        return result.returncode

    def detach(self) -> None:
        if self.device:
            _run("losetup", "-d", self.device, check=False)
            self.device = ""


MakeDisks = Callable[..., list[LoopDisk]]


@pytest.fixture()
def real_disks(tmp_path: Path) -> Iterator[MakeDisks]:
    """`real_disks(n, mib=16)`: n fresh ext4 filesystems mounted at tmp_path/disk<i>."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    made: list[LoopDisk] = []

    def make(n: int, mib: int = 16) -> list[LoopDisk]:
        disks = []
        for _ in range(n):
            i = len(made)
            image = tmp_path / f"disk{i}.img"
            with image.open("wb") as f:
                f.truncate(mib << 20)
            # No reserved blocks and few inodes: the whole small disk is ours to fill.
            _run("mkfs.ext4", "-q", "-F", "-m", "0", "-N", "512", str(image))
            disk = LoopDisk(image, tmp_path / f"disk{i}")
            disk.mount.mkdir()
            made.append(disk)
            try:
                disk.attach()
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"no loop device could be set up: {exc.stderr.strip()}")
            disk.mount_fs()
            disks.append(disk)
        return disks

    try:
        yield make
    finally:
        for disk in reversed(made):
            disk.unmount()
            disk.detach()


def write_config(tmp: Path, disks: list[LoopDisk], extra: str = "") -> Path:
    """An appliance config over `disks` (one tier), with the index and staging off them."""
    return daemon_support.write_config(
        tmp, extra, workers=2, disks=[d.mount for d in disks], shutdown_timeout_s=5
    )


Spread = tuple[Path, list[str], list[str], dict[str, bytes]]


def spread_over(tmp: Path, disks: list[LoopDisk]) -> Spread:
    """Config over two disks and a title spread over both: (config, on d0, on d1, bodies)."""
    config = write_config(tmp, disks)
    daemon_support.load_spread_title(tmp, config)
    kept, lost = files_on(disks[0], "spread"), files_on(disks[1], "spread")
    assert kept and lost, "the title must be spread over both disks"
    bodies = {rel: (d.mount / "titles" / "spread" / rel).read_bytes()
              for d, rels in zip(disks, (kept, lost), strict=True) for rel in rels}  # fmt: skip
    return config, kept, lost, bodies


def files_on(disk: LoopDisk, title_id: str) -> list[str]:
    top = disk.mount / "titles" / title_id
    return sorted(p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file())

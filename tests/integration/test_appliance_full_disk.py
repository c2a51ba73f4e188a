"""A full disk is not a dead one: on real ext4 filesystems (loop devices), a disk someone
else fills to ENOSPC keeps serving its titles (health degraded, nothing new written there)
and `appliance rm` frees it. A title with files on a disk that is really dead is removed
from service at once and its files there are deleted when the disk is back."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import httpx

from tests.conftest import run_cli
from tests.integration.daemon_support import poll, start_daemon
from tests.integration.realdisk_support import LoopDisk, MakeDisks, real_disks, spread_over

__all__ = ["real_disks"]  # the fixture, imported for pytest to find


def _fill_up(disk: LoopDisk) -> Path:
    """Write a file on `disk` until the filesystem has not one byte left: big writes, then
    smaller ones for the last partial block (bounded)."""
    junk = disk.mount / "other-data"
    fd = os.open(junk, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (64 << 10, 4096, 1):
            try:
                for _ in range(10_000):  # 625 MiB at most at first; the disks are 16 MiB
                    os.write(fd, b"\0" * size)
                raise AssertionError(f"{disk.mount} never filled up")
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    assert os.statvfs(disk.mount).f_bavail == 0
    return junk


def _listing(config: Path) -> dict[str, dict[str, object]]:
    ls = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    return {t["id"]: t for t in json.loads(ls.stdout)}


def test_a_full_disk_keeps_serving_and_rm_frees_it(tmp_path: Path, real_disks: MakeDisks) -> None:
    d0, d1 = real_disks(2)
    config, kept, lost, bodies = spread_over(tmp_path, [d0, d1])
    server = start_daemon(config)
    try:
        junk = _fill_up(d1)
        doc = poll(server, lambda d: any(" full (" in r for r in d["health"]["reasons"]), 5)
        assert doc is not None, "health did not notice the full disk"
        assert doc["health"]["disks_out_of_service"] == []  # its files keep serving
        assert doc["health"]["state"] == "degraded"
        for rel in [*kept, *lost]:
            reply = httpx.get(f"{server.url}/titles/spread/{rel}", timeout=5)
            assert reply.status_code == 200 and reply.content == bodies[rel], rel

        rm = run_cli(["appliance", "rm", "--config", str(config), "--title", "spread"])
        assert rm.returncode == 0 and rm.stdout.strip() == "removed spread", rm.stderr
        assert f"disk {d1.mount} is full" in rm.stderr and "out of service" not in rm.stderr
        for disk in (d0, d1):
            assert not (disk.mount / "titles" / "spread").exists(), disk.mount
        assert _listing(config) == {}
        assert httpx.get(f"{server.url}/titles/spread/{lost[0]}", timeout=5).status_code == 404

        junk.unlink()  # room again: it takes writes again
        doc = poll(server, lambda d: not any(str(d1.mount) in r for r in d["health"]["reasons"]), 5)
        assert doc is not None, "the disk with room again is still reported"
    finally:
        server.stop()


def test_rm_beside_a_dead_disk_says_so_and_finishes_when_it_is_back(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    d0, d1 = real_disks(2)
    config, _kept, lost, _bodies = spread_over(tmp_path, [d0, d1])
    d1.shutdown()  # every I/O fails with EIO: nothing there can be deleted now
    rm = run_cli(["appliance", "rm", "--config", str(config), "--title", "spread", "--json"])
    assert rm.returncode == 0, rm.stderr
    assert json.loads(rm.stdout) == {
        "id": "spread",
        "removed": False,
        "pending": {str(d1.mount): len(lost)},
    }
    assert not (d0.mount / "titles" / "spread").exists()  # the disk in service is freed now
    listed = _listing(config)["spread"]
    assert listed["state"] == "removing" and listed["files"] == len(lost)
    rm = run_cli(["appliance", "rm", "--config", str(config), "--title", "spread"])
    assert rm.returncode == 0, rm.stderr
    assert f"{len(lost)} files on {d1.mount} (out of service) cannot be deleted now" in rm.stdout

    d1.unmount(lazy=False)
    assert d1.fsck() in (0, 1), d1.log[-1]
    d1.mount_fs()
    assert (d1.mount / "titles" / "spread").is_dir()  # still there until a reconcile
    done = run_cli(["appliance", "reconcile", "--config", str(config)], check=True)
    assert "spread: removed an interrupted removal" in done.stdout
    ls = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    assert json.loads(ls.stdout) == []
    assert not (d1.mount / "titles" / "spread").exists()

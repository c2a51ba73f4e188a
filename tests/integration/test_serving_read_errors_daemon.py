"""Reads that fail while serving count against their disk, under a real daemon on loopback:
each player gets a 500 (its cue to move to its next URL), and the disk's errors add up as a
failing write's do (health.py WriteLimits): the second stops new titles there, the fifth
takes the disk out, and the box keeps serving what its other disk holds. No FUSE: a
`sitecustomize` seam in the worker fails the read-in of uncached bytes under one disk
(residency.read_in), as a dying disk fails the read; the files are evicted from the page
cache before each request so that the worker must read them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.integration.daemon_support import poll, seam_env, status, two_tier_config
from tests.integration.serve_support import make_title, start

SEAM = """
import errno, os
_under = os.environ.get("EDGEFLIX_TEST_READ_EIO_UNDER")
if _under:
    from edgeflix.http import residency

    _real = residency.read_in

    def read_in(fd, start, length, buf):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(_under + os.sep):
            raise OSError(errno.EIO, "Input/output error")
        _real(fd, start, length, buf)

    residency.read_in = read_in
"""
BOUND_S = 30


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def get_uncached(url: str, path: Path, tries: int = 10) -> httpx.Response:
    """GET `url` with `path` evicted from the page cache first, and again while the answer is
    a 200 from the cache: a page can come back before the request (the start-up check, a
    read-ahead), and fadvise is only advice. The seam fails only reads from the disk. Each
    try waits out the worker's residency epoch (edgeflix/http/server.py _VERIFY_S, 0.1 s): a
    file found cached is taken as cached for the rest of it, and sendfile reads it in the
    kernel, past the seam."""
    for _ in range(tries):
        evict(path)
        time.sleep(0.25)
        reply = httpx.get(url, timeout=10)
        if reply.status_code != 200:
            break
    return reply


def _disk(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in doc["metrics"]["disks"] if d["path"] == str(path))
    return found


def test_failed_serving_reads_take_the_disk_out(tmp_path: Path, small_fs: Path) -> None:
    # The failing disk on this file system, the healthy one a tmpfs of its own: errors are
    # told apart by file system (two folders of one would share their counts).
    hdd = tmp_path / "hdd"
    ssd = small_fs
    config = two_tier_config(tmp_path, ssd, hdd)
    src = make_title(tmp_path / "src" / "film", "film")
    run_cli(["appliance", "load", "--config", str(config), "--title", "film", "--from",
             str(src)], check=True)  # fmt: skip
    stored = hdd / "titles" / "film" / "v0" / "seg1.m4s"
    assert stored.exists(), "a new title goes to the hdd tier"
    probe = os.open(stored, os.O_RDONLY)
    os.fsync(probe)
    os.close(probe)
    evict(stored)
    if os.stat(hdd).st_dev == os.stat(ssd).st_dev:
        pytest.skip("the tmpfs shares the test folder's file system")
    env = seam_env(tmp_path, SEAM, EDGEFLIX_TEST_READ_EIO_UNDER=str(hdd.resolve()))
    log = tmp_path / "daemon.log"
    with log.open("wb") as sink:
        daemon = start(["appliance", "run", "--config", str(config)], ("listening", "admin"),
                       env, stderr=sink)  # fmt: skip
    hdd_id = hdd.resolve()
    try:
        # The start-up check reads every stored file (into the page cache): let it finish.
        checked = poll(daemon, lambda d: d["daemon"]["startup_check"]["state"] == "done", BOUND_S)
        assert checked is not None
        url = daemon.url + "/titles/film/v0/seg1.m4s"
        assert get_uncached(url, stored).status_code == 500
        counted = poll(daemon, lambda d: _disk(d, hdd_id)["write_errors"] == 1, BOUND_S)
        assert counted is not None, "the read error was not counted against the disk"
        # The bad file is dropped: players get 404 and move on, the fill fetches it again;
        # asked for again meanwhile, it counts once.
        deadline = time.monotonic() + BOUND_S
        while httpx.get(url, timeout=10).status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(url, timeout=10).status_code == 404
        assert not stored.exists()
        listed = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
        assert '"incomplete"' in listed.stdout
        time.sleep(3.5)  # a health sample later: still one
        assert _disk(status(daemon), hdd_id)["write_errors"] == 1
        stored = hdd / "titles" / "film" / "v0" / "init.mp4"
        url = daemon.url + "/titles/film/v0/init.mp4"
        assert get_uncached(url, stored).status_code == 500
        counted = poll(daemon, lambda d: _disk(d, hdd_id)["write_errors"] == 2, BOUND_S)
        assert counted is not None, "a second bad file was not counted"
        held_back = poll(daemon, lambda d: not _disk(d, hdd_id)["writable"], BOUND_S)
        assert held_back is not None and held_back["health"]["state"] == "degraded"
        assert any("serving reads failed" in r for r in held_back["health"]["reasons"])
        for name in ("poster.jpg", "master.m3u8", "manifest.mpd"):  # three more bad files
            # 500, or 404 once the disk is out
            get_uncached(f"{daemon.url}/titles/film/{name}", hdd / "titles" / "film" / name)
        out = poll(daemon, lambda d: not _disk(d, hdd_id)["in_service"], BOUND_S)
        assert out is not None, "five bad files did not take the disk out"
        assert httpx.get(url, timeout=10).status_code == 404  # out: the player moves on
    finally:
        assert daemon.stop() == 0
    assert "event=disk.read_errors" in log.read_text()

"""The appliance daemon on real ext4 filesystems (loop devices) that die as real disks do:
every I/O failing with EIO under load and the disk coming back after fsck, a read-only
remount, ENOSPC, a start with a disk already dead, and the CLI beside a dead disk
(realdisk_support.py makes the disks)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from appliance import diskclaim
from tests.conftest import run_cli
from tests.integration.daemon_support import poll, start_daemon, status
from tests.integration.realdisk_support import (
    LoopDisk,
    MakeDisks,
    files_on,
    real_disks,
    spread_over,
    write_config,
)
from tests.integration.serve_support import Server, make_title, start

__all__ = ["real_disks"]  # the fixture, imported for pytest to find


@dataclass(frozen=True)
class Outcome:
    rel: str
    at: float
    status: int | None  # None: the connection failed or was closed mid-response
    exact: bool
    took: float
    error: str = ""


def _hammer(
    server: Server, rels: list[str], bodies: dict[str, bytes], stop: threading.Event,
    out: list[Outcome],
) -> None:  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for i in range(20_000):
            if stop.is_set():
                return
            rel = rels[i % len(rels)]
            t0 = time.monotonic()
            try:
                reply = client.get(f"/titles/spread/{rel}")
            except httpx.HTTPError as exc:
                out.append(Outcome(rel, t0, None, False, time.monotonic() - t0, repr(exc)))
                continue
            exact = reply.status_code == 200 and reply.content == bodies[rel]
            out.append(Outcome(rel, t0, reply.status_code, exact, time.monotonic() - t0))


def _metric(server: Server, name: str) -> float:
    text = httpx.get(server.urls["admin"] + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))  # fmt: skip


def test_disk_dies_with_eio_under_load_then_comes_back(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    d0, d1 = real_disks(2)
    config, kept, lost, bodies = spread_over(tmp_path, [d0, d1])
    server = start_daemon(config)
    try:
        stop = threading.Event()
        outcomes: list[Outcome] = []
        every = [*lost, *kept]
        threads = [
            threading.Thread(
                target=_hammer, args=(server, every[k:] + every[:k], bodies, stop, outcomes)
            )
            for k in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)
        died = time.monotonic()
        d1.shutdown()  # from here every I/O on d1 fails with EIO, open files included
        doc = poll(server, lambda d: str(d1.mount) in d["health"]["disks_out_of_service"], 5)
        assert doc is not None, "health did not take the dead disk out within 5 s"
        assert any(str(d1.mount) in r and "io_error" in r for r in doc["health"]["reasons"])
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)

        # The live disk served every request byte-exact, before and after the death.
        on_d0 = [o for o in outcomes if o.rel in kept]
        assert on_d0 and all(o.exact for o in on_d0), {o.error or o.status for o in on_d0}
        # The dead disk's files answered quickly: an error status (500 while opening them
        # fails with EIO, 404 once health took the disk out of the index), or (a response
        # already started when the disk died) a closed connection, never a wait into the
        # timeout.
        after = [o for o in outcomes if o.rel in lost and o.at > died]
        assert after and max(o.took for o in after) < 2.0
        assert all(o.status in (None, 404, 500) for o in after if not o.exact)
        assert not any("Timeout" in o.error for o in outcomes)
        # Once a worker saw EIO on a file it stops reusing that fd: a cut connection at most
        # once per file, worker and in-flight client, then error statuses.
        cut = [o for o in after if o.status is None]
        assert len(cut) <= len(lost) * 2 + 4, f"{len(cut)} responses cut"
        assert sum(o.status in (404, 500) for o in after) > len(cut)
        assert _metric(server, "edgeflix_appliance_sendfile_errors_total") >= 1
        assert status(server)["daemon"]["workers"] == 2  # no worker crashed
        assert httpx.get(server.urls["admin"] + "/healthz", timeout=5).status_code == 200

        # Taken out, the daemon holds nothing open there: a plain umount works, fsck, mount.
        d1.unmount(lazy=False)
        assert d1.fsck() in (0, 1), d1.log[-1]
        d1.mount_fs()
        doc = poll(server, lambda d: d["health"]["disks_out_of_service"] == [], timeout=20)
        assert doc is not None, "the disk back from fsck was not re-verified into service"
        with httpx.Client(base_url=server.url, timeout=5) as client:
            for _ in range(3):  # both workers, cached or not
                for rel in lost:
                    reply = client.get(f"/titles/spread/{rel}")
                    assert reply.status_code == 200 and reply.content == bodies[rel], rel
    finally:
        server.stop()


def test_start_with_a_disk_already_dead_then_cli(tmp_path: Path, real_disks: MakeDisks) -> None:
    d0, d1 = real_disks(2)
    config, kept, lost, bodies = spread_over(tmp_path, [d0, d1])
    d1.shutdown()
    server = start_daemon(config)
    try:
        doc = status(server)
        assert doc["health"]["disks_out_of_service"] == [str(d1.mount)]
        assert doc["health"]["state"] == "degraded"
        for rel in kept:
            reply = httpx.get(f"{server.url}/titles/spread/{rel}", timeout=5)
            assert reply.status_code == 200 and reply.content == bodies[rel]
        for rel in lost:
            assert httpx.get(f"{server.url}/titles/spread/{rel}", timeout=5).status_code == 404
    finally:
        server.stop()
    # The CLI beside the dead disk: one warning line, no traceback, the rest checked.
    ls = run_cli(["appliance", "ls", "--config", str(config), "--json"])
    assert ls.returncode == 0, ls.stderr
    assert [t["id"] for t in json.loads(ls.stdout)] == ["spread"]
    assert f"disk {d1.mount} is out of service (io_error" in ls.stderr
    verify = run_cli(["appliance", "verify", "--config", str(config)])
    assert verify.returncode == 1 and "Traceback" not in verify.stderr + verify.stdout
    assert f"disk {d1.mount} is out of service: {len(lost)} files not checked" in verify.stdout
    assert f"checked {len(kept)} files" in verify.stdout
    source = make_title(tmp_path / "src" / "two", "two")
    load = run_cli(["appliance", "load", "--config", str(config), "--title", "two", "--from",
                    str(source)])  # fmt: skip
    assert load.returncode == 0, load.stderr
    assert files_on(d0, "two") and not (d1.mount / "titles" / "two").exists()


def test_read_only_disk_keeps_serving_and_writes_go_elsewhere(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    d0, d1 = real_disks(2)
    config, kept, lost, bodies = spread_over(tmp_path, [d0, d1])
    server = start_daemon(config)
    try:
        d1.remount("ro")
        doc = poll(server, lambda d: any("read-only" in r for r in d["health"]["reasons"]), 5)
        assert doc is not None, "health did not notice the read-only disk"
        assert doc["health"]["disks_out_of_service"] == []  # reads keep serving
        for rel in [*kept, *lost]:
            reply = httpx.get(f"{server.url}/titles/spread/{rel}", timeout=5)
            assert reply.status_code == 200 and reply.content == bodies[rel], rel
        source = make_title(tmp_path / "src" / "two", "two")
        load = run_cli(["appliance", "load", "--config", str(config), "--title", "two",
                        "--from", str(source)])  # fmt: skip
        assert load.returncode == 0, load.stderr
        assert files_on(d0, "two") and not (d1.mount / "titles" / "two").exists()
        assert httpx.get(f"{server.url}/titles/two/v0/seg1.m4s", timeout=5).status_code == 200
        # No writable disk left: a clear one-line refusal, nothing half-written.
        d0.remount("ro")
        source = make_title(tmp_path / "src" / "three", "three")
        load = run_cli(["appliance", "load", "--config", str(config), "--title", "three",
                        "--from", str(source)])  # fmt: skip
        assert load.returncode == 1
        assert "error: no writable disk of the ssd tier is in service" in load.stderr
        assert "Traceback" not in load.stderr
        d0.remount("rw")
        d1.remount("rw")
        doc = poll(server, lambda d: d["health"]["reasons"] == [] or d["health"]["state"] == "ok"
                   or not any("read-only" in r for r in d["health"]["reasons"]), 10)  # fmt: skip
        assert doc is not None, "health still reports read-only disks after remount rw"
    finally:
        server.stop()


def test_idle_daemon_lets_go_of_a_dead_disk(tmp_path: Path, real_disks: MakeDisks) -> None:
    """Files opened before the disk died and not asked for since: once the disk is out,
    the workers close them within a sweep, so the operator's plain umount works."""
    d0, d1 = real_disks(2)
    config, _kept, lost, bodies = spread_over(tmp_path, [d0, d1])
    server = start_daemon(config)
    try:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            for _ in range(4):  # new connections each round: both workers open them
                for rel in lost:
                    reply = client.get(f"/titles/spread/{rel}", headers={"Connection": "close"})
                    assert reply.content == bodies[rel]
        d1.shutdown()
        doc = poll(server, lambda d: str(d1.mount) in d["health"]["disks_out_of_service"], 5)
        assert doc is not None, "health did not take the dead disk out within 5 s"
        time.sleep(1.5)  # one sweep of each worker
        d1.unmount(lazy=False)
    finally:
        server.stop()


def _title_of(folder: Path, title_id: str, files: dict[str, int]) -> Path:
    (folder / "v0").mkdir(parents=True)
    for name, size in files.items():
        (folder / "v0" / name).write_bytes(os.urandom(size))
    return make_title(folder, title_id)


def test_enospc_during_load_leaves_nothing_half_written(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    (disk,) = real_disks(1, mib=8)
    config = write_config(tmp_path, [disk])
    # Watermarks at 100%: the fit check passes and the disk itself runs out mid-load.
    text = config.read_text().replace('tier = "ssd" }', 'tier = "ssd", high_watermark = 1.0 }')
    config.write_text(text)
    kept = _title_of(tmp_path / "src" / "kept", "kept", {"a.m4s": 50_000})
    run_cli(["appliance", "load", "--config", str(config), "--title", "kept", "--from",
             str(kept)], check=True)  # fmt: skip
    # Out of inodes (the disk has ~500) half-way through a title of 700 small files ...
    many = _title_of(tmp_path / "src" / "many", "many", {f"s{i:03d}.m4s": 10 for i in range(700)})
    # ... and out of blocks: the files fit the free space, their folders and metadata do not.
    vfs = os.statvfs(disk.mount)
    big = _title_of(tmp_path / "src" / "big", "big", {"big.m4s": vfs.f_bavail * vfs.f_frsize
                                                      - 305_000})  # fmt: skip
    for title_id, source in (("many", many), ("big", big)):
        load = run_cli(["appliance", "load", "--config", str(config), "--title", title_id,
                        "--from", str(source)])  # fmt: skip
        assert load.returncode == 1, load.stdout
        errors = [line for line in load.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0], load.stderr
        assert "Traceback" not in load.stderr
        assert not (disk.mount / "titles" / title_id).exists()  # nothing half-written
    listing = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    assert [(t["id"], t["state"]) for t in json.loads(listing.stdout)] == [("kept", "ready")]
    verify = run_cli(["appliance", "verify", "--config", str(config)])
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _fill(
    tmp: Path, disk: LoopDisk, files: dict[str, int]
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`appliance fill --now` of title `film` (these files) from a real origin onto `disk`."""
    store = tmp / "origin"
    _title_of(store / "titles" / "film", "film", files)
    origin = start(["origin", "serve", "--store", str(store), "--listen", "127.0.0.1:0"],
                   ("listening",))  # fmt: skip
    try:
        config = write_config(tmp, [disk])
        fill = run_cli(["appliance", "fill", "--config", str(config), "--from", origin.url,
                        "--title", "film", "--now"], timeout=120)  # fmt: skip
    finally:
        origin.stop()
    return config, fill


def test_fill_of_a_title_that_cannot_fit_is_refused_before_downloading(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    (disk,) = real_disks(1, mib=8)
    config, fill = _fill(tmp_path, disk, {f"p{i}.m4s": 1_400_000 for i in range(6)})
    assert fill.returncode == 1
    errors = [line for line in fill.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "title film does not fit on the ssd tier" in errors[0], fill.stderr
    assert "Traceback" not in fill.stderr
    # Refused from files.json alone: not one segment byte was staged on the disk.
    assert [p for p in disk.mount.rglob("*.m4s*") if p.is_file()] == []
    listing = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    assert json.loads(listing.stdout) == []


def test_enospc_during_fill_is_one_line_and_frees_the_disk(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    (disk,) = real_disks(1, mib=8)
    # Few bytes, many files: the room check passes, the disk's ~500 inodes run out mid-fill.
    config, fill = _fill(tmp_path, disk, {f"s{i:03d}.m4s": 10 for i in range(700)})
    assert fill.returncode == 1
    assert "error: fill failed for film: title film: cannot write its files on this " \
        "appliance: No space left on device" in fill.stderr  # fmt: skip
    assert "Traceback" not in fill.stdout + fill.stderr
    assert "never retrieved" not in fill.stderr  # the other streams' errors are moot, not logged
    assert not (disk.mount / "titles" / "film").exists()
    staged = [p for p in disk.mount.rglob("*") if p.is_file() and not diskclaim.is_marker(p.name)]
    assert staged == [], "a title that cannot fit must not keep the disk full"
    listing = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    assert json.loads(listing.stdout) == []

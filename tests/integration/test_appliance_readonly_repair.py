"""Reconcile and removal beside a read-only disk (ext4 remounted itself read-only): what
cannot be deleted there is left for later, never a failed `ls`, a daemon that will not start
or a title half-removed (realdisk_support.py makes the disks)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx

from tests.conftest import run_cli
from tests.integration.daemon_support import load_spread_title, start_daemon
from tests.integration.realdisk_support import (
    MakeDisks,
    files_on,
    real_disks,
    spread_over,
)

__all__ = ["real_disks"]  # the fixture, imported for pytest to find


def _ls(config: Path) -> tuple[list[dict[str, object]], str]:
    ls = run_cli(["appliance", "ls", "--config", str(config), "--json"])
    assert ls.returncode == 0, ls.stderr
    assert "Traceback" not in ls.stderr
    return json.loads(ls.stdout), ls.stderr


def test_stray_on_a_read_only_disk_is_left_and_the_rest_still_serves(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    d0, d1 = real_disks(2)
    config, *_ = spread_over(tmp_path, [d0, d1])
    stray = d1.mount / "titles" / "spread" / "left-by-a-crash.m4s"
    stray.write_bytes(b"x" * 100)
    d1.remount("ro")
    titles, _ = _ls(config)
    assert [(t["id"], t["state"]) for t in titles] == [("spread", "ready")]
    assert stray.exists()  # nothing can be deleted there; swept once it is writable
    server = start_daemon(config)
    try:
        for rel in files_on(d0, "spread") + [r for r in files_on(d1, "spread") if r != stray.name]:
            reply = httpx.get(f"{server.url}/titles/spread/{rel}", timeout=5)
            assert reply.status_code == 200, rel
    finally:
        server.stop()
    d1.remount("rw")
    _ls(config)
    assert not stray.exists()


def test_rm_of_a_title_on_a_read_only_disk_is_refused_before_anything_changes(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    d0, d1 = real_disks(2)
    config, *_ = spread_over(tmp_path, [d0, d1])
    before = files_on(d0, "spread"), files_on(d1, "spread")
    d1.remount("ro")
    rm = run_cli(["appliance", "rm", "--config", str(config), "--title", "spread"])
    assert rm.returncode == 1
    errors = [line for line in rm.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "read-only" in errors[0] and str(d1.mount) in errors[0], rm.stderr
    assert (files_on(d0, "spread"), files_on(d1, "spread")) == before  # nothing deleted
    titles, _ = _ls(config)
    assert [(t["id"], t["state"]) for t in titles] == [("spread", "ready")]


def test_an_interrupted_removal_on_a_read_only_disk_does_not_stop_ls_or_the_daemon(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    d0, d1 = real_disks(2)
    config, *_ = spread_over(tmp_path, [d0, d1])
    load_spread_title(tmp_path, config, "other")
    # An rm killed after it marked the title (store.purge's first step), then the disk went
    # read-only: the removal cannot be finished until it is writable again.
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:
        conn.execute("UPDATE titles SET state = 'removing' WHERE id = 'spread'")
    conn.close()
    d1.remount("ro")
    titles, stderr = _ls(config)
    assert [t["id"] for t in titles if t["state"] == "ready"] == ["other"]
    assert "cannot finish an interrupted removal" in stderr
    server = start_daemon(config)
    try:
        for rel in files_on(d0, "other") + files_on(d1, "other"):
            assert httpx.get(f"{server.url}/titles/other/{rel}", timeout=5).status_code == 200
    finally:
        server.stop()
    d1.remount("rw")
    titles, _ = _ls(config)
    assert [t["id"] for t in titles] == ["other"]
    assert files_on(d0, "spread") == files_on(d1, "spread") == []

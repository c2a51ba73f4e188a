"""Reconcile and removal beside a read-only disk (ext4 remounted itself read-only): what
cannot be deleted there is left for later, never a failed reconcile, a daemon that will not start
or a title half-removed (realdisk_support.py makes the disks)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli
from tests.integration.daemon_support import load_spread_title, start_daemon, write_config
from tests.integration.realdisk_support import (
    MakeDisks,
    files_on,
    real_disks,
    spread_over,
    unavailable,
)
from tests.integration.serve_support import make_title

__all__ = ["real_disks"]  # the fixture, imported for pytest to find


def _ls(config: Path) -> tuple[list[dict[str, object]], str]:
    ls = run_cli(["appliance", "ls", "--config", str(config), "--json"])
    assert ls.returncode == 0, ls.stderr
    assert "Traceback" not in ls.stderr
    return json.loads(ls.stdout), ls.stderr


def _reconcile(config: Path) -> str:
    """`appliance reconcile` (what the daemon does at start): its findings."""
    done = run_cli(["appliance", "reconcile", "--config", str(config)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def test_stray_on_a_read_only_disk_is_left_and_the_rest_still_serves(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    d0, d1 = real_disks(2)
    config, *_ = spread_over(tmp_path, [d0, d1])
    stray = d1.mount / "titles" / "spread" / "left-by-a-crash.m4s"
    stray.write_bytes(b"x" * 100)
    d1.remount("ro")
    _reconcile(config)
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
    assert "left-by-a-crash.m4s: removed file not in the index" in _reconcile(config)
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
    assert "cannot finish an interrupted removal" in _reconcile(config)
    titles, _ = _ls(config)
    assert [t["id"] for t in titles if t["state"] == "ready"] == ["other"]
    server = start_daemon(config)
    try:
        for rel in files_on(d0, "other") + files_on(d1, "other"):
            assert httpx.get(f"{server.url}/titles/other/{rel}", timeout=5).status_code == 200
    finally:
        server.stop()
    d1.remount("rw")
    assert "spread: removed an interrupted removal" in _reconcile(config)
    titles, _ = _ls(config)
    assert [t["id"] for t in titles] == ["other"]
    assert files_on(d0, "spread") == files_on(d1, "spread") == []


def test_a_read_only_titles_folder_counts_as_a_read_only_disk(tmp_path: Path) -> None:
    """Read-only where the disk's root does not show it: a read-only bind mount over its
    titles folder (or, for a service user, permissions). `rm` used to take the title out
    of service, then fail half-way, and loads kept placing files there and failing."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    config = write_config(tmp_path)
    load_spread_title(tmp_path, config)
    titles = tmp_path / "d1" / "titles"
    before = sorted(p.name for p in (titles / "spread").rglob("*"))
    subprocess.run(["mount", "--bind", str(titles), str(titles)], check=True, timeout=30)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(titles)], check=True, timeout=30)
        rm = run_cli(["appliance", "rm", "--config", str(config), "--title", "spread"])
        assert rm.returncode == 1 and "read-only" in rm.stderr, rm.stderr
        assert sorted(p.name for p in (titles / "spread").rglob("*")) == before
        src = make_title(tmp_path / "src" / "fresh", "fresh")
        load = run_cli(["appliance", "load", "--config", str(config), "--title", "fresh",
                        "--from", str(src)])  # fmt: skip
        assert load.returncode == 0, load.stderr
        assert not (titles / "fresh").exists()  # every file went to d0
        listed, _ = _ls(config)
        assert {(t["id"], t["state"]) for t in listed} == {("spread", "ready"), ("fresh", "ready")}
    finally:
        subprocess.run(["umount", str(titles)], check=False, timeout=30)

"""Signals that used to leave a mess, on real processes: an appliance daemon killed outright
left its run folder (token secrets included) in the temporary folder, one more per crash;
`origin serve` died on SIGHUP, cutting every response in flight."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil

from tests.integration.daemon_support import write_config
from tests.integration.serve_support import Server, make_title, start


def _keys_files(top: Path) -> list[Path]:
    return sorted(top.rglob("keys.json"))


def test_a_daemon_killed_outright_leaves_no_run_folder_behind(tmp_path: Path) -> None:
    """SIGKILL the supervisor, start again: the new daemon clears the old run folder (it sits
    at a fixed place beside the index, cleared under the daemon lock); a clean stop then
    leaves none at all."""
    config = write_config(tmp_path, workers=1)
    temp = tmp_path / "tmp"  # where tempfile made run folders (TMPDIR is honoured)
    temp.mkdir()
    env = {"TMPDIR": str(temp)}
    args = ["appliance", "run", "--config", str(config)]
    first = start(args, ("listening", "admin"), env)
    workers = psutil.Process(first.proc.pid).children()
    assert len(_keys_files(tmp_path)) == 1
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    psutil.wait_procs(workers, timeout=20)  # they drain and go (PR_SET_PDEATHSIG)

    second = start(args, ("listening", "admin"), env)
    try:
        kept = _keys_files(tmp_path)
        assert len(kept) == 1, kept  # the running daemon's only
        assert oct(kept[0].parent.stat().st_mode & 0o777) == "0o700"
        assert not list(temp.glob("edgeflix-appliance-*"))
    finally:
        assert second.stop() == 0
    assert _keys_files(tmp_path) == []


def test_origin_serve_lives_through_sighup(tmp_path: Path) -> None:
    """SIGHUP used to end `origin serve` on the spot (exit -1); it has nothing to reload, so
    it says so in one line and goes on serving until SIGTERM drains it."""
    store = tmp_path / "store"
    make_title(store / "titles" / "bunny", "bunny")
    log = tmp_path / "origin.log"
    with log.open("wb") as fh:
        server: Server = start(["origin", "serve", "--store", str(store), "--listen",
                                "127.0.0.1:0"], ("listening",), stderr=fh)  # fmt: skip
    try:
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload not supported" not in log.read_text():
            assert server.proc.poll() is None, "SIGHUP ended the server"
            assert time.monotonic() < deadline, "no word on the SIGHUP"
            time.sleep(0.05)
        reply = httpx.get(server.url + "/titles/bunny/master.m3u8", timeout=10)
        assert reply.status_code == 200
        assert server.proc.poll() is None
    finally:
        code = server.stop()
    assert code == 0
    assert log.read_text().count("reload not supported") == 1

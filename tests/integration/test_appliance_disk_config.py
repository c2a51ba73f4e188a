"""[storage] disks edited between two runs of the real daemon: a disk's tier relabelled (the
mover must not "move" titles onto the disk they are on, deleting them), a disk taken out of
the config (its files must stop serving, and serve again once it is back), and what the
start-up log says about it (once, summarised, not a line per file)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from appliance.safefiles import UNLINK_GRACE_S
from tests.appliance.storage_fixtures import make_title
from tests.integration.daemon_support import poll
from tests.integration.serve_support import Server, start
from tests.integration.test_appliance_storage_audit import write_config as audit_config
from tests.integration.test_appliance_store import cli

SPREAD = [9_000] * 16  # enough files that rendezvous hashing puts some on every disk


def write_config(tmp: Path, disks: Sequence[tuple[str, str]], extra: str = "") -> Path:
    """An appliance config with these (folder name under `tmp`, tier) disks."""
    return audit_config(tmp, [(tmp / name, tier) for name, tier in disks], extra)


def load(config: Path, tmp: Path, *titles: str) -> None:
    for title_id in titles:
        src = make_title(tmp / "src", title_id, sizes=SPREAD)
        code, _, err = cli("load", "--config", str(config), "--title", title_id, "--from", str(src))
        assert code == 0, err


def ls(config: Path) -> dict[str, dict[str, object]]:
    code, out, err = cli("ls", "--config", str(config), "--json")
    assert code == 0, err
    return {t["id"]: t for t in json.loads(out)}


def files_of(tmp: Path, disk: str, title_id: str) -> dict[str, bytes]:
    top = tmp / disk / "titles" / title_id
    return {p.relative_to(top).as_posix(): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def source(tmp: Path, title_id: str) -> dict[str, bytes]:
    top = tmp / "src" / title_id
    return {p.relative_to(top).as_posix(): p.read_bytes() for p in top.rglob("*") if p.is_file()}


@pytest.fixture
def run_daemon() -> Iterator[Callable[[Path, Path], Server]]:
    """Start the daemon on a config, its log in a file; every one started is stopped."""
    started: list[Server] = []

    def run(config: Path, log: Path) -> Server:
        with log.open("wb") as out:
            server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"),
                           stderr=out)  # fmt: skip
        started.append(server)
        # What these tests look at is the start's: its check of the disks runs once serving.
        checked = poll(server, lambda doc: doc["daemon"]["startup_check"]["state"] == "done", 30)
        assert checked is not None, "the start-up check did not end"
        return server

    yield run
    for server in started:
        server.stop()


def wait_for(log: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return True
        time.sleep(0.1)
    return False


def test_a_relabelled_disk_keeps_its_titles_through_the_mover(
    tmp_path: Path, run_daemon: Callable[[Path, Path], Server]
) -> None:
    # The reviewer's case: d0 loaded as ssd, then configured hdd beside a new ssd d1. The
    # mover "moved" every cold title from ssd to hdd, i.e. onto d0 itself, and deleted it.
    load(write_config(tmp_path, [("d0", "ssd")]), tmp_path, "movie", "other")
    config = write_config(tmp_path, [("d0", "hdd"), ("d1", "ssd")], "move_interval_s = 0.3")
    log = tmp_path / "daemon.log"
    server = run_daemon(config, log)
    if wait_for(log, "title.moved", 3):  # ten mover rounds: there is nothing to move
        time.sleep(UNLINK_GRACE_S + 1)  # a move drops the old copies after its grace
    for title_id in ("movie", "other"):
        assert files_of(tmp_path, "d0", title_id) == source(tmp_path, title_id)
        reply = httpx.get(f"{server.url}/titles/{title_id}/v0/seg0000.m4s", timeout=5)
        assert reply.status_code == 200
    server.stop()
    said = [line for line in log.read_text().splitlines() if "storage.findings" in line]
    assert len(said) == 1 and "relabelled from the ssd tier to hdd" in said[0], said
    assert {t: (v["state"], v["tier"]) for t, v in ls(config).items()} == {
        "movie": ("ready", "hdd"),
        "other": ("ready", "hdd"),
    }
    code, out, err = cli("verify", "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["problems"] == [], out + err


def test_a_disk_taken_out_of_the_config_stops_serving_until_it_is_back(
    tmp_path: Path, run_daemon: Callable[[Path, Path], Server]
) -> None:
    both = [("d0", "ssd"), ("d1", "ssd")]
    load(write_config(tmp_path, both), tmp_path, "movie")
    on_d1 = sorted(files_of(tmp_path, "d1", "movie"))
    on_d0 = sorted(files_of(tmp_path, "d0", "movie"))
    assert on_d1 and on_d0

    config = write_config(tmp_path, [("d0", "ssd")])
    log = tmp_path / "without-d1.log"
    server = run_daemon(config, log)
    assert httpx.get(f"{server.url}/titles/movie/{on_d1[0]}", timeout=5).status_code == 404
    assert httpx.get(f"{server.url}/titles/movie/{on_d0[0]}", timeout=5).status_code == 200
    server.stop()
    d1 = str((tmp_path / "d1").resolve())
    said = [line for line in log.read_text().splitlines() if "storage.findings" in line]
    assert len(said) == 1, log.read_text()
    assert (
        f"disk {d1} is not in [storage] disks: its {len(on_d1)} files of 1 title (movie)"
        in (said[0])
    )
    assert sum("store.reconciled" in line for line in log.read_text().splitlines()) == 1
    movie = ls(config)["movie"]
    assert (movie["state"], movie["missing"]) == ("incomplete", len(on_d1))
    code, out, err = cli("reconcile", "--config", str(config))
    assert code == 0 and "0 findings" in out, out + err  # said once, by the start
    assert files_of(tmp_path, "d1", "movie"), "the disk's files must wait for it, not go"

    config = write_config(tmp_path, both)
    log = tmp_path / "with-d1.log"
    server = run_daemon(config, log)
    assert "store.restored" in log.read_text()
    for rel in on_d1 + on_d0:
        reply = httpx.get(f"{server.url}/titles/movie/{rel}", timeout=5)
        assert reply.status_code == 200, rel
    server.stop()
    assert ls(config)["movie"]["state"] == "ready"


def test_a_wiped_disk_is_logged_once_per_title_at_start(
    tmp_path: Path, run_daemon: Callable[[Path, Path], Server]
) -> None:
    config = write_config(tmp_path, [("d0", "ssd")])
    load(config, tmp_path, "movie", "other")
    for path in (tmp_path / "d0" / "titles" / "movie").rglob("*"):
        if path.is_file():
            path.unlink()
    log = tmp_path / "daemon.log"
    run_daemon(config, log).stop()
    lines = log.read_text().splitlines()
    said = [line for line in lines if "storage.findings" in line]
    assert len(said) == 1 and "title=movie" in said[0] and "files=18" in said[0], lines
    assert "none of its files serve" in said[0]
    assert not any("its other files still serve" in line for line in lines)
    reconciled = [line for line in lines if "store.reconciled" in line]
    assert len(reconciled) == 1 and "findings=18 lost=18 titles=1" in reconciled[0]
    assert sum("seg0015.m4s" in line for line in lines) <= 1

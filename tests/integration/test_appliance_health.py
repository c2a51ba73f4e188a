"""The appliance daemon on loopback with two disk folders on one tier and a title spread
over both: a disk folder removed while serving turns health degraded within 5 s, its files
404 at once while the other disk's keep serving, and it serves again after re-verification
when it comes back. A disk not mounted when a command or the daemon starts (its empty mount
point left) is out of service from the start, never written to. A plan with its window open
fills from a real origin and re-fills a lost disk's files onto the disk left."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.integration.daemon_support import (
    files_on,
    load_spread_title,
    poll,
    start_daemon,
    status,
    write_config,
)
from tests.integration.serve_support import Server, make_title, start


@pytest.fixture()
def spread(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    config = write_config(tmp_path)
    load_spread_title(tmp_path, config)
    server = start_daemon(config)
    try:
        yield server, tmp_path
    finally:
        server.stop()


def _get(server: Server, rel: str, title: str = "spread") -> httpx.Response:
    # The timeout is the "never hangs" bound: a request to a dead disk must answer, not stall.
    return httpx.get(f"{server.url}/titles/{title}/{rel}", timeout=5)


def test_disk_removed_while_serving_then_back(spread: tuple[Server, Path]) -> None:
    server, tmp = spread
    d1 = tmp / "d1"
    lost, kept = files_on(d1), files_on(tmp / "d0")
    assert lost and kept, "the title must be spread over both disks"
    bodies = {rel: (d1 / "titles" / "spread" / rel).read_bytes() for rel in lost}
    assert all(_get(server, rel).status_code == 200 for rel in (lost[0], kept[0]))
    before = status(server)
    assert before["health"]["disks_out_of_service"] == []
    assert {d["path"] for d in before["profile"]["disks"]} == {str(tmp / "d0"), str(d1)}

    # As root no chmod stops us: renaming the folder away is the disk vanishing.
    os.rename(d1, tmp / "d1.gone")
    doc = poll(server, lambda d: str(d1) in d["health"]["disks_out_of_service"], timeout=5)
    assert doc is not None, "health did not notice the lost disk within 5 s"
    assert doc["health"]["state"] in ("degraded", "failing")
    assert any(str(d1) in r and "out of service" in r for r in doc["health"]["reasons"])
    metrics = httpx.get(server.urls["admin"] + "/metrics", timeout=10).text
    assert f'edgeflix_appliance_disk_in_service{{disk="{d1}"}} 0' in metrics
    assert f'edgeflix_appliance_disk_in_service{{disk="{tmp / "d0"}"}} 1' in metrics
    assert f'disk_size_bytes{{disk="{d1}"' not in metrics  # not its mount point's figures
    for rel in lost:
        assert _get(server, rel).status_code == 404  # players fail over, nothing hangs
    for rel in kept:
        reply = _get(server, rel)
        assert reply.status_code == 200
        assert reply.content == (tmp / "d0" / "titles" / "spread" / rel).read_bytes()

    # The disk returns: re-scanned and re-verified before its files serve again.
    os.rename(tmp / "d1.gone", d1)
    doc = poll(server, lambda d: d["health"]["disks_out_of_service"] == [], timeout=20)
    assert doc is not None, "the returned disk was not taken back into service"
    for rel in lost:
        reply = _get(server, rel)
        assert reply.status_code == 200 and reply.content == bodies[rel]


def test_a_disk_not_mounted_at_start_is_left_alone(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    load_spread_title(tmp_path, config)
    d1 = tmp_path / "d1"
    lost, kept = files_on(d1), files_on(tmp_path / "d0")
    assert lost and kept, "the title must be spread over both disks"
    bodies = {rel: (d1 / "titles" / "spread" / rel).read_bytes() for rel in lost}
    # Not mounted: the mount point is there, empty (what the disk holds moved away).
    unmounted = tmp_path / "d1-disk"
    unmounted.mkdir()
    for name in os.listdir(d1):
        os.rename(d1 / name, unmounted / name)

    out = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    assert f"disk {d1} is out of service (missing: no titles folder (is the disk mounted?" in (
        out.stderr
    )
    (title,) = json.loads(out.stdout)
    assert (title["state"], title["missing"]) == ("ready", 0)  # nothing dropped as lost
    assert title["disks"] == [str(tmp_path / "d0")] and title["unavailable"] == len(lost)
    table = run_cli(["appliance", "ls", "--config", str(config)], check=True).stdout
    assert f"({len(lost)} on disks out of service)" in table
    assert os.listdir(d1) == []  # and nothing made on the root filesystem in its place
    # A foreground fill too (this one finds no source): it must not place anything there.
    fill = run_cli(["appliance", "fill", "--config", str(config), "--from",
                    "http://127.0.0.1:9", "--title", "other", "--now"])  # fmt: skip
    assert fill.returncode != 0 and f"disk {d1} is out of service" in fill.stderr
    assert os.listdir(d1) == []

    server = start_daemon(config)
    try:
        assert str(d1) in status(server)["health"]["disks_out_of_service"]
        assert os.listdir(d1) == []
        assert all(_get(server, rel).status_code == 200 for rel in kept)
        assert all(_get(server, rel).status_code == 404 for rel in lost)
        for name in os.listdir(unmounted):  # mounted: re-verified, then served
            os.rename(unmounted / name, d1 / name)
        doc = poll(server, lambda d: d["health"]["disks_out_of_service"] == [], timeout=20)
        assert doc is not None, "the mounted disk was not taken back into service"
        for rel in lost:
            reply = _get(server, rel)
            assert reply.status_code == 200 and reply.content == bodies[rel]
    finally:
        server.stop()


def _window_open_now() -> str:
    now = datetime.now(UTC)
    start_at, end_at = now - timedelta(minutes=5), now + timedelta(hours=2)
    return f"{start_at:%H:%M}-{end_at:%H:%M}"


@pytest.fixture()
def origin(tmp_path: Path) -> Iterator[Server]:
    store = tmp_path / "origin"
    folder = store / "titles" / "film"
    (folder / "v0").mkdir(parents=True)
    for i in range(12):
        (folder / "v0" / f"part{i:02d}.m4s").write_bytes(os.urandom(60_000))
    make_title(folder, "film")
    server = start(["origin", "serve", "--store", str(store), "--listen", "127.0.0.1:0"],
                   ("listening",))  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


def test_plan_fills_in_window_and_refills_a_lost_disk(tmp_path: Path, origin: Server) -> None:
    plan = tmp_path / "plan.json"
    body = {
        "titles": [{"id": "film", "sources": [origin.url]}],
        "window": _window_open_now(),
        "timezone": "UTC",
    }
    plan.write_text(json.dumps(body))
    config = write_config(tmp_path / "app", extra=f'plan = "{plan}"')
    server = start_daemon(config)
    try:

        def film(doc: dict[str, Any]) -> str | None:
            titles = (doc.get("fill") or {}).get("titles") or {}
            state: str | None = titles.get("film", {}).get("state")
            return state

        doc = poll(server, lambda d: film(d) == "ready", timeout=60, step=0.2)
        assert doc is not None, f"the plan did not fill: {status(server)['daemon']}"
        assert doc["daemon"]["fill_schedule"]["window_open"] is True
        source = tmp_path / "origin" / "titles" / "film"
        every = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.m4s"))
        assert all(_get(server, rel, "film").status_code == 200 for rel in every)

        # Lose a disk with its files: the next run (the window is open) puts them on d0.
        d1 = tmp_path / "app" / "d1"
        lost = files_on(d1, "film")
        assert lost, "the filled title must be spread over both disks"
        shutil.rmtree(d1)
        # The loss is noticed first; only a fill run that starts after that can re-fill.
        doc = poll(server, lambda d: str(d1) in d["health"]["disks_out_of_service"], timeout=5)
        assert doc is not None, "the lost disk was not taken out of service within 5 s"
        runs = doc["daemon"]["fill_schedule"]["runs"]
        doc = poll(
            server,
            lambda d: d["daemon"]["fill_schedule"]["runs"] > runs and film(d) == "ready",
            timeout=60,
            step=0.2,
        )
        assert doc is not None, f"no re-fill after the disk loss: {status(server)['daemon']}"
        assert str(d1) in doc["health"]["disks_out_of_service"]
        for rel in every:
            reply = _get(server, rel, "film")
            assert reply.status_code == 200 and reply.content == (source / rel).read_bytes()
        assert set(lost) <= set(files_on(tmp_path / "app" / "d0", "film"))
    finally:
        server.stop()

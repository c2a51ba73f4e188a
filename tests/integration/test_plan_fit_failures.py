"""A fill failure reaches the fleet, with real processes on loopback: an origin, a fleet
manager and two appliances of one site, all through the CLI.

"tight" (a 3 MiB tmpfs) is planned a title it has room for; then other data fills its
disk before the fill runs (the manager re-plans only when asked, so the plan stands), and
its fill fails for want of room. The failure must show in `fleet ls`, `fleet show` and
`fleet plan` (text and --json), and the next plan must put the title on "roomy" only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.integration.serve_support import Server, make_title, start
from tests.integration.test_fleet_appliances import (
    Box,
    closed_window,
    free_port,
    launch,
    wait_for,
)


def fleet_toml(folder: Path, origin: str) -> Path:
    path = folder / "fleet.toml"
    path.write_text(f"""
[server]
grpc = "127.0.0.1:{free_port()}"
http = "127.0.0.1:{free_port()}"
db = "{folder}/fleet.sqlite"
[heartbeat]
interval_s = 0.5
missed_beats = 6
[planner]
interval_s = 3600.0
[origin]
url = "{origin}"
poll_s = 1.0
[[sites]]
name = "home"
prefixes = ["192.168.1.0/24"]
fill_window = "{closed_window()}"
""")
    return path


def appliance_toml(root: Path, name: str, grpc: str, token: str, disk: Path) -> Path:
    disk.mkdir(parents=True, exist_ok=True)
    path = root / "appliance.toml"
    path.write_text(f"""
name = "{name}"
[storage]
disks = [ {{ path = "{disk}", tier = "hdd" }} ]
index = "{root}/index.sqlite"
[serve]
listen = "127.0.0.1:{free_port()}"
shutdown_timeout_s = 1.0
[admin]
listen = "127.0.0.1:0"
[fill]
staging = "{root}/staging"
peer_wait_s = 0.5
peer_waits = 1
[fleet]
url = "{grpc}"
join_token = "{token}"
heartbeat_s = 0.5
""")
    return path


class Site:
    def __init__(self, http: str) -> None:
        self.http = http

    def cli(self, *args: str, as_json: bool = True) -> Any:
        extra = ["--json"] if as_json else []
        proc = run_cli(["fleet", *args, "--fleet", self.http, *extra], check=True, timeout=60)
        return json.loads(proc.stdout) if as_json else proc.stdout

    def part(self, name: str) -> dict[str, Any]:
        plan = self.cli("plan")
        empty = {"titles": [], "fill_failed": []}
        return next((p for p in plan["appliances"] if p["name"] == name), empty)

    def planned(self, name: str) -> list[str]:
        return [t["title_id"] for t in self.part(name)["titles"]]


@pytest.fixture
def site(
    tmp_path: Path, small_fs: Path
) -> Iterator[tuple[Site, dict[str, Box], Callable[[], None]]]:
    """The fleet with "tight" alone (so the plan puts the title there); the third item
    starts "roomy"."""
    store = tmp_path / "origin"
    make_title(store / "titles" / "film", "film")
    servers: list[Server] = []
    boxes: dict[str, Box] = {}
    try:
        origin = start(["origin", "serve", "--store", str(store), "--listen", "127.0.0.1:0"],
                       ("listening",))  # fmt: skip
        servers.append(origin)
        fleet = start(["fleet", "serve", "--config", str(fleet_toml(tmp_path, origin.url))],
                      ("grpc", "http"))  # fmt: skip
        servers.append(fleet)
        home = Site(fleet.urls["http"])

        def add(name: str, disk: Path) -> None:
            root = tmp_path / name
            root.mkdir(exist_ok=True)
            token = home.cli("join-token", "--site", "home")["token"]
            cfg = appliance_toml(root, name, fleet.urls["grpc"], token, disk)
            box = Box(name, root, cfg, root / "log.jsonl")
            box.server = launch(["appliance", "run", "--config", str(cfg)], box.log)
            boxes[name] = box

        add("tight", small_fs / "d0")
        yield home, boxes, lambda: add("roomy", tmp_path / "roomy" / "d0")
    finally:
        for box in boxes.values():
            if box.server is not None:
                box.server.stop()
        for server in reversed(servers):
            server.stop()


def test_a_title_that_found_no_room_shows_in_the_fleet_and_moves(
    site: tuple[Site, dict[str, Box], Callable[[], None]], small_fs: Path
) -> None:
    home, boxes, add_roomy = site
    tight = boxes["tight"]

    def has_film_plan() -> bool:
        if "film" not in home.planned("tight"):
            home.cli("plan", "--now")  # once both have beaten, the plan has film on tight
            return False
        return bool(tight.status()["plan_version"] >= home.cli("plan")["version"])

    wait_for(has_film_plan, 60, "tight runs a plan with film")
    # Other data takes tight's disk before its fill: the plan, made before, still has film.
    free = os.statvfs(small_fs)
    (small_fs / "other.bin").write_bytes(b"x" * (free.f_bavail * free.f_frsize - 100_000))
    home.cli("fill", "--now", "--site", "home")

    def failed() -> list[dict[str, Any]]:
        failures: list[dict[str, Any]] = home.cli("show", "tight")["fill_failures"]
        return failures

    failures = wait_for(failed, 60, "tight's fill failure in `fleet show`")
    assert [f["title_id"] for f in failures] == ["film"]
    assert failures[0]["no_room"] is True and "does not fit" in failures[0]["reason"]

    rows = {r["name"]: r for r in home.cli("ls")}
    assert rows["tight"]["fill_failed"] == 1
    # Nothing of its plan held (the plan may already have moved film off it: total 0).
    assert rows["tight"]["fill_bytes_done"] == 0
    assert rows["tight"]["titles"] == rows["tight"]["titles_held"] == 0
    assert "fill failures: 1 titles" in home.cli("show", "tight", as_json=False)
    # In a pipe, tab-separated with a header: what each column counts is named.
    header, *lines = (line.split("\t") for line in home.cli("ls", as_json=False).splitlines())
    assert {"complete", "held", "filled", "failed"} <= set(header)
    row = dict(zip(header, next(line for line in lines if line[0] == "tight"), strict=True))
    assert (row["complete"], row["held"], row["failed"]) == ("0", "0", "1")
    assert row["filled"] in ("0%", "-")

    # With a box that has room, the next plan leaves film to it, and says what tight failed.
    add_roomy()

    def replanned() -> bool:
        home.cli("plan", "--now")  # once roomy has beaten with its disks, film goes there
        return home.planned("roomy") == ["film"]

    wait_for(replanned, 60, "film planned on roomy")
    assert home.planned("tight") == []
    assert home.part("tight")["fill_failed"] == ["film"]
    header, *lines = (line.split("\t") for line in home.cli("plan", as_json=False).splitlines()[1:])
    row = dict(zip(header, next(line for line in lines if line[0] == "tight"), strict=True))
    assert (row["titles"], row["fill failed"]) == ("0", "film")

"""Real appliances under a real fleet manager, all through the CLI on loopback: enrolment with
join tokens (and a refused one), steering per site to URLs that serve, key rotation during
playback, a plan filled from the origin and from a site peer, drain and SIGKILL, and the
fleet manager going away and coming back while the appliances keep serving.

The tests share one module-scoped cluster and run in file order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.integration.serve_support import Server, make_title, start

HOME_IP, LAB_IP = "192.168.1.50", "10.1.2.3"


def free_port() -> int:
    """A port the kernel hands out now; the fleet and the appliances keep theirs over restarts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_window() -> str:
    """A fill window that is not open for the next hours: fills happen only on `fill --now`."""
    h = datetime.now(UTC).hour
    return f"{(h + 6) % 24:02d}:00-{(h + 7) % 24:02d}:00"


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {seconds} s")


@dataclass
class Box:
    name: str
    root: Path
    config: Path
    log: Path
    server: Server | None = None

    @property
    def admin(self) -> str:
        assert self.server is not None
        return self.server.urls["admin"]

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = httpx.get(self.admin + "/status", timeout=10).json()
        return doc["daemon"]["fleet"]

    def held(self) -> dict[str, str]:
        out = run_cli(["appliance", "ls", "--config", str(self.config), "--json"], check=True)
        return {t["id"]: t["state"] for t in json.loads(out.stdout)}


def launch(args: list[str], log: Path) -> Server:
    """`edgeflix ARGS` with stderr (the structured log) to `log`; waits for its URL lines."""
    with open(log, "ab") as err:
        try:
            return start(args, ("listening", "admin"), stderr=err)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {log.read_text()}") from None


@dataclass
class Cluster:
    fleet_config: Path
    fleet: Server
    http: str
    origin: Server
    origin_store: Path
    boxes: dict[str, Box]

    def cli(self, *args: str) -> Any:
        proc = run_cli(["fleet", *args, "--fleet", self.http, "--json"], check=True, timeout=60)
        return json.loads(proc.stdout)

    def steer(self, ip: str, title: str = "film") -> dict[str, Any]:
        return self.cli("steer", "--client-ip", ip, "--title", title)

    def names(self, ip: str) -> list[str]:
        return [c["name"] for c in self.steer(ip)["candidates"] if c["kind"] == "appliance"]

    def restart_fleet(self) -> None:
        self.fleet = start(["fleet", "serve", "--config", str(self.fleet_config)], ("grpc", "http"))


def fleet_toml(folder: Path, origin: str, grpc_port: int, http_port: int) -> Path:
    window = closed_window()
    path = folder / "fleet.toml"
    path.write_text(f"""
[server]
grpc = "127.0.0.1:{grpc_port}"
http = "127.0.0.1:{http_port}"
db = "{folder}/fleet.sqlite"
[heartbeat]
interval_s = 0.5
missed_beats = 3
[planner]
interval_s = 1.0
[origin]
url = "{origin}"
poll_s = 1.0
[keys]
lead_s = 3.0
[[sites]]
name = "home"
prefixes = ["192.168.1.0/24"]
fill_window = "{window}"
[[sites]]
name = "lab"
prefixes = ["10.1.0.0/16"]
fill_window = "{window}"
""")
    return path


def appliance_toml(root: Path, name: str, grpc: str, token: str) -> Path:
    (root / "d0").mkdir(parents=True, exist_ok=True)
    path = root / "appliance.toml"
    path.write_text(f"""
name = "{name}"
[storage]
disks = [ {{ path = "{root}/d0", tier = "hdd", max_bytes = 2000000000 }} ]
index = "{root}/index.sqlite"
[serve]
listen = "127.0.0.1:{free_port()}"
shutdown_timeout_s = 1.0
[admin]
listen = "127.0.0.1:0"
[auth]
tokens = "required"
[fill]
staging = "{root}/staging"
[fleet]
url = "{grpc}"
join_token = "{token}"
heartbeat_s = 0.5
""")
    return path


@contextlib.contextmanager
def one_box_fleet(top: Path) -> Iterator[Cluster]:
    """An origin holding `film`, a fleet manager, and one appliance `a1` (site home) that
    holds `film` and runs; all stopped on the way out."""
    store = top / "origin"
    make_title(store / "titles" / "film", "film")
    origin = start(
        ["origin", "serve", "--store", str(store), "--listen", "127.0.0.1:0"], ("listening",)
    )
    config = fleet_toml(top, origin.url, free_port(), free_port())
    fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    c = Cluster(config, fleet, fleet.urls["http"], origin, store, {})
    try:
        root = top / "a1"
        token = c.cli("join-token", "--site", "home")["token"]
        cfg = appliance_toml(root, "a1", fleet.urls["grpc"], token)
        run_cli(
            ["appliance", "load", "--title", "film", "--from", str(store / "titles/film"),
             "--config", str(cfg)],
            check=True,
        )  # fmt: skip
        box = Box("a1", root, cfg, root / "log.jsonl")
        c.boxes["a1"] = box
        box.server = launch(["appliance", "run", "--config", str(cfg)], box.log)
        yield c
    finally:
        for b in c.boxes.values():
            if b.server is not None:
                b.server.stop()
        c.fleet.stop()
        origin.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    top = tmp_path_factory.mktemp("fleet-appliances")
    store = top / "origin"
    for title in ("film", "show"):
        make_title(store / "titles" / title, title)
    origin = start(
        ["origin", "serve", "--store", str(store), "--listen", "127.0.0.1:0"], ("listening",)
    )
    grpc_port, http_port = free_port(), free_port()
    config = fleet_toml(top, origin.url, grpc_port, http_port)
    fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    c = Cluster(config, fleet, fleet.urls["http"], origin, store, {})

    def prepare(name: str, site: str) -> Box:
        root = top / name
        token = c.cli("join-token", "--site", site)["token"]
        cfg = appliance_toml(root, name, fleet.urls["grpc"], token)
        film = str(store / "titles/film")
        run_cli(
            ["appliance", "load", "--title", "film", "--from", film, "--config", str(cfg)],
            check=True,
        )
        box = Box(name, root, cfg, root / "log.jsonl")
        box.server = launch(["appliance", "run", "--config", str(cfg)], box.log)
        return box

    try:
        # Side by side: each box is three CLI processes and a daemon start.
        with ThreadPoolExecutor(3) as pool:
            sites = (("a1", "home"), ("a2", "home"), ("b1", "lab"))
            futures = [pool.submit(prepare, n, s) for n, s in sites]
            for future in futures:
                with contextlib.suppress(Exception):  # result() below re-raises
                    box = future.result()
                    c.boxes[box.name] = box
            for future in futures:
                future.result()
        yield c
    finally:
        for box in c.boxes.values():
            if box.server is not None:
                box.server.stop()
        c.fleet.stop()
        origin.stop()


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


def test_enrolment_with_join_tokens_and_a_refused_one(cluster: Cluster, tmp_path: Path) -> None:
    def listed() -> dict[str, dict[str, Any]]:
        return {a["name"]: a for a in cluster.cli("ls")}

    rows = wait_for(lambda: len(listed()) == 3 and listed(), 30, "three appliances enrolled")
    assert {n: r["site"] for n, r in rows.items()} == {"a1": "home", "a2": "home", "b1": "lab"}
    box = cluster.boxes["a1"]
    key = box.root / "fleet" / "appliance.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    enrolment = json.loads((box.root / "fleet" / "enrolment.json").read_text())
    assert enrolment["site"] == "home" and enrolment["appliance"] == "a1"

    bad = Box(
        "x1",
        tmp_path,
        appliance_toml(tmp_path, "x1", cluster.fleet.urls["grpc"], "bogus"),
        tmp_path / "log.jsonl",
    )
    bad.server = launch(["appliance", "run", "--config", str(bad.config)], bad.log)
    try:
        refused = wait_for(lambda: bad.status()["refused"], 20, "enrolment refused")
        assert "token" in refused
        time.sleep(1.5)  # several beat intervals: the refusal is final, logged once
        lines = [ln for ln in bad.log.read_text().splitlines() if "enrolment_refused" in ln]
        assert len(lines) == 1
        assert get(bad.admin + "/healthz").status_code == 200  # still serving what it has
        assert "x1" not in listed()
    finally:
        bad.server.stop()


def test_steering_ranks_the_client_site_first_with_urls_that_serve(cluster: Cluster) -> None:
    home = wait_for(
        lambda: (s := cluster.steer(HOME_IP))["outcome"] == "in_site" and len(s["urls"]) >= 3 and s,
        30,
        "home steering in site",
    )
    names = [c["name"] for c in home["candidates"]]
    assert set(names[:2]) == {"a1", "a2"} and names[2] == "b1"
    resp = get(home["urls"][0])
    assert resp.status_code == 200 and resp.text.startswith("#EXTM3U")
    lab = cluster.steer(LAB_IP)
    assert lab["candidates"][0]["name"] == "b1" and get(lab["urls"][0]).status_code == 200
    # Tokens are enforced: the same path without the token is refused.
    plain = home["urls"][0].split("/t/")[0] + "/titles/film/master.m3u8"
    assert get(plain).status_code == 403


def test_key_rotation_breaks_no_unexpired_url(cluster: Cluster) -> None:
    before = cluster.steer(HOME_IP)["urls"]
    rotated = cluster.cli("keys", "rotate")
    new_key = rotated["keys"][-1]
    for url in before:
        assert get(url).status_code == 200
    for box in cluster.boxes.values():

        def has_keys(b: Box = box) -> bool:
            return bool(b.status()["keys_version"] == rotated["version"])

        wait_for(has_keys, 15, f"{box.name} has the new keys")
    # The new key signs after the lead time; its URLs serve on every appliance.
    after = wait_for(
        lambda: (u := cluster.steer(HOME_IP)["urls"]) and f"/t/{new_key}." in u[0] and u,
        20,
        "URLs signed with the new key",
    )
    for url in [*after, *before]:
        assert get(url).status_code == 200, url


def metric(box: Box, name: str, **labels: str) -> float:
    text = get(box.admin + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_plan_fills_from_the_origin_and_from_a_site_peer(cluster: Cluster) -> None:
    a1, a2, b1 = (cluster.boxes[n] for n in ("a1", "a2", "b1"))
    # a1 holds "show" already, so the planner makes it the home site's source for it.
    run_cli(
        [
            "appliance",
            "load",
            "--title",
            "show",
            "--from",
            str(cluster.origin_store / "titles/show"),
            "--config",
            str(a1.config),
        ],
        check=True,
    )

    def planned(box: Box) -> bool:
        st = httpx.get(box.admin + "/status", timeout=10).json()["daemon"]
        return st["fleet"]["plan_version"] > 0 and "show" in st["fill_schedule"]["titles"]

    def a2_from_a1() -> bool:
        # The plan says a2 fills "show" from a1 (a1's beat that it holds it may come after
        # a first plan, which had a2 fill from the origin), and a2 runs that plan or later.
        plan = cluster.cli("plan", "--site", "home")
        part = next((p for p in plan["appliances"] if p["name"] == "a2"), {"titles": []})
        if not any(t["title_id"] == "show" and t["source"] == "a1" for t in part["titles"]):
            return False
        st = httpx.get(a2.admin + "/status", timeout=10).json()["daemon"]
        return planned(a2) and st["fleet"]["plan_version"] >= plan["version"]

    wait_for(lambda: planned(b1) and a2_from_a1(), 40, "plans for show")
    assert "show" not in a2.held() and "show" not in b1.held()  # the window is closed
    cluster.cli("fill", "--now", "--site", "home")
    cluster.cli("fill", "--now", "--site", "lab")
    wait_for(lambda: a2.held().get("show") == "ready", 60, "a2 filled show")
    wait_for(lambda: b1.held().get("show") == "ready", 60, "b1 filled show")
    # a2 took it from its peer a1 (a signed peer URL), b1 from the origin. A worker's counts
    # reach /metrics on its stats tick, after the fill may have ended.
    wait_for(
        lambda: metric(a1, "edgeflix_appliance_requests_total", title="show", status="200") > 0,
        20,
        "a1's count of show's requests",
    )
    assert metric(b1, "edgeflix_appliance_requests_total", title="show", status="200") == 0


def test_drained_and_killed_appliances_leave_steering(cluster: Cluster) -> None:
    cluster.cli("drain", "a2")
    assert "a2" not in cluster.names(HOME_IP)
    cluster.cli("undrain", "a2")
    wait_for(lambda: "a2" in cluster.names(HOME_IP), 15, "a2 back after undrain")

    b1 = cluster.boxes["b1"]
    assert b1.server is not None
    os.kill(b1.server.proc.pid, signal.SIGKILL)
    b1.server.proc.wait(10)
    started = time.monotonic()
    wait_for(lambda: "b1" not in cluster.names(LAB_IP), 15, "b1 gone from steering")
    assert time.monotonic() - started < 15
    # Back from its own state folder: no new token, same identity.
    time.sleep(1.0)  # its workers (SIGTERMed when it died) let go of the port
    b1.server = launch(["appliance", "run", "--config", str(b1.config)], b1.log)
    wait_for(lambda: cluster.names(LAB_IP)[:1] == ["b1"], 20, "b1 back in steering")


def test_appliances_serve_while_the_fleet_is_down_and_resync(cluster: Cluster) -> None:
    urls = {c["name"]: c["url"] for c in cluster.steer(HOME_IP)["candidates"]}
    cluster.fleet.stop()
    a1 = cluster.boxes["a1"]
    wait_for(lambda: a1.status()["phase"] == "grace", 15, "a1 in its grace period")
    for name, url in urls.items():
        assert get(url).status_code == 200, name
    cluster.restart_fleet()
    rows = {a["name"]: a for a in cluster.cli("ls")}
    assert {"a1", "a2", "b1"} <= set(rows)  # the registry outlived the restart
    wait_for(lambda: a1.status()["phase"] == "connected", 20, "a1 resynced")
    wait_for(
        lambda: (
            {a["name"]: a["state"] for a in cluster.cli("ls")}.keys() >= {"a1", "a2", "b1"}
            and all(a["state"] in ("ok", "degraded") for a in cluster.cli("ls"))
        ),
        20,
        "every appliance beating again",
    )
    home = cluster.steer(HOME_IP)
    assert home["outcome"] == "in_site" and get(home["urls"][0]).status_code == 200

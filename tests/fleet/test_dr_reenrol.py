"""Disaster recovery on real processes: an appliance holding titles enrols again, on a fleet
manager that lost its database or after `fleet rm`, and is not handed an empty plan (which
it prunes its whole library to) before the manager has its first beat; once it has, the
plan keeps what it holds. A real `edgeflix fleet serve` on loopback; the appliance's fleet
link runs in this process (tests/integration/test_fleet_link_recovery's harness) with an
index holding three titles and its plans recorded."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.config import ApplianceConfig
from appliance.fill.plan import FillPlan
from appliance.fleetlink import FleetLink, LinkSinks
from appliance.fleetlink_figures import BoxHealth, Traffic
from appliance.index import connect_writer
from tests.conftest import run_cli
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import FLEET_TOML  # beats and planning every 0.5 s
from tests.integration.test_fleet_appliances import free_port
from tests.integration.test_fleet_link_recovery import Clock, join_token, steps

TITLES = ("t1", "t2", "t3")


@pytest.fixture
def fleet_config(tmp_path: Path) -> Path:
    """Fixed ports: the manager comes back where the appliance knows it."""
    path = tmp_path / "fleet.toml"
    path.write_text(
        FLEET_TOML.format(db=tmp_path / "manager" / "fleet.sqlite")
        .replace('grpc = "127.0.0.1:0"', f'grpc = "127.0.0.1:{free_port()}"')
        .replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{free_port()}"')
    )
    return path


def serve(config: Path) -> Server:
    return start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))


@pytest.fixture
def fleet(fleet_config: Path) -> Iterator[list[Server]]:
    """The running manager, in a list a test may restart it into; stopped at the end."""
    running = [serve(fleet_config)]
    yield running
    running[-1].stop()


def holding(tmp: Path) -> Path:
    """An appliance index holding TITLES whole, on a disk folder that exists."""
    (tmp / "d0").mkdir(exist_ok=True)
    conn = connect_writer(tmp / "index.sqlite")
    with conn:
        for t in TITLES:
            digest = hashlib.sha256(t.encode()).hexdigest()  # as of a files.json
            conn.execute("INSERT INTO titles VALUES (?, ?, 'ready', 'hdd', 1000000, 0, NULL)",
                         (t, digest))  # fmt: skip
    conn.close()
    return tmp / "index.sqlite"


def link(tmp: Path, grpc: str, token: str, plans: list[FillPlan]) -> FleetLink:
    config = ApplianceConfig.model_validate(
        {
            "name": "a1",
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(holding(tmp))},
            "fill": {"staging": str(tmp / "staging")},
            "fleet": {"url": grpc, "join_token": token, "heartbeat_s": 0.5},
        }
    )
    sinks = LinkSinks(
        health=lambda: BoxHealth("ok", (), 1e9),
        traffic=lambda: Traffic({}, 0, 0),
        submit_plan=plans.append,
        set_keys=lambda keys: None,
    )
    lk = FleetLink(config, "http://192.168.1.20:8081", sinks, clock=Clock())
    lk.restore()
    return lk


def titles(plan: FillPlan) -> set[str]:
    return {t.id for t in plan.titles}


def until_planned(lk: FleetLink, http: str) -> dict[str, Any]:
    """Step the link (bounded) until it runs the manager's current plan and that plans it
    TITLES; returns the manager's plan."""
    for _ in range(60):
        steps(lk, 1)
        current = httpx.get(f"{http}/plan", timeout=30).json()
        parts = {a["name"]: {t["title_id"] for t in a["titles"]} for a in current["appliances"]}
        if parts.get("a1") == set(TITLES) and lk.state()["plan_version"] == current["version"]:
            return dict(current)
        time.sleep(0.25)
    raise AssertionError(f"a1 runs no plan of {TITLES}: {current}; link: {lk.state()}")


@pytest.mark.parametrize("lost", ["database", "fleet rm"])
def test_an_appliance_enrolled_again_keeps_its_titles(
    tmp_path: Path, fleet_config: Path, fleet: list[Server], lost: str
) -> None:
    plans: list[FillPlan] = []
    lk = link(tmp_path, fleet[-1].urls["grpc"], join_token(fleet[-1]), plans)
    try:
        until_planned(lk, fleet[-1].urls["http"])
        if lost == "database":  # stopped, its database deleted, started on a new one
            fleet[-1].stop()
            for f in (tmp_path / "manager").glob("fleet.sqlite*"):
                f.unlink()
            fleet.append(serve(fleet_config))
        else:
            http = fleet[-1].urls["http"]
            run_cli(["fleet", "rm", "a1", "--fleet", http], check=True, timeout=60)
        http = fleet[-1].urls["http"]
        lk.reconfigure(lk.fleet.model_copy(update={"join_token": join_token(fleet[-1])}))
        before, enrolment = len(plans), lk.enrolment
        for _ in range(40):  # refused (not enrolled), then enrolled again, and no more
            steps(lk, 1)
            if lk.enrolment is not enrolment:
                break
            time.sleep(0.25)
        assert lk.enrolment is not enrolment, lk.state()
        # A planning round now, between the enrolment and the first beat (the manager's
        # own rounds run every 0.5 s: this one makes the test deterministic).
        assert httpx.post(f"{http}/plan", timeout=30).status_code == 200
        until_planned(lk, http)
        # Every plan handed to the fill since (none prunes a title it holds).
        got = [sorted(titles(p)) for p in plans[before:]]
        assert got and all(g == sorted(TITLES) for g in got), f"plans applied since: {got}"
    finally:
        lk.stop()

"""An enrolled appliance stays enrolled through what it can recover from: its clock off for
a while, the fleet manager at a new address, the fleet refusing its token when it enrols
again. The link (appliance/fleetlink.py) runs in this process with its clock injected,
against a real `edgeflix fleet serve` on loopback; its one-time join token is spent and
gone from its config, as an operator leaves it."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import ApplianceConfig
from appliance.fleetlink import FleetLink, LinkSinks
from appliance.fleetlink_figures import BoxHealth, Traffic
from appliance.index import connect_writer
from tests.conftest import run_cli
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import FLEET_TOML  # two sites, fast beats and planning
from tests.integration.test_fleet_appliances import free_port


class Clock:
    """The appliance's clock: the real time plus a skew the test sets."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.time() + self.skew


@pytest.fixture
def fleet_config(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    return path


@pytest.fixture
def fleet(fleet_config: Path) -> Iterator[Server]:
    server = start(["fleet", "serve", "--config", str(fleet_config)], ("grpc", "http"))
    yield server
    server.stop()


def join_token(fleet: Server) -> str:
    out = run_cli(
        ["fleet", "join-token", "--site", "home", "--fleet", fleet.urls["http"], "--json"],
        check=True,
        timeout=60,
    )
    return str(json.loads(out.stdout)["token"])


class Steady:
    """The appliance's monotonic clock, which only the test moves (forward)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def link(
    tmp: Path, grpc: str, clock: Clock, token: str = "", monotonic: Steady | None = None
) -> FleetLink:
    connect_writer(tmp / "index.sqlite").close()  # an empty store: beats report no titles
    config = ApplianceConfig.model_validate(
        {
            "name": "a1",
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(tmp / "index.sqlite")},
            "fill": {"staging": str(tmp / "staging")},
            "fleet": {"url": grpc, "join_token": token, "heartbeat_s": 0.5},
        }
    )
    sinks = LinkSinks(
        health=lambda: BoxHealth("ok", (), 1e9),
        traffic=lambda: Traffic({}, 0, 0),
        submit_plan=lambda plan: None,
        set_keys=lambda keys: None,
    )
    steady = {"monotonic": monotonic} if monotonic is not None else {}
    lk = FleetLink(config, "http://192.168.1.20:8081", sinks, clock=clock, **steady)
    lk.restore()
    return lk


def steps(lk: FleetLink, count: int) -> list[float]:
    """`count` rounds of the link, as its thread runs them (without the waits)."""
    return [lk.step() for _ in range(count)]


def enrolled(tmp: Path, fleet: Server, clock: Clock) -> None:
    """Enrol a1 with a one-time token and beat; the process then stops."""
    first = link(tmp, fleet.urls["grpc"], clock, join_token(fleet))
    steps(first, 3)
    assert first.state()["beats"] >= 2, first.state()
    first.stop()


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


def test_a_clock_off_for_a_while_is_not_a_lost_enrolment(
    tmp_path: Path, fleet: Server, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    enrolled(tmp_path, fleet, clock)
    # Booted without a real-time clock at the time it saved at shutdown weeks ago
    # (fake-hwclock), NTP not synced yet: further off than a refusal's time corrects
    # (auth.MAX_CORRECTION_S; minutes off are corrected: tests/fleet/test_clock_skew.py).
    clock.skew = -40 * 86_400.0
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    lk = link(tmp_path, fleet.urls["grpc"], clock)  # the spent token is gone from the config
    waits = steps(lk, 4)
    st = lk.state()
    assert st["beats"] == 0 and st["refused"] is None and st["appliance"] == "a1"
    assert "clock" in (st["last_error"] or "")
    assert waits == sorted(waits) and waits[-1] > waits[0]  # backing off, not giving up
    assert len(events(caplog, "fleet.clock_skew")) == 1  # one clear event, not one a beat
    assert not events(caplog, "fleet.enrolment_refused")
    assert not events(caplog, "fleet.not_enrolled")

    clock.skew = 0.0  # NTP synced
    steps(lk, 3)
    st = lk.state()
    assert st["beats"] >= 2 and st["phase"] == "connected", st
    assert st["refused"] is None and st["last_error"] is None
    lk.stop()


def test_the_fleet_at_a_new_address_keeps_the_enrolment(
    tmp_path: Path, fleet_config: Path, fleet: Server
) -> None:
    clock = Clock()
    enrolled(tmp_path, fleet, clock)
    fleet.stop()
    # The same manager and database; port 0 gives it a new gRPC address.
    moved = start(["fleet", "serve", "--config", str(fleet_config)], ("grpc", "http"))
    try:
        assert moved.urls["grpc"] != fleet.urls["grpc"]
        lk = link(tmp_path, moved.urls["grpc"], clock)
        assert lk.state()["appliance"] == "a1"  # still enrolled, before any call
        steps(lk, 3)
        st = lk.state()
        assert st["beats"] >= 2 and st["phase"] == "connected" and st["refused"] is None, st
        kept = json.loads((tmp_path / "fleet" / "enrolment.json").read_text())
        assert kept["fleet"] == moved.urls["grpc"]  # answered there: the new address is kept
        lk.stop()
    finally:
        moved.stop()


def test_a_sighup_to_a_new_fleet_address_beats_there(
    tmp_path: Path, fleet_config: Path, fleet: Server
) -> None:
    clock = Clock()
    lk = link(tmp_path, fleet.urls["grpc"], clock, join_token(fleet))
    steps(lk, 3)
    fleet.stop()
    moved = start(["fleet", "serve", "--config", str(fleet_config)], ("grpc", "http"))
    try:
        before = lk.state()["beats"]
        lk.reconfigure(lk.fleet.model_copy(update={"url": moved.urls["grpc"], "join_token": ""}))
        steps(lk, 3)
        st = lk.state()
        assert st["beats"] > before and st["phase"] == "connected", st
        assert st["fleet"] == moved.urls["grpc"]
        lk.stop()
    finally:
        moved.stop()


def test_a_refused_reenrolment_is_not_final(tmp_path: Path, fleet: Server) -> None:
    clock = Clock()
    enrolled(tmp_path, fleet, clock)
    spent = json.loads((tmp_path / "fleet" / "enrolment.json").read_text())
    assert spent["appliance"] == "a1"
    run_cli(["fleet", "rm", "a1", "--fleet", fleet.urls["http"]], check=True, timeout=60)
    lk = link(tmp_path, fleet.urls["grpc"], clock, token="spent-or-unknown")
    waits = steps(lk, 4)  # beat: not enrolled; enrol: refused; beat on
    st: dict[str, Any] = lk.state()
    assert st["refused"] and "join token" in st["refused"], st
    assert st["appliance"] == "a1"  # the enrolment is kept, and so are keys and plan
    assert max(waits) <= 30.0  # retried with backoff, not once an hour
    # The operator hands it a new token (SIGHUP): it enrols again and beats.
    lk.reconfigure(lk.fleet.model_copy(update={"join_token": join_token(fleet)}))
    steps(lk, 4)
    st = lk.state()
    assert st["refused"] is None and st["beats"] >= 1 and st["phase"] == "connected", st
    lk.stop()


def test_a_clock_stepped_back_while_the_fleet_is_away_still_runs_the_grace_period(
    tmp_path: Path, fleet: Server
) -> None:
    """Beats answered, then the fleet manager goes away and NTP steps the box's clock back a
    month. The silence counts, not the wall clock: the box is in its grace period after a
    few missed beats and past it 72 h on, not "connected" for the month until the clock is
    back at the last contact; and the contact saved at stop is on the wall clock as it
    reads now, so the next start does not stretch the grace period either."""
    clock, steady = Clock(), Steady()
    enrolled(tmp_path, fleet, clock)
    lk = link(tmp_path, fleet.urls["grpc"], clock, monotonic=steady)
    steps(lk, 2)
    assert lk.state()["phase"] == "connected" and lk.state()["beats"] >= 1, lk.state()
    fleet.stop()
    clock.skew = -30 * 86_400.0
    steady.now += 10.0  # 20 beats at 0.5 s, none answered
    lk.step()
    assert lk.state()["phase"] == "grace", lk.state()
    steady.now += 72 * 3600.0
    lk.step()
    assert lk.state()["phase"] == "expired", lk.state()
    lk.stop()
    saved = json.loads((tmp_path / "fleet" / "contact.json").read_text())["at"]
    assert saved <= clock() - 72 * 3600.0


def test_a_manager_restarted_without_our_last_beat_gets_the_titles_at_once(
    tmp_path: Path,
) -> None:
    """Beats leave the held list out while the manager keeps it (its digest). A manager
    killed before it saved our beat keeps none: the first beat after its return is refused
    for that, and the link sends the list at once, rather than the manager taking the
    appliance, for a beat, as holding nothing."""
    config = tmp_path / "fleet.toml"
    grpc_port, http_port = free_port(), free_port()
    config.write_text(
        FLEET_TOML.format(db=tmp_path / "fleet.sqlite")
        .replace('grpc = "127.0.0.1:0"', f'grpc = "127.0.0.1:{grpc_port}"')
        .replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{http_port}"')
    )
    fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    lk = link(tmp_path, fleet.urls["grpc"], Clock(), join_token(fleet))
    try:
        steps(lk, 4)
        before = lk.state()["beats"]
        assert before >= 3, lk.state()
        fleet.proc.kill()  # SIGKILL: the last beats are not saved
        fleet.proc.wait(10)
        fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
        waits = []
        for _ in range(40):  # until a call reaches it (the channel reconnects first)
            waits.append(lk.step())
            if waits[-1] == 0.0 or lk.state()["beats"] > before:
                break
            time.sleep(0.25)
        assert waits[-1] == 0.0 and lk.state()["beats"] == before, (waits, lk.state())
        assert lk.state()["last_error"] is None  # not an error: a request for the list
        steps(lk, 1)
        assert lk.state()["beats"] == before + 1, lk.state()
    finally:
        lk.stop()
        fleet.stop()

"""Fill windows go by the fleet manager's time on a box whose clock is off: a site's
"02:00-03:00" is the fleet's 02:00, which a box 5 h ahead reads as 07:00. The fleet link's
clock correction reaches the fill scheduler (appliance/daemon.py), which judges its windows,
and its runs' Pacer, at its clock plus it (FillScheduler.now); the window rules stay pure
(edgeflix/fillwindow.py).

The scheduler in this process on an injected clock first; then a real origin, a real
`edgeflix fleet serve` whose site window is open now, and a real `edgeflix appliance run`
5 h ahead (its window shut on its own clock), which fills in it.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from appliance.fill.runner import read_state
from appliance.fill.scheduler import FillScheduler
from edgeflix.fillwindow import fleet_now
from tests.appliance.test_clock_persisted import (
    AHEAD_S,
    box_toml,
    fleet_toml,
    skewed_box,
    wait_status,
)
from tests.appliance.test_fill_scheduler import (
    _appliance_holding_bunny,
    _bunny_plan,
    _wait_for,
    at,
)
from tests.conftest import run_cli
from tests.integration.daemon_support import status
from tests.integration.serve_support import make_title, start

H = 3600.0
BOUND_S = 60.0


def test_fleet_now_is_the_box_clock_plus_the_correction() -> None:
    assert fleet_now(at(7, 5), -5 * H) == at(2, 5)
    assert fleet_now(at(7, 5), 0.0) == at(7, 5)


def test_a_box_5h_ahead_fills_in_the_fleets_window_not_its_own(tmp_path: Path) -> None:
    """The plan's 02:00-03:00 UTC window; the box's clock reads 07:05 at the fleet's 02:05."""
    cfg = _appliance_holding_bunny(tmp_path)
    box_clock = {"now": at(7, 5)}
    sched = FillScheduler(cfg, now=lambda: box_clock["now"], poll_s=0.02)
    sched.start()
    try:
        sched.submit_plan(_bunny_plan())
        time.sleep(0.2)  # several turns: shut on the box's clock
        assert sched.state()["runs"] == 0 and sched.state()["window_open"] is False
        sched.set_clock_correction(-5 * H)  # the fleet link learned it
        assert _wait_for(lambda: sched.state()["runs"] == 1)
        state = sched.state()
        assert state["window_open"] is True and state["clock_correction_s"] == -5 * H
        assert state["next_run"] == at(2, day=11).isoformat()  # the fleet's next 02:00
        done = read_state(cfg.fill.staging)
        assert done is not None and done["titles"]["bunny"]["state"] == "held"

        # NTP sets the box's clock right, and the link drops its correction: the same
        # instant, the same window. Due times read off the old time are not kept (one more
        # run, inside the window, finds the title held); the next is the fleet's 02:00.
        box_clock["now"] = at(2, 6)
        sched.set_clock_correction(0.0)
        assert _wait_for(lambda: sched.state()["runs"] == 2)
        assert sched.state()["next_run"] == at(2, day=11).isoformat()
        assert sched.state()["clock_correction_s"] == 0.0
    finally:
        sched.stop()


def test_a_correction_that_is_no_number_is_refused(tmp_path: Path) -> None:
    sched = FillScheduler(_appliance_holding_bunny(tmp_path))
    with pytest.raises(ValueError):
        sched.set_clock_correction(float("nan"))
    assert sched.clock_correction == 0.0


# -- real processes --------------------------------------------------------------------------


def open_now() -> str:
    """A window open for an hour at least on the true clock (the fleet's), and shut on a
    clock AHEAD_S ahead of it."""
    h = datetime.now(UTC).hour
    assert AHEAD_S == 5 * H  # shut from h+2 to h+24: the box reads h+5
    return f"{h:02d}:00-{(h + 2) % 24:02d}:00"


def held(config: Path) -> dict[str, str]:
    out = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    return {t["id"]: t["state"] for t in json.loads(out.stdout)}


def test_a_real_box_5h_ahead_fills_inside_its_sites_window(tmp_path: Path) -> None:
    store = tmp_path / "origin"
    for title in ("film", "show"):
        make_title(store / "titles" / title, title)
    origin = start(
        ["origin", "serve", "--store", str(store), "--listen", "127.0.0.1:0"], ("listening",)
    )
    config = fleet_toml(tmp_path, origin.url, open_now())
    with (tmp_path / "fleet.log").open("wb") as err:
        fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=err)
    try:
        box_config = box_toml(tmp_path, fleet)
        with skewed_box(tmp_path, box_config, tmp_path / "box.log") as box:
            wait_status(box, lambda d: "show" in _schedule(d)["titles"], "a plan holding show")
            deadline = time.monotonic() + BOUND_S
            while time.monotonic() < deadline and held(box_config).get("show") != "ready":
                time.sleep(0.5)
            doc = status(box)
            assert held(box_config).get("show") == "ready", (_schedule(doc), doc["daemon"])
            done = wait_status(box, lambda d: _schedule(d)["next_run"], "the run over")
            schedule = _schedule(done)
            assert schedule["window_open"] is True and schedule["last_error"] is None
            assert schedule["clock_correction_s"] == pytest.approx(-AHEAD_S, abs=5)
            # The next run is at the window's next opening on the fleet's clock: tomorrow.
            next_run = datetime.fromisoformat(schedule["next_run"])
            assert timedelta(hours=21) < next_run - datetime.now(UTC) < timedelta(hours=24)
    finally:
        fleet.stop()
        origin.stop()


def _schedule(doc: dict[str, Any]) -> dict[str, Any]:
    """/status's fill schedule (no plan yet: an empty one)."""
    schedule: dict[str, Any] = doc["daemon"]["fill_schedule"] or {"titles": []}
    return schedule

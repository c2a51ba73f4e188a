"""The daemon's fill scheduler: the pure timing rules, and the scheduler thread on a real
Store driven by an injected clock (a held title needs no network, so a run is observable
through the fill state file without an origin)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from appliance import config as appliance_config
from appliance.config import ApplianceConfig
from appliance.fill.plan import FillPlan, PlannedTitle
from appliance.fill.runner import read_state
from appliance.fill.scheduler import (
    FillScheduler,
    latest_due,
    next_due,
    retry_delay_s,
    start_at,
)
from appliance.fill.storage import RUN_LOCK
from appliance.fill.window import parse_window
from appliance.store import Store, locks_folder
from edgeflix.fillwindow import FillWindow
from tests.appliance.storage_fixtures import make_title, storage_toml

WINDOW = parse_window("02:00-03:00", "UTC")


def at(hour: int, minute: int = 0, day: int = 10) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def test_start_at_waits_for_the_window() -> None:
    assert start_at(None, at(12)) == at(12)
    assert start_at(WINDOW, at(2, 30)) == at(2, 30)
    assert start_at(WINDOW, at(1)) == at(2)
    assert start_at(WINDOW, at(4)) == at(2, day=11)


def test_next_due_is_the_following_window() -> None:
    # A run that ended inside tonight's window waits for tomorrow's, not this one again.
    assert next_due(WINDOW, at(2, 40), 3600) == at(2, day=11)
    # One that ended before the window (nothing to fetch) is due at tonight's opening.
    assert next_due(WINDOW, at(1), 3600) == at(2)
    assert next_due(None, at(12), 600) == at(12, 10)


def test_a_failed_run_is_retried_inside_the_same_window() -> None:
    assert next_due(WINDOW, at(2), 3600, retry_s=60) == at(2, 1)
    # Past the window's close: the next window, as after a good run.
    assert next_due(WINDOW, at(2, 59), 3600, retry_s=120) == at(2, day=11)
    # A run that overran the window does not retry before the next opening.
    assert next_due(WINDOW, at(4), 3600, retry_s=60) == at(2, day=11)
    assert next_due(None, at(12), 3600, retry_s=60) == at(12, 1)
    assert [retry_delay_s(n) for n in (1, 2, 3)] == [60, 120, 240]
    assert retry_delay_s(10_000) == 3600


@given(st.integers(0, 24 * 60 * 3 - 1))
def test_next_due_is_always_a_future_opening(minutes: int) -> None:
    finished = at(0) + timedelta(minutes=minutes)
    due = next_due(WINDOW, finished, 3600)
    assert due > finished
    assert WINDOW.is_open(due) and not WINDOW.is_open(due - timedelta(seconds=1))
    assert due - finished <= timedelta(days=1)


BERLIN = parse_window("02:00-06:00", "Europe/Berlin")  # DST nights included


@given(
    st.sampled_from([WINDOW, BERLIN, parse_window("22:00-02:00", "Europe/Berlin"), None]),
    st.integers(0, 24 * 60 * 400),
    st.integers(0, 24 * 60 * 3),
    st.sampled_from([None, 60.0, 3600.0]),
)
def test_no_due_run_lies_beyond_latest_due(
    window: FillWindow | None, minutes: int, later: int, retry_s: float | None
) -> None:
    """Every due time next_due gives after a run finishing at or before `now` is within
    latest_due at `now`: only a clock stepped back puts one beyond it."""
    finished = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    now = finished + timedelta(minutes=later)
    due = next_due(window, finished, 600.0, retry_s)
    assert due <= latest_due(window, now, 600.0)


def test_an_always_open_window_is_due_as_without_one() -> None:
    always = parse_window("00:00-24:00", "Europe/Berlin")
    assert always.is_open(at(0)) and start_at(always, at(0)) == at(0)
    assert next_due(always, at(23, 59), 600) == at(0, 9, day=11)  # not at some "opening"
    assert next_due(always, at(12), 600, retry_s=60) == at(12, 1)


def _wait_for(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _appliance_holding_bunny(tmp_path: Path) -> ApplianceConfig:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd",)))
    cfg = cfg.model_copy(
        update={"fill": cfg.fill.model_copy(update={"staging": tmp_path / "staging"})}
    )
    store = Store(cfg.storage)
    store.load("bunny", make_title(tmp_path / "src", "bunny", (5000, 6000)))
    store.close()
    return cfg


def _bunny_plan() -> FillPlan:
    """Bunny (held already) from an origin that is not there, in a 02:00-03:00 window."""
    return FillPlan(
        titles=(PlannedTitle(id="bunny", sources=("http://127.0.0.1:9",)),),
        window="02:00-03:00",
        timezone="UTC",
        prune=False,
    )


def test_scheduler_runs_inside_the_window_only(tmp_path: Path) -> None:
    cfg = _appliance_holding_bunny(tmp_path)
    clock = {"now": at(1)}
    sched = FillScheduler(cfg, now=lambda: clock["now"], poll_s=0.02)
    plan = _bunny_plan()
    sched.start()
    try:
        sched.submit_plan(plan)
        time.sleep(0.2)  # several scheduler turns with the window shut
        assert sched.state()["runs"] == 0
        assert read_state(cfg.fill.staging) is None
        assert sched.state()["window_open"] is False

        clock["now"] = at(2, 5)
        sched.wake()
        assert _wait_for(lambda: sched.state()["runs"] == 1)
        state = read_state(cfg.fill.staging)
        assert state is not None and state["titles"]["bunny"]["state"] == "held"
        assert sched.state()["next_run"] == at(2, day=11).isoformat()

        # A kick (disk lost) inside the window runs again now; outside it waits.
        clock["now"] = at(5)
        sched.kick()
        time.sleep(0.2)
        assert sched.state()["runs"] == 1
        clock["now"] = at(2, 1, day=11)
        sched.wake()
        assert _wait_for(lambda: sched.state()["runs"] == 2)
    finally:
        sched.stop()


def _replace(path: Path, text: str) -> None:
    """As an editor or the fleet link saves: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _watching(tmp_path: Path) -> tuple[FillScheduler, Path]:
    """A started scheduler following plan.json, which names a 02:00-03:00 window."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd",)))
    plan_file = tmp_path / "plan.json"
    _replace(plan_file, '{"titles": [], "window": "02:00-03:00", "timezone": "UTC"}')
    sched = FillScheduler(cfg, plan_file=plan_file, now=lambda: at(12), poll_s=0.02)
    sched.start()
    assert _wait_for(lambda: sched.state()["window"] == "02:00-03:00")
    return sched, plan_file


def test_plan_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    sched, plan_file = _watching(tmp_path)
    try:
        _replace(plan_file, '{"titles": [], "window": "04:00-05:30", "timezone": "UTC"}')
        assert _wait_for(lambda: sched.state()["window"] == "04:00-05:30")
        _replace(plan_file, "{not json")
        assert _wait_for(lambda: sched.state()["last_error"] is not None)
        assert sched.state()["window"] == "04:00-05:30"  # a bad file keeps the last good plan
    finally:
        sched.stop()


def test_a_run_that_fails_inside_the_window_is_retried_in_it(tmp_path: Path) -> None:
    """`appliance fill` holds the run lock at 02:00: the daemon's run fails. It is tried
    again a minute later (then two), not at tomorrow's window, and once it succeeds the next
    run is tomorrow's."""
    cfg = _appliance_holding_bunny(tmp_path)
    lock = locks_folder(cfg.storage.index) / RUN_LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    clock = {"now": at(2)}
    sched = FillScheduler(cfg, now=lambda: clock["now"], poll_s=0.02)
    plan = _bunny_plan()
    sched.start()
    try:
        sched.submit_plan(plan)
        assert _wait_for(lambda: sched.state()["runs"] == 1)
        assert "another fill" in (sched.state()["last_error"] or "")
        assert sched.state()["next_run"] == at(2, 1).isoformat()
        clock["now"] = at(2, 1)
        sched.wake()
        assert _wait_for(lambda: sched.state()["runs"] == 2)
        assert sched.state()["next_run"] == at(2, 3).isoformat()  # backing off
        os.close(fd)  # the other fill is done
        clock["now"] = at(2, 3)
        sched.wake()
        assert _wait_for(lambda: sched.state()["runs"] == 3)
        assert sched.state()["last_error"] is None
        assert sched.state()["next_run"] == at(2, day=11).isoformat()
    finally:
        sched.stop()


def test_a_deeply_nested_plan_file_is_refused_and_the_next_one_followed(tmp_path: Path) -> None:
    sched, plan_file = _watching(tmp_path)
    try:
        _replace(plan_file, "[" * 200_000 + "]" * 200_000)
        assert _wait_for(lambda: "nested too deeply" in (sched.state()["last_error"] or ""))
        _replace(plan_file, '{"titles": [], "window": "04:00-05:30", "timezone": "UTC"}')
        assert _wait_for(lambda: sched.state()["window"] == "04:00-05:30")
    finally:
        sched.stop()


def test_an_error_in_a_scheduler_turn_does_not_end_the_thread(tmp_path: Path) -> None:
    """Whatever goes wrong in one turn (here the injected clock fails once, in the scheduler
    thread only) is logged and shown; the thread goes on following the plan file."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd",)))
    plan_file = tmp_path / "plan.json"
    _replace(plan_file, '{"titles": [], "window": "02:00-03:00", "timezone": "UTC"}')
    fail = threading.Event()

    def now() -> datetime:
        if fail.is_set() and threading.current_thread().name == "fill-scheduler":
            fail.clear()
            raise RuntimeError("the clock broke")
        return at(12)

    sched = FillScheduler(cfg, plan_file=plan_file, now=now, poll_s=0.02)
    sched.start()
    try:
        assert _wait_for(lambda: sched.state()["window"] == "02:00-03:00")
        fail.set()
        sched.wake()
        assert _wait_for(lambda: "the clock broke" in (sched.state()["last_error"] or ""))
        _replace(plan_file, '{"titles": [], "window": "04:00-05:30", "timezone": "UTC"}')
        assert _wait_for(lambda: sched.state()["window"] == "04:00-05:30")
        assert sched._thread.is_alive()
    finally:
        sched.stop()


def test_a_clock_stepped_back_does_not_skip_the_nights_until_it_catches_up(
    tmp_path: Path,
) -> None:
    """The run on 10 March puts the next at 11 March 02:00; then NTP steps the clock back a
    month (it booted with an RTC a month fast). Kept, that due time would skip every night's
    fill for a month. It is due now instead: in the window at once, or at its opening."""
    cfg = _appliance_holding_bunny(tmp_path)
    clock = {"now": at(2, 5)}
    sched = FillScheduler(cfg, now=lambda: clock["now"], poll_s=0.02)
    sched.start()
    try:
        sched.submit_plan(_bunny_plan())
        assert _wait_for(lambda: sched.state()["runs"] == 1)
        assert sched.state()["next_run"] == at(2, day=11).isoformat()

        clock["now"] = datetime(2026, 2, 8, 12, 0, tzinfo=UTC)  # a month back, window shut
        sched.wake()
        assert _wait_for(lambda: sched.state()["next_run"] == clock["now"].isoformat())
        assert sched.state()["runs"] == 1
        clock["now"] = datetime(2026, 2, 9, 2, 10, tzinfo=UTC)  # that night's window
        sched.wake()
        assert _wait_for(lambda: sched.state()["runs"] == 2)
        assert sched.state()["next_run"] == datetime(2026, 2, 10, 2, 0, tzinfo=UTC).isoformat()

        clock["now"] = datetime(2026, 1, 9, 2, 30, tzinfo=UTC)  # back again, window open
        sched.wake()
        assert _wait_for(lambda: sched.state()["runs"] == 3)
        assert sched.state()["next_run"] == datetime(2026, 1, 10, 2, 0, tzinfo=UTC).isoformat()
    finally:
        sched.stop()

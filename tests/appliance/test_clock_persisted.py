"""The clock correction outlives a restart: a box whose clock is off learned from the fleet
manager's refusal how far (appliance/fleetlink_rpc.py), and keeps that in clock.json, so the
next start signs its first beat, and its workers check URL tokens, at the fleet's time, not
at its own clock until a beat is refused again. What is read back is believed only while it
can be (appliance/fleetlink_clock.restored_correction): a day at most, and, within one boot,
moved back by a step of the clock since (NTP).

The rule first; then clock.json as LinkState reads it; then the link in this process on
injected clocks; then a real `edgeflix fleet serve` and a real `edgeflix appliance run` 5 h
ahead (a `sitecustomize` seam), restarted.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.config import ApplianceConfig
from appliance.fleetlink import FleetLink
from appliance.fleetlink_clock import (
    CORRECTION_KEEP_S,
    Restored,
    clock_note,
    restored_correction,
)
from appliance.fleetlink_files import CLOCK_FILE, SavedCorrection
from appliance.fleetlink_state import LinkState
from tests.appliance.test_clock_corrected_tokens import Clock, Sinks
from tests.conftest import run_cli
from tests.integration.daemon_support import seam_env, status
from tests.integration.serve_support import Server, make_title, start

T = 1_800_000_000.0  # the fleet's time
H = 3600.0
DAY = 86_400.0
FLEET = "127.0.0.1:9"
BOUND_S = 60.0


# -- appliance/fleetlink_clock.py: what a start believes --------------------------------------

SAVED = SavedCorrection(-5 * H, T + 5 * H, 1000.0, "boot-1", FLEET)  # a box 5 h ahead


@pytest.mark.parametrize(
    ("now", "mono", "boot", "want", "why"),
    [
        # Restarted in the same boot, the clock left alone: as saved, however far off.
        (T + 5 * H + 600, 1600.0, "boot-1", -5 * H, "as_saved"),
        # NTP set the clock right while the daemon was down: nothing left to correct.
        (T + 600.2, 1600.0, "boot-1", 0.0, "stepped"),
        # Set part of the way: the rest, as a step seen within a run leaves it.
        (T + 3 * H + 600, 1600.0, "boot-1", -3 * H, "stepped"),
        # More than a day since the fleet last took it.
        (T + 5 * H + DAY + 60, 1000.0 + DAY + 60, "boot-1", 0.0, "old"),
        # Rebooted: no step can show on the monotonic clock; on the wall clock within a day.
        (T + 5 * H + 600, 30.0, "boot-2", -5 * H, "as_saved"),
        (T + 5 * H + DAY + 60, 30.0, "boot-2", 0.0, "old"),
        # Rebooted at 1970 (no RTC), or at a fake-hwclock reading before the save: set back.
        (86_401.0, 30.0, "boot-2", 0.0, "clock_back"),
        (T + 5 * H - 60, 30.0, "boot-2", 0.0, "clock_back"),
        # No boot id to read (not Linux): the wall clock's rules.
        (T + 5 * H - 60, 1600.0, "", 0.0, "clock_back"),
    ],
)
def test_a_saved_correction_is_believed_only_while_it_can_be(
    now: float, mono: float, boot: str, want: float, why: Restored
) -> None:
    correction, _, found = restored_correction(SAVED, now, mono, boot, FLEET)
    assert found == why
    assert correction == pytest.approx(want, abs=1)


def test_a_correction_learned_of_another_fleet_or_none_at_all_is_not_taken() -> None:
    got = restored_correction(SAVED, T + 5 * H, 1000.0, "boot-1", "10.0.0.1:7000")
    assert got[0] == 0.0 and got[2] == "other_fleet"
    for held in (0.0, 0.3, 31 * DAY, math.nan):  # none, noise, no clock a box is left at
        saved = SavedCorrection(held, T, 1000.0, "boot-1", FLEET)
        assert restored_correction(saved, T, 1000.0, "boot-1", FLEET)[::2] == (0.0, "none")


def test_the_age_bound_leaves_a_drifting_clock_far_inside_what_the_fleet_takes() -> None:
    from edgeflix.proto.auth import MAX_SKEW_S

    assert CORRECTION_KEEP_S * 100e-6 < MAX_SKEW_S / 4  # an RTC off by 100 ppm


# -- clock.json, as LinkState reads it ---------------------------------------------------------


def test_clock_json_reads_back_what_was_saved_and_ignores_fields_it_does_not_know(
    tmp_path: Path,
) -> None:
    state = LinkState(tmp_path / "fleet")
    assert state.saved_correction() is None
    state.save_correction(SAVED)
    body = json.loads((tmp_path / "fleet" / CLOCK_FILE).read_text())
    assert body["format"] == 1 and body["correction"] == -5 * H
    assert state.saved_correction() == SAVED
    body["later_field"] = {"from": "a later version"}
    (tmp_path / "fleet" / CLOCK_FILE).write_text(json.dumps(body))
    assert state.saved_correction() == SAVED


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"format": 1, "correction": -18000, "at": 1.0, "mono": 1.0}',  # no fleet
        '{"format": 1, "correction": "-18000", "at": 1.0, "mono": 1.0, "fleet": "x"}',
        '{"format": 1, "correction": NaN, "at": 1.0, "mono": 1.0, "fleet": "x"}',
        '{"format": 2, "correction": -18000, "at": 1.0, "mono": 1.0, "fleet": "x"}',
        '{"format": 1, "correction": -18000, "at": 1.0, "mono": 1.0, "fleet": "x", "boot": 7}',
    ],
)
def test_a_damaged_or_later_clock_json_reads_as_none(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="appliance.fleet")
    state = LinkState(tmp_path / "fleet")
    (tmp_path / "fleet" / CLOCK_FILE).write_text(text)
    assert state.saved_correction() is None
    assert [r.getMessage() for r in caplog.records] == ["fleet.state_unusable"]


# -- the link in this process, no fleet --------------------------------------------------------


def _config(tmp: Path, url: str = FLEET) -> ApplianceConfig:
    return ApplianceConfig.model_validate(
        {
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(tmp / "index.sqlite")},
            "fleet": {"url": url, "grace_period_s": 3600.0},
        }
    )


@contextmanager
def _started(
    tmp: Path, wall: Clock, steady: Clock, boot: str = "boot-1", url: str = FLEET
) -> Iterator[tuple[FleetLink, Sinks]]:
    """A link as the daemon's start makes one (restored from the state folder)."""
    sinks = Sinks()
    lk = FleetLink(
        _config(tmp, url),
        "http://127.0.0.1:8081",
        sinks.build(),
        clock=wall,
        monotonic=steady,
        boot=boot,
    )
    lk.restore()
    try:
        yield lk, sinks
    finally:
        lk.stop()


def _learned(tmp: Path, wall: Clock, steady: Clock, correction: float) -> None:
    """A run that learned `correction` from a refusal, and stopped."""
    with _started(tmp, wall, steady) as (lk, _):
        lk.rpc._relearn(correction)  # what a clock-skew refusal of a beat does
        assert lk.rpc.correction == correction


def _said(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [getattr(r, "edgeflix_fields", {}) for r in caplog.records if r.getMessage() == name]


def test_the_next_start_signs_and_checks_tokens_at_the_fleets_time_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    wall, steady = Clock(T + 5 * H), Clock(1000.0)
    _learned(tmp_path, wall, steady, -5 * H)
    wall.now, steady.now = wall.now + 300, steady.now + 300  # a restart, five minutes on
    with _started(tmp_path, wall, steady) as (lk, sinks):
        # Before any call: the workers have it with the cached keys, the link signs with it.
        assert lk.rpc.correction == -5 * H and sinks.corrections == [-5 * H]
        assert lk.rpc.fleet_time() == pytest.approx(T + 300)
        assert lk.state()["clock"] == clock_note(-5 * H)
    (restored,) = _said(caplog, "fleet.clock_restored")
    assert restored["offset_s"] == -5 * H and restored["why"] == "as_saved"
    assert restored["age_s"] == pytest.approx(300, abs=1)


def test_ntp_setting_the_clock_while_the_daemon_was_down_drops_it_for_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    wall, steady = Clock(T + 5 * H), Clock(1000.0)
    _learned(tmp_path, wall, steady, -5 * H)
    wall.now, steady.now = T + 60, steady.now + 60  # NTP stepped it 5 h back meanwhile
    with _started(tmp_path, wall, steady) as (lk, sinks):
        assert lk.rpc.correction == 0.0 and sinks.corrections == []
        assert lk.state()["clock"] is None
    assert _said(caplog, "fleet.clock_forgotten")[0]["why"] == "stepped"
    # Saved so: a start after a reboot (where no step shows) does not take it back.
    wall.now, steady.now = T + 120, 5.0
    with _started(tmp_path, wall, steady, boot="boot-2") as (lk, _):
        assert lk.rpc.correction == 0.0


def test_a_step_part_of_the_way_leaves_the_rest_and_a_reboot_keeps_it(tmp_path: Path) -> None:
    wall, steady = Clock(T + 5 * H), Clock(1000.0)
    _learned(tmp_path, wall, steady, -5 * H)
    wall.now, steady.now = T + 2 * H + 60, steady.now + 60  # set 3 h back, still 2 h ahead
    with _started(tmp_path, wall, steady) as (lk, sinks):
        assert lk.rpc.correction == pytest.approx(-2 * H, abs=1)
        assert sinks.corrections == [lk.rpc.correction]
    wall.now, steady.now = T + 2 * H + 600, 20.0  # rebooted, its RTC still 2 h ahead
    with _started(tmp_path, wall, steady, boot="boot-2") as (lk, _):
        assert lk.rpc.correction == pytest.approx(-2 * H, abs=1)


def test_a_correction_the_fleet_goes_on_taking_stays_and_one_unheard_of_goes(
    tmp_path: Path,
) -> None:
    """Its age counts from the fleet's last answer to a call signed with it: a box connected
    for days restarts with it; one down for over a day (or unanswered) starts without."""
    wall, steady = Clock(T + 5 * H), Clock(1000.0)
    with _started(tmp_path, wall, steady) as (lk, _):
        lk.rpc._relearn(-5 * H)
        for _ in range(30):  # 30 h of answered beats
            wall.now, steady.now = wall.now + H, steady.now + H
            lk._contact()
    wall.now, steady.now = wall.now + 10 * H, steady.now + 10 * H
    with _started(tmp_path, wall, steady) as (lk, _):
        assert lk.rpc.correction == -5 * H  # 10 h since the fleet last took it
    wall.now, steady.now = wall.now + DAY, steady.now + DAY  # then unheard of for a day
    with _started(tmp_path, wall, steady) as (lk, _):
        assert lk.rpc.correction == 0.0


def test_a_correction_of_another_fleet_is_not_taken(tmp_path: Path) -> None:
    wall, steady = Clock(T + 5 * H), Clock(1000.0)
    _learned(tmp_path, wall, steady, -5 * H)
    with _started(tmp_path, wall, steady, url="127.0.0.1:10") as (lk, _):
        assert lk.rpc.correction == 0.0


def test_a_correction_the_fleet_takes_back_is_saved_as_none(tmp_path: Path) -> None:
    wall, steady = Clock(T + 5 * H), Clock(1000.0)
    _learned(tmp_path, wall, steady, -5 * H)
    with _started(tmp_path, wall, steady) as (lk, _):
        lk.rpc._relearn(0.0)  # a refusal said the clock now reads right
    with _started(tmp_path, wall, steady) as (lk, _):
        assert lk.rpc.correction == 0.0


# -- real processes: a fleet manager, an appliance 5 h ahead, restarted ---------------------

# Every Python process started with it reads its wall clock EDGEFLIX_TEST_CLOCK_SKEW_S off:
# time.time() and datetime.now() alike (a box's clock is one clock).
SEAM = """
import datetime as _dt, os, time
_skew = float(os.environ.get("EDGEFLIX_TEST_CLOCK_SKEW_S") or 0)
if _skew:
    _real = time.time
    time.time = lambda: _real() + _skew

    class _SkewedDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls.fromtimestamp(time.time(), tz)

    _dt.datetime = _SkewedDatetime
"""
AHEAD_S = 5 * H


def fleet_toml(folder: Path, origin: str = "http://127.0.0.1:9", window: str = "") -> Path:
    """A fleet manager on loopback with one site, `home` (`window`: its fill window)."""
    path = folder / "fleet.toml"
    fill_window = f'fill_window = "{window}"' if window else ""
    path.write_text(f"""
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{folder / "fleet.sqlite"}"
[heartbeat]
interval_s = 0.5
missed_beats = 3
[planner]
interval_s = 0.5
[origin]
url = "{origin}"
poll_s = 0.5
[[sites]]
name = "home"
prefixes = ["192.168.1.0/24"]
{fill_window}
""")
    return path


def box_toml(tmp: Path, fleet: Server) -> Path:
    """An appliance `a1` of site home holding `film`, enrolling with a fresh join token."""
    token = httpx.post(fleet.urls["http"] + "/join-tokens", json={"site": "home"}, timeout=10)
    (tmp / "d0").mkdir()
    config = tmp / "appliance.toml"
    config.write_text(f"""
name = "a1"
[storage]
index = "{tmp / "index.sqlite"}"
disks = [{{ path = "{tmp / "d0"}", max_bytes = 2000000000 }}]
[serve]
listen = "127.0.0.1:0"
shutdown_timeout_s = 1.0
[admin]
listen = "127.0.0.1:0"
[auth]
tokens = "required"
[fill]
staging = "{tmp / "staging"}"
[fleet]
url = "{fleet.urls["grpc"]}"
join_token = "{token.raise_for_status().json()["token"]}"
heartbeat_s = 0.5
""")
    src = make_title(tmp / "src" / "film", "film")
    run_cli(["appliance", "load", "--config", str(config), "--title", "film", "--from",
             str(src)], check=True)  # fmt: skip
    return config


@contextmanager
def skewed_box(tmp: Path, config: Path, log: Path, skew: float = AHEAD_S) -> Iterator[Server]:
    """`edgeflix appliance run` with every process of it on a clock `skew` seconds off."""
    env = seam_env(tmp, SEAM, EDGEFLIX_TEST_CLOCK_SKEW_S=str(skew))
    with log.open("ab") as err:
        box = start(["appliance", "run", "--config", str(config)], ("listening", "admin"),
                    env, stderr=err)  # fmt: skip
    try:
        yield box
    finally:
        box.stop()


def wait_status(box: Server, cond: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        doc = status(box)
        if cond(doc):
            return doc
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {BOUND_S} s: {status(box)['daemon']}")


def clock_refusals(fleet: Server) -> float:
    text = httpx.get(fleet.urls["http"] + "/metrics", timeout=10).raise_for_status().text
    for line in text.splitlines():
        if line.startswith('edgeflix_fleet_auth_refusals_total{reason="clock_skew"} '):
            return float(line.split()[-1])
    return 0.0


def workers_correction(config: Path, doc: dict[str, Any]) -> float:
    """The clock correction in the key file the serving workers read (appliance/keyfile.py),
    in the daemon's run folder (daemon.run_folder: beside the index, outside systemd)."""
    index = config.parent / "index.sqlite"
    keys = Path(f"{index}.run") / str(doc["daemon"]["pid"]) / "keys.json"
    return float(json.loads(keys.read_text()).get("clock_correction", 0.0))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Server]:
    config = fleet_toml(tmp_path)
    with (tmp_path / "fleet.log").open("wb") as err:
        server = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=err)
    try:
        yield server
    finally:
        server.stop()


def _connected(beats: int) -> Any:
    def check(doc: dict[str, Any]) -> bool:
        link = doc["daemon"]["fleet"]
        return bool(link["phase"] == "connected" and link["beats"] >= beats)

    return check


def test_a_box_5h_ahead_restarts_on_the_fleets_time_with_no_beat_refused(
    tmp_path: Path, fleet: Server
) -> None:
    config = box_toml(tmp_path, fleet)
    with skewed_box(tmp_path, config, tmp_path / "run1.log") as box:
        doc = wait_status(box, _connected(2), "the first run's beats answered")
        assert doc["daemon"]["fleet"]["clock_correction_s"] == pytest.approx(-AHEAD_S, abs=5)
    first = clock_refusals(fleet)
    assert first >= 1  # the first run learned its correction from a refusal
    saved = json.loads((tmp_path / "fleet" / CLOCK_FILE).read_text())
    assert saved["correction"] == pytest.approx(-AHEAD_S, abs=5)

    log = tmp_path / "run2.log"
    with skewed_box(tmp_path, config, log) as box:
        # Serving from the start on the fleet's time: the workers' key file has it already.
        doc = status(box)
        assert workers_correction(config, doc) == pytest.approx(-AHEAD_S, abs=5)
        assert doc["daemon"]["fleet"]["clock_correction_s"] == pytest.approx(-AHEAD_S, abs=5)
        doc = wait_status(box, _connected(3), "the second run's beats answered")
        assert doc["daemon"]["fleet"]["last_error"] is None
    assert clock_refusals(fleet) == first  # not one beat refused for the clock
    said = log.read_text()
    assert "fleet.clock_restored" in said and "fleet.clock_skew" not in said

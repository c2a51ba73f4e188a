"""A box whose clock is off checks URL tokens, and judges key periods, on the fleet manager's
clock: the fleet signs token expiries and retires keys on its own, and the box learned how
far its clock is off from a clock-skew refusal (appliance/fleetlink_rpc.py). The correction
reaches the serving workers with the keys (appliance/keyfile.py), and moves back when NTP
steps the box's clock.

Pure parts first; then the link in this process on an injected clock; then a real
`edgeflix fleet serve` and a real serving worker whose clock runs hours off (a
`sitecustomize` seam), the link in this process standing in for the daemon between them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.config import ApplianceConfig
from appliance.config import load as load_config
from appliance.fleetlink import FleetLink, LinkSinks
from appliance.fleetlink_clock import clock_note, correction_after_step
from appliance.fleetlink_figures import BoxHealth, Traffic
from appliance.fleetlink_keys import FleetKey, KeyHistory, next_key_history, signing_key
from appliance.keyfile import MAX_CLOCK_CORRECTION_S, KeyFile, KeySet, read_keys, write_keys
from appliance.server import ApplianceSite, DirectoryLocator
from appliance.supervisor import worker_spec
from edgeflix import tokens
from edgeflix.http.plan import ResponsePlan
from edgeflix.http.request import RequestHead
from edgeflix.http.server import FileTarget
from edgeflix.proto import auth
from edgeflix.versioning import Versioned
from tests.conftest import run_cli
from tests.integration.daemon_support import seam_env
from tests.integration.serve_support import Server, make_title, start
from tests.integration.test_fleet import FLEET_TOML
from tests.integration.test_fleet_appliances import free_port

T = 1_800_000_000.0  # the fleet's time
H = 3600.0
DAY = 86_400.0
KEY = b"k" * 32


# -- appliance/keyfile.py: the correction goes with the keys --------------------------------


class _Site:
    def __init__(self) -> None:
        self.required = False
        self.keys: dict[str, bytes] = {}
        self.keys_generation = 0
        self.clock_correction = 0.0


def test_the_correction_goes_to_the_workers_with_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    write_keys(path, KeySet(1, True, {"k1": KEY}, -5 * H))
    assert read_keys(path) == KeySet(1, True, {"k1": KEY}, -5 * H)
    site = _Site()
    assert KeyFile(path).refresh(site) is True
    assert site.clock_correction == -5 * H and site.keys_generation == 1
    # A correction alone changes no grant (tokens are checked per request): no route to
    # forget, but it applies, under its generation.
    write_keys(path, KeySet(2, True, {"k1": KEY}, 0.0))
    key_file = KeyFile(path)
    key_file.refresh(site)
    write_keys(path, KeySet(3, True, {"k1": KEY}, 120.0))
    assert key_file.refresh(site) is False
    assert site.clock_correction == 120.0 and site.keys_generation == 3


def test_a_key_file_from_before_the_correction_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"generation": 4, "tokens_required": True, "keys": {}}))
    assert read_keys(path) == KeySet(4, True, {}, 0.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 31 * DAY, "-5", True, None])
def test_a_correction_that_is_no_clock_is_refused_whole(tmp_path: Path, bad: object) -> None:
    path = tmp_path / "keys.json"
    with pytest.raises(ValueError):
        write_keys(path, KeySet(1, True, {"k1": KEY}, bad))  # type: ignore[arg-type]
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written
    write_keys(path, KeySet(1, True, {"k1": KEY}, 60.0))
    site, key_file = _Site(), KeyFile(path)
    key_file.refresh(site)
    body = json.loads(path.read_text())
    body.update(generation=2, clock_correction=bad, keys={})
    path.unlink()  # a new inode, as an atomic replace makes
    path.write_text(json.dumps(body))
    assert key_file.refresh(site) is False  # damaged: the keys and correction held stay
    assert site.keys == {"k1": KEY} and site.clock_correction == 60.0


def test_the_bound_is_the_one_corrections_are_learned_within() -> None:
    assert MAX_CLOCK_CORRECTION_S == auth.MAX_CORRECTION_S


# -- appliance/server.py: the token check ---------------------------------------------------


def _site(tmp: Path, box_clock: float, correction: float) -> ApplianceSite:
    """A worker's site whose clock reads `box_clock`, keys and correction from a key file."""
    (tmp / "d0" / "titles" / "film").mkdir(parents=True, exist_ok=True)
    (tmp / "d0" / "titles" / "film" / "master.m3u8").write_text("#EXTM3U\n")
    site = ApplianceSite(
        DirectoryLocator((tmp / "d0",)), tokens_required=True, keys={}, clock=lambda: box_clock
    )
    write_keys(tmp / "keys.json", KeySet(1, True, {"k1": KEY}, correction))
    KeyFile(tmp / "keys.json").refresh(site)
    return site


def _status(site: ApplianceSite, expires: float) -> int:
    token = tokens.sign("film", tokens.SigningKey("k1", KEY), int(expires))
    path = tokens.signed_path(token, "film", "master.m3u8")
    head = RequestHead("GET", path, path, "", 1, {}, True)
    got = site.route(head, tuple(path.strip("/").split("/")), "192.168.1.50")
    if isinstance(got, FileTarget):
        return 200
    assert isinstance(got, ResponsePlan)
    return got.status


def test_a_box_hours_ahead_checks_tokens_on_the_fleets_clock(tmp_path: Path) -> None:
    """Steered URLs carry a token the fleet made for 4 h on its clock."""
    site = _site(tmp_path, T + 5 * H, -5 * H)
    assert _status(site, T + 4 * H) == 200
    assert _status(site, T - 60) == 403  # expired on the fleet's clock
    assert site.token_rejections == {"expired": 1}
    site.clock_correction = 0.0  # as before: every freshly steered URL refused
    assert _status(site, T + 4 * H) == 403


def test_a_box_behind_refuses_tokens_the_fleets_clock_says_expired(tmp_path: Path) -> None:
    site = _site(tmp_path, T - 5 * H, 5 * H)
    assert _status(site, T - 60) == 403
    assert _status(site, T + 60) == 200


def test_a_box_days_behind_takes_the_longest_lived_token_a_signer_hands_out(
    tmp_path: Path,
) -> None:
    """The bound on an expiry (ExpiryTooFar) is on the fleet's clock too."""
    site = _site(tmp_path, T - 3 * DAY, 3 * DAY)
    assert _status(site, T + tokens.MAX_TTL_S) == 200
    site.clock_correction = 0.0
    assert _status(site, T + tokens.MAX_TTL_S) == 403
    assert site.token_rejections == {"expiry_too_far": 1}


# -- appliance/fleetlink_clock.py -----------------------------------------------------------


@pytest.mark.parametrize(
    ("correction", "step", "after"),
    [
        (-5 * H, -5 * H - 0.2, 0.0),  # NTP set a clock 5 h ahead right: round-trip noise left
        (-5 * H, -3 * H, -2 * H),  # set part of the way
        (600.0, 600.0, 0.0),  # 10 min behind, set right
        (600.0, -600.0, 1200.0),  # stepped further off: still corrected
        (0.0, 5 * H, 0.0),  # none held: nothing to go by (the next refusal says)
        (29 * DAY, -2 * DAY, 0.0),  # further than any correction learned
        (-600.0, math.nan, 0.0),
    ],
)
def test_a_clock_step_moves_the_correction_back_by_as_much(
    correction: float, step: float, after: float
) -> None:
    assert correction_after_step(correction, step) == pytest.approx(after)


def test_status_says_how_far_off_the_clock_is_and_what_is_corrected() -> None:
    assert clock_note(0.0) is None
    note = clock_note(-18_000.4) or ""
    assert note.startswith("clock off by +18000 s from the fleet manager's: corrected for ")
    assert "fleet calls, token checks" in note and "NTP" in note
    assert (clock_note(600.0) or "").startswith("clock off by -600 s")


def test_a_key_dropped_at_its_end_on_the_fleets_clock_was_retired_not_revoked() -> None:
    k1 = FleetKey("k1", KEY, T - 30 * H, T - 6 * H, T + 30, 6 * H)
    k2 = FleetKey("k2", b"s" * 32, T - 6 * H, 0.0, 0.0, 6 * H)
    later = next_key_history((k1, k2), KeyHistory(), (k2,), T + 60)
    assert later.revoked == () and later.history.revoked == {}
    # Judged an hour behind, the same drop read as a revocation.
    assert next_key_history((k1, k2), KeyHistory(), (k2,), T + 60 - H).revoked == ("k1",)


# -- the link in this process, no fleet -----------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sinks:
    def __init__(self) -> None:
        self.keys: list[dict[str, bytes]] = []
        self.corrections: list[float] = []

    def build(self) -> LinkSinks:
        return LinkSinks(
            health=lambda: BoxHealth("ok", (), 1e9),
            traffic=lambda: Traffic({}, 0, 0),
            submit_plan=lambda plan: None,
            set_keys=self.keys.append,
            set_clock_correction=self.corrections.append,
        )


def _link(tmp: Path, sinks: Sinks, wall: Clock, steady: Clock) -> FleetLink:
    config = ApplianceConfig.model_validate(
        {
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(tmp / "index.sqlite")},
            "fleet": {"url": "127.0.0.1:9", "grace_period_s": 3600.0},
        }
    )
    lk = FleetLink(config, "http://127.0.0.1:8081", sinks.build(), clock=wall, monotonic=steady)
    lk.restore()
    return lk


def _said(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [getattr(r, "edgeflix_fields", {}) for r in caplog.records if r.getMessage() == name]


def test_a_box_behind_takes_the_fleets_key_rotations_for_what_they_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An hour behind the fleet: the fleet drops k1 once its last token expired, on its
    clock, while the box's reads 59 minutes before that. Not a revocation: restored from a
    backup that still carries k1, the manager's set is taken, not refused."""
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    sinks, wall, steady = Sinks(), Clock(T - H), Clock(1000.0)
    lk = _link(tmp_path, sinks, wall, steady)
    lk.rpc.correction = H  # learned from the first refusal of a beat
    k1 = FleetKey("k1", KEY, T - 30 * H, T - 6 * H, T + 30, 6 * H)
    k2 = FleetKey("k2", b"s" * 32, T - 6 * H, 0.0, 0.0, 6 * H)
    assert lk.apply_keys(Versioned("keys", 1, (k1, k2))) == "applied"
    wall.now += 60.0
    assert lk.apply_keys(Versioned("keys", 2, (k2,))) == "applied"
    assert lk.key_history.revoked == {} and not _said(caplog, "fleet.keys_revoked")
    # A manager restored from a backup made while k1 still signed, rebased above ours.
    k1_signing = FleetKey("k1", KEY, T - 30 * H, 0.0, 0.0, 6 * H)
    assert lk.apply_keys(Versioned("keys", 7, (k1_signing,)), rebased=True) == "applied"
    assert not _said(caplog, "fleet.revoked_key_returned")
    assert "k1" in sinks.keys[-1]
    lk.rpc.close()


def test_the_workers_get_the_correction_and_ntp_setting_the_clock_takes_it_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    sinks, wall, steady = Sinks(), Clock(T + 5 * H), Clock(1000.0)
    lk = _link(tmp_path, sinks, wall, steady)
    assert sinks.corrections == []  # the workers start with none: nothing to say
    lk.rpc.correction = -5 * H  # learned from a refusal
    lk.check_grace()
    assert sinks.corrections == [-5 * H]
    st = lk.state()
    assert st["clock_correction_s"] == -5 * H and st["clock"] == clock_note(-5 * H)
    # NTP steps the box's clock back by 3 h, then by the 2 h left.
    wall.now, steady.now = wall.now - 3 * H + 1, steady.now + 1
    lk.check_grace()
    assert lk.rpc.correction == pytest.approx(-2 * H) and sinks.corrections[-1] == -2 * H
    wall.now, steady.now = T + 2, steady.now + 1
    lk.check_grace()
    assert lk.rpc.correction == 0.0 and sinks.corrections[-1] == 0.0
    assert lk.state()["clock"] is None
    offsets = _said(caplog, "fleet.clock_offset")
    assert [o["offset_s"] for o in offsets] == [-2 * H, 0.0]
    assert [o["stepped_s"] for o in offsets] == [-3 * H, -2 * H]
    # A step with no correction held makes none (it had nothing to go by).
    wall.now, steady.now = T + 5 * H, steady.now + 1
    lk.check_grace()
    assert lk.rpc.correction == 0.0 and len(sinks.corrections) == 3
    lk.rpc.close()


# -- real processes: a fleet manager, a serving worker hours off -----------------------------

# Every Python process started with it reads its wall clock EDGEFLIX_TEST_CLOCK_SKEW_S off.
SEAM = """
import os, time
_skew = float(os.environ.get("EDGEFLIX_TEST_CLOCK_SKEW_S") or 0)
if _skew:
    _real = time.time
    time.time = lambda: _real() + _skew
"""
BOUND_S = 30.0


class SkewedClock:
    def __init__(self, skew: float) -> None:
        self.skew = skew

    def __call__(self) -> float:
        return time.time() + self.skew


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Server]:
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    with (tmp_path / "fleet.log").open("wb") as err:
        server = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=err)
    try:
        yield server
    finally:
        server.stop()


def _join_token(fleet: Server) -> str:
    resp = httpx.post(fleet.urls["http"] + "/join-tokens", json={"site": "home"}, timeout=10)
    return str(resp.raise_for_status().json()["token"])


def _box_config(tmp: Path, fleet: Server, port: int) -> ApplianceConfig:
    """An appliance holding `film`, its fleet link enrolling with a join token."""
    (tmp / "d0").mkdir()
    path = tmp / "appliance.toml"
    path.write_text(f"""
name = "a1"
[storage]
index = "{tmp / "index.sqlite"}"
disks = [{{ path = "{tmp / "d0"}" }}]
[serve]
listen = "127.0.0.1:{port}"
[auth]
tokens = "required"
[fill]
staging = "{tmp / "staging"}"
[fleet]
url = "{fleet.urls["grpc"]}"
join_token = "{_join_token(fleet)}"
heartbeat_s = 0.5
""")
    src = make_title(tmp / "src" / "film", "film")
    run_cli(["appliance", "load", "--config", str(path), "--title", "film", "--from",
             str(src)], check=True)  # fmt: skip
    return load_config(path)


class Workers:
    """What the daemon's supervisor does with the link's keys and correction: one key file,
    replaced whole under a rising generation (appliance/keyfile.py)."""

    def __init__(self, path: Path) -> None:
        self.path, self.generation = path, 0
        self.keys: dict[str, bytes] = {}
        self.correction = 0.0
        self._write()

    def set_keys(self, keys: dict[str, bytes]) -> None:
        self.keys = dict(keys)
        self._write()

    def set_clock_correction(self, correction: float) -> None:
        self.correction = correction
        self._write()

    def _write(self) -> None:
        self.generation += 1
        write_keys(self.path, KeySet(self.generation, True, self.keys, self.correction))


def _start_worker(spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    ready, _, _ = select.select([proc.stdout], [], [], BOUND_S)
    if not ready or proc.stdout.readline().strip() != b"ready":
        proc.kill()
        proc.wait()
        raise AssertionError("the serving worker did not start")
    return proc


@dataclass
class Box:
    link: FleetLink
    workers: Workers
    counters: Path  # the worker's, where it reports the key file generation it applied
    url: str
    skew: float  # how far its clock is off the fleet's


@pytest.fixture
def box(tmp_path: Path, fleet: Server, request: pytest.FixtureRequest) -> Iterator[Box]:
    """The link in this process and a real serving worker, both on a clock `request.param`
    seconds off the fleet's."""
    skew = float(request.param)
    port = free_port()
    config = _box_config(tmp_path, fleet, port)
    (tmp_path / "run").mkdir()
    workers = Workers(tmp_path / "run" / "keys.json")
    counters = tmp_path / "run" / "worker-0.json"
    spec = worker_spec(config, "127.0.0.1", port, counters, workers.path)
    env = seam_env(tmp_path, SEAM, EDGEFLIX_TEST_CLOCK_SKEW_S=str(skew))
    proc = _start_worker(spec, env)
    sinks = LinkSinks(
        health=lambda: BoxHealth("ok", (), 1e9),
        traffic=lambda: Traffic({}, 0, 0),
        submit_plan=lambda plan: None,
        set_keys=workers.set_keys,
        set_clock_correction=workers.set_clock_correction,
    )
    url = f"http://127.0.0.1:{port}"
    lk = FleetLink(config, url, sinks, clock=SkewedClock(skew))
    lk.restore()
    try:
        yield Box(lk, workers, counters, url, skew)
    finally:
        lk.stop()
        proc.terminate()
        try:
            proc.wait(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _steered(fleet: Server, lk: FleetLink, url: str) -> str:
    """Beat until the fleet steers a home client to the box; the URL it hands out."""
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        lk.step()
        reply = httpx.get(
            fleet.urls["http"] + "/steer",
            params={"client_ip": "192.168.1.50", "title": "film"},
            timeout=10,
        ).json()
        mine = [u for u in reply["urls"] if u.startswith(url + "/")]
        if mine:
            return str(mine[0])
        time.sleep(0.2)
    raise AssertionError(f"not steered to the box within {BOUND_S} s: {lk.state()}")


def _applied(counters: Path, generation: int) -> None:
    """Wait (bounded) for the worker to report it applied the key file's `generation`."""
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        try:
            if json.loads(counters.read_text()).get("keys_generation", 0) >= generation:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"the worker did not apply key file generation {generation}")


@pytest.mark.parametrize("box", [5 * H, -5 * H], indirect=True, ids=["ahead", "behind"])
def test_a_steered_url_plays_on_a_box_hours_off_and_an_expired_one_does_not(
    fleet: Server, box: Box
) -> None:
    lk = box.link
    steered = _steered(fleet, lk, box.url)
    st = lk.state()
    assert st["phase"] == "connected" and st["beats"] >= 1, st
    assert st["clock_correction_s"] == pytest.approx(-box.skew, abs=5)
    assert (st["clock"] or "").startswith(f"clock off by {box.skew:+.0f} s")
    assert box.workers.correction == pytest.approx(-box.skew, abs=5)
    _applied(box.counters, box.workers.generation)
    reply = httpx.get(steered, timeout=10)
    assert reply.status_code == 200, (steered, reply.status_code)
    assert reply.content.startswith(b"#EXTM3U")
    # A token of the fleet's key that expired a minute ago on the fleet's clock.
    now = lk.rpc.fleet_time()
    key = signing_key(lk._verifying_keys(), now)
    assert key is not None
    token = tokens.sign("film", tokens.SigningKey(key.id, key.secret), int(now - 60))
    expired = httpx.get(box.url + tokens.signed_path(token, "film", "master.m3u8"), timeout=10)
    assert expired.status_code == 403


def _refusals(fleet: Server) -> float:
    text = httpx.get(fleet.urls["http"] + "/metrics", timeout=10).raise_for_status().text
    for line in text.splitlines():
        if line.startswith('edgeflix_fleet_auth_refusals_total{reason="clock_skew"} '):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("box", [5 * H], indirect=True)
def test_ntp_setting_the_clock_right_is_not_refused_as_a_clock_off(
    fleet: Server, box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    """The correction learned for a clock 5 h ahead moves back with NTP's step: the next
    beat is taken, and nothing tells the operator to set the clock just set."""
    lk = box.link
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    _steered(fleet, lk, box.url)
    assert lk.rpc.correction == pytest.approx(-5 * H, abs=5)
    skewed = len(_said(caplog, "fleet.clock_skew"))
    refused = _refusals(fleet)
    clock = lk.clock
    assert isinstance(clock, SkewedClock)
    clock.skew = 0.0  # NTP
    beats = lk.state()["beats"]
    for _ in range(3):
        lk.step()
    st = lk.state()
    assert st["beats"] == beats + 3 and st["last_error"] is None, st
    assert lk.rpc.correction == 0.0 and box.workers.correction == 0.0
    assert len(_said(caplog, "fleet.clock_skew")) == skewed
    assert _refusals(fleet) == refused
    (stepped,) = [o for o in _said(caplog, "fleet.clock_offset") if "stepped_s" in o]
    assert stepped["offset_s"] == 0.0

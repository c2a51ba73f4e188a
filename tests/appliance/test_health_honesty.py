"""The box's own health tells what an operator must know: the fleet link's phase (grace is a
warning, expired and never enrolled are degraded, expired under `after_grace = "stop"` with
tokens required is failing), a disk over its max_bytes, and a disk path that is not UTF-8
refused at config load. Pure rules here; tests/integration/test_appliance_health_honesty.py
runs them through real processes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from appliance import status
from appliance.config import ApplianceConfig
from appliance.diskwatch import DiskWatch
from appliance.fleetlink_files import Enrolment
from appliance.fleetlink_state import LinkState
from appliance.health import (
    DiskSample,
    FleetLinkView,
    Health,
    HealthInputs,
    HealthSampler,
    link_grade,
    summarise,
    with_link,
)
from appliance.index import connect_writer
from edgeflix.config import load_config
from edgeflix.errors import ConfigError
from tests.appliance.storage_fixtures import make_title, title_bytes

GRACE = 72 * 3600.0


def view(phase: str, **kw: Any) -> FleetLinkView:
    base: dict[str, Any] = {
        "url": "fleet.example.net:7070",
        "phase": phase,
        "silent_s": 10.0,
        "last_contact": 1000.0,
        "grace_period_s": GRACE,
        "after_grace": "degrade",
        "tokens_required": True,
    }
    base.update(kw)
    return FleetLinkView(**base)


# -- the fleet link's grade -------------------------------------------------------------------


def test_connected_adds_nothing() -> None:
    assert link_grade(view("connected")) == (0, None)
    healthy = Health("ok")
    assert with_link(healthy, view("connected")) == healthy
    assert with_link(healthy, None) == healthy  # no [fleet] url


def test_within_the_grace_period_is_ok_with_a_warning() -> None:
    health = with_link(Health("ok"), view("grace", silent_s=1800.0))
    assert health.state == "ok" and health.reasons == ()
    (warning,) = health.warnings
    assert "unreachable for 30 min" in warning and "grace period over in 71.5 h" in warning


def test_expired_is_degraded_and_says_it_serves_on() -> None:
    health = with_link(Health("ok"), view("expired", silent_s=GRACE + 3600))
    assert health.state == "degraded"
    (reason,) = health.reasons
    assert "unreachable for 73.0 h (grace period over)" in reason
    assert "serving on cached keys" in reason


def test_expired_under_stop_with_tokens_required_is_failing() -> None:
    level, reason = link_grade(view("expired", after_grace="stop"))
    assert level == 2 and reason is not None and "token URLs refused" in reason
    # Without tokens the keys dropped refuse nothing: degraded, not failing.
    level, reason = link_grade(view("expired", after_grace="stop", tokens_required=False))
    assert level == 1 and reason is not None and "refused" not in reason


def test_never_enrolled_is_degraded_and_names_the_url_and_the_error() -> None:
    health = with_link(Health("ok"), view("unenrolled", silent_s=None, problem="UNAVAILABLE"))
    assert health.state == "degraded"
    (reason,) = health.reasons
    assert "not enrolled with the fleet manager at fleet.example.net:7070" in reason
    assert "UNAVAILABLE" in reason


def test_unreadable_link_files_are_a_warning_only() -> None:
    health = with_link(Health("ok"), view("unknown", problem="permission denied"))
    assert health.state == "ok" and "permission denied" in health.warnings[0]


def test_the_link_never_raises_a_failing_box_nor_drops_its_reasons() -> None:
    failing = Health("failing", ("no disk in service",))
    health = with_link(failing, view("expired"))
    assert health.state == "failing"
    assert health.reasons[0] == "no disk in service" and len(health.reasons) == 2


# -- the phase `appliance status` reads from the link's files ----------------------------------


def test_a_contact_saved_a_minute_ago_is_still_connected() -> None:
    # Beats every 5 s; a connected link saves the contact once a minute.
    assert status.saved_phase(True, 1000.0, 1000.0 + 59, 5.0, GRACE) == "connected"
    assert status.saved_phase(True, 1000.0, 1000.0 + 120, 5.0, GRACE) == "grace"
    assert status.saved_phase(True, 1000.0, 1000.0 + GRACE + 1, 5.0, GRACE) == "expired"
    assert status.saved_phase(False, None, 1000.0, 5.0, GRACE) == "unenrolled"
    # A grace period shorter than that: its end is never hidden.
    assert status.saved_phase(True, 1000.0, 1000.0 + 31, 5.0, 30.0) == "expired"


def config(tmp: Path, **fleet: Any) -> ApplianceConfig:
    return ApplianceConfig.model_validate(
        {
            "name": "a1",
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(tmp / "index.sqlite")},
            "auth": {"tokens": "required"},
            "fleet": {"url": "127.0.0.1:7070", "grace_period_s": 600.0, **fleet},
        }
    )


def enrol(cfg: ApplianceConfig, name: str = "a1") -> LinkState:
    state = LinkState(cfg.fleet_state_dir())
    month_ago = time.time() - 30 * 86_400  # on a set clock: 1970 would be unknown (wallclock)
    state.save_enrolment(Enrolment(name, "home", "127.0.0.1:7070", "http://x", 5000, month_ago))
    return state


def test_saved_link_from_real_files(tmp_path: Path) -> None:
    now = time.time()
    cfg = config(tmp_path)
    alone = cfg.model_copy(update={"fleet": cfg.fleet.model_copy(update={"url": None})})
    assert status.saved_link(alone, now) is None
    assert status.saved_link(cfg, now).phase == "unenrolled"  # type: ignore[union-attr]
    state = enrol(cfg)
    state.save_contact(now - 30)
    link = status.saved_link(cfg, now)
    assert link is not None and link.phase == "connected" and link.silent_s == pytest.approx(30)
    state.save_contact(now - 300)
    assert status.saved_link(cfg, now).phase == "grace"  # type: ignore[union-attr]
    state.save_contact(now - 601)
    link = status.saved_link(cfg, now)
    assert link is not None and link.phase == "expired" and link.last_contact == now - 601


def test_saved_link_enrolled_under_another_name_or_damaged(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    enrol(cfg, name="old-name")  # renamed in the config: the link enrols again
    assert status.saved_link(cfg, time.time()).phase == "unenrolled"  # type: ignore[union-attr]
    (cfg.fleet_state_dir() / "enrolment.json").write_text("{")
    link = status.saved_link(cfg, time.time())
    assert link is not None and link.phase == "unknown" and "enrolment.json" in str(link.problem)


def test_without_a_contact_the_grace_period_runs_from_the_enrolment(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    enrol(cfg)  # a month ago
    assert status.saved_link(cfg, time.time()).phase == "expired"  # type: ignore[union-attr]


def test_losing_the_fleet_saves_its_last_answer_exactly(tmp_path: Path) -> None:
    """A connected link saves the fleet's answers once a minute; when it loses the fleet it
    saves the last one, so what `appliance status` (and the next start) reads ends the
    grace period when the daemon's does."""
    from appliance.fleetlink import FleetLink, LinkSinks
    from appliance.fleetlink_figures import BoxHealth, Traffic

    now = [10_000.0]
    cfg = config(tmp_path)
    state = LinkState(cfg.fleet_state_dir())
    state.save_enrolment(Enrolment("a1", "home", "127.0.0.1:7070", "http://x", 500, 10_000.0))
    sinks = LinkSinks(
        health=lambda: BoxHealth("ok", (), 1e9),
        traffic=lambda: Traffic({}, 0, 0),
        submit_plan=lambda plan: None,
        set_keys=lambda keys: None,
    )
    lk = FleetLink(
        cfg, "http://127.0.0.1:8081", sinks, clock=lambda: now[0], monotonic=lambda: now[0]
    )
    lk.restore()
    lk._contact()  # an answered beat: saved
    now[0] += 30.0
    lk._contact()  # within the minute: not saved
    assert state.last_contact() == 10_000.0
    now[0] += 10.0
    lk.check_grace()
    assert state.last_contact() == 10_030.0
    view = lk.health_view(tokens_required=True)
    assert view.phase == "grace" and view.silent_s == 10.0 and view.last_contact == 10_030.0
    saved = status.saved_link(cfg, now[0])
    assert saved is not None and saved.silent_s == 10.0
    lk.rpc.close()


def test_the_status_document_carries_the_link_and_its_grade(tmp_path: Path) -> None:
    (tmp_path / "d0").mkdir()
    cfg = config(tmp_path, after_grace="stop")
    connect_writer(cfg.storage.index).close()
    enrol(cfg)
    doc = status.status_document(cfg, interval_s=0.01)
    assert doc["fleet"]["phase"] == "expired" and doc["fleet"]["after_grace"] == "stop"
    assert doc["health"]["state"] == "failing" and doc["capacity_bps"] == 0
    assert any("grace period over" in r for r in doc["health"]["reasons"])
    json.dumps(doc)  # what --json prints


# -- a disk over its max_bytes --------------------------------------------------------------------


def disk(**kw: Any) -> DiskSample:
    base: dict[str, Any] = {
        "path": "/d0",
        "used_fraction": 0.5,
        "io_errors": 0,
        "latency_ms": 1.0,
        "in_service": True,
    }
    base.update(kw)
    return DiskSample(**base)


def inputs(*disks: DiskSample) -> HealthInputs:
    return HealthInputs(cpu_percent=1.0, memory_percent=1.0, load_per_core=0.1, disks=disks)


def test_a_disk_over_its_max_bytes_is_degraded_with_the_figures() -> None:
    health = summarise(inputs(disk(used_fraction=1.11, max_bytes=3_000_000)))
    assert health.state == "degraded"
    (reason,) = health.reasons
    assert "/d0 over its max_bytes: holds 3330000 of 3000000 bytes (111%)" in reason


def test_almost_full_of_max_bytes_is_degraded_and_says_so() -> None:
    health = summarise(inputs(disk(used_fraction=0.96, max_bytes=1000)))
    assert health.state == "degraded" and "used of max_bytes 0.96" in health.reasons[0]
    assert summarise(inputs(disk(used_fraction=0.5, max_bytes=1000))).state == "ok"


def test_the_sampler_counts_what_the_store_holds_against_max_bytes(tmp_path: Path) -> None:
    """A real folder on a filesystem far bigger than the quota: the share is the store's
    bytes over max_bytes, and held bytes the index cannot tell leave it unknown."""
    d0 = tmp_path / "d0"
    d0.mkdir()
    held: dict[str, int] | None = {str(d0): 3_330_000}
    sampler = HealthSampler(
        disks=DiskWatch([d0]), max_bytes={str(d0): 3_000_000}, held_bytes=lambda: held
    )
    (sample,) = sampler.sample().disks
    assert sample.used_fraction == pytest.approx(1.11) and sample.max_bytes == 3_000_000
    held = None
    (sample,) = sampler.sample().disks
    assert sample.used_fraction is None


def test_held_bytes_come_from_the_index(tmp_path: Path) -> None:
    """What a real load stored, counted as placement counts it (files.json included)."""
    from appliance.store import Store

    (tmp_path / "d0").mkdir()
    cfg = config(tmp_path)
    assert status.held_bytes(cfg.storage.index) == {}  # no index yet: nothing held
    source = make_title(tmp_path / "src", "film")
    store = Store(cfg.storage)
    try:
        store.load("film", source)
    finally:
        store.close()
    disk = str((tmp_path / "d0").resolve())
    assert status.held_bytes(cfg.storage.index) == {disk: title_bytes(source)}


# -- a disk path that is not UTF-8 ----------------------------------------------------------------


def test_a_disk_path_that_is_not_utf8_is_refused_at_load() -> None:
    bad = "/srv/d\udce9sk"  # b"/srv/d\xe9sk" as os.environ decodes it
    env = {"EDGEFLIX_APPLIANCE__STORAGE__DISKS": f'[{{ path = "{bad}" }}]'}
    with pytest.raises(ConfigError) as err:
        load_config(ApplianceConfig, None, env=env, env_prefix="EDGEFLIX_APPLIANCE")
    message = str(err.value)
    assert "\n" not in message
    assert "storage.disks.0.path" in message and "'/srv/d\\xe9sk' is not UTF-8 text" in message
    message.encode("utf-8")  # the error itself prints


def test_utf8_disk_paths_still_load() -> None:
    cfg = ApplianceConfig.model_validate({"storage": {"disks": [{"path": "/srv/dísk-é"}]}})
    assert str(cfg.storage.disks[0].path) == "/srv/dísk-é"

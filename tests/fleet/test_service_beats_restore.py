"""Beats a restarted manager restores: shown with the age they have (`fleet ls` "seen s ago"
counts from the last real beat, not from the restart), while liveness gives each appliance
the usual missed-beats grace from the restart. Wall and monotonic clocks injected apart, as
a new process's monotonic clock has nothing to do with the last one's."""

from __future__ import annotations

import json
from pathlib import Path

from fleet.http import appliance_json
from fleet.registry import Beat
from fleet.service import FleetService
from fleet.softstate import BEATS_META
from fleet.store import Store
from tests.fleet.test_service import Clock, config, enrol


def restarted(svc: FleetService, wall: Clock, mono: Clock) -> FleetService:
    svc.save_soft_state()
    svc.store.close()
    return FleetService(svc.config, Store(svc.config.server.db), wall, monotonic=mono)


def seen(svc: FleetService) -> dict[str, tuple[str, float | None]]:
    svc._snapshot = None  # as a beat would
    return {
        a.name: (a.state, appliance_json(svc, a)["last_seen_s"]) for a in svc.snapshot().appliances
    }


def test_seen_ago_survives_a_restart_and_the_grace_starts_from_it(tmp_path: Path) -> None:
    wall, mono = Clock(), Clock()
    cfg = config(tmp_path)  # beats every 5 s, 3 missed: unreachable after 15 s of silence
    svc = FleetService(cfg, Store(cfg.server.db), wall, monotonic=mono)
    enrol(svc, "h1", "home")
    svc.heartbeat("h1", Beat(at=wall.now, sequence=1), {})
    last = wall.now
    wall.now += 600  # the manager was down ten minutes
    again = restarted(svc, wall, Clock())  # a new process: its own monotonic clock
    assert again.beats["h1"].at == last
    assert seen(again) == {"h1": ("ok", 600.0)}  # steerable for the grace, and 600 s old
    again.monotonic.now += 10  # type: ignore[attr-defined]
    wall.now += 10
    assert seen(again) == {"h1": ("ok", 610.0)}
    again.monotonic.now += 6  # type: ignore[attr-defined]
    assert seen(again)["h1"][0] == "unreachable"
    # A real beat: seen now.
    again.heartbeat("h1", Beat(at=wall.now, sequence=2), {})
    assert seen(again) == {"h1": ("ok", 0.0)}


def test_a_beat_saved_while_the_clock_was_ahead_is_at_most_now(tmp_path: Path) -> None:
    wall, mono = Clock(), Clock()
    cfg = config(tmp_path)
    svc = FleetService(cfg, Store(cfg.server.db), wall, monotonic=mono)
    enrol(svc, "h1", "home")
    svc.heartbeat("h1", Beat(at=wall.now, sequence=1), {})
    wall.now -= 3600  # NTP set the manager's clock an hour back since
    again = restarted(svc, wall, Clock())
    assert again.beats["h1"].at == wall.now
    assert seen(again) == {"h1": ("ok", 0.0)}


def test_beats_saved_without_their_time_are_as_received_at_the_restart(tmp_path: Path) -> None:
    """A database written before the time was saved (or with a time of another shape)."""
    wall = Clock()
    cfg = config(tmp_path)
    svc = FleetService(cfg, Store(cfg.server.db), wall, monotonic=Clock())
    enrol(svc, "h1", "home")
    enrol(svc, "h2", "home")
    for name in ("h1", "h2"):
        svc.heartbeat(name, Beat(at=wall.now, sequence=1), {})
    svc.save_soft_state()
    saved = json.loads(svc.store.meta(BEATS_META) or "{}")
    del saved["h1"]["at"]
    saved["h2"]["at"] = "yesterday"
    svc.store.set_meta(BEATS_META, json.dumps(saved))
    svc.store.close()
    wall.now += 60
    again = FleetService(cfg, Store(cfg.server.db), wall, monotonic=Clock())
    assert seen(again) == {"h1": ("ok", 0.0), "h2": ("ok", 0.0)}


def test_a_late_copy_soon_after_a_restart_is_still_stale(tmp_path: Path) -> None:
    """The saved beat keeps its time for the replay window too: a lower sequence of its
    boot within the window of it is a late copy, restart or not."""
    wall = Clock()
    cfg = config(tmp_path)
    svc = FleetService(cfg, Store(cfg.server.db), wall, monotonic=Clock())
    enrol(svc, "h1", "home")
    for seq in (1, 2, 3):
        svc.heartbeat("h1", Beat(at=wall.now, sequence=seq, boot=b"A" * 16), {})
    wall.now += 30
    again = restarted(svc, wall, Clock())
    assert again.heartbeat("h1", Beat(at=wall.now, sequence=2, boot=b"A" * 16), {}) == "stale"
    assert again.heartbeat("h1", Beat(at=wall.now, sequence=4, boot=b"A" * 16), {}) == "taken"

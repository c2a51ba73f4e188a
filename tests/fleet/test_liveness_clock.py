"""An appliance's silence is measured on the monotonic clock: a wall clock stepped back
keeps no dead appliance "ok" (and steered to), one stepped forward over three beats makes
no live one unreachable. A real SQLite store; the wall clock is injected and stepped."""

from __future__ import annotations

import time
from pathlib import Path

from fleet.config import FleetConfig, SiteConfig
from fleet.registry import Beat
from fleet.service import FleetService
from fleet.store import Store
from tests.fleet.test_service import Clock, beat, enrol


def service(tmp_path: Path, wall: Clock, interval_s: float, **kw: Clock) -> FleetService:
    cfg = FleetConfig.model_validate(
        {
            "server": {"db": str(tmp_path / "fleet.sqlite")},
            "sites": [SiteConfig(name="home", prefixes=("192.168.1.0/24",)).model_dump()],
            "heartbeat": {"interval_s": interval_s, "missed_beats": 3},
        }
    )
    return FleetService(cfg, Store(cfg.server.db), wall, **kw)  # type: ignore[arg-type]


def states(svc: FleetService) -> dict[str, str]:
    svc._snapshot = None  # as a heartbeat would
    return {a.name: a.state for a in svc.snapshot().appliances}


def test_a_dead_appliance_is_unreachable_though_the_wall_clock_went_back(
    tmp_path: Path,
) -> None:
    """The real monotonic clock (the default): beats every 0.1 s, three missed in 0.3 s."""
    wall = Clock()
    svc = service(tmp_path, wall, 0.1)
    enrol(svc, "h1", "home")
    beat(svc, "h1", 1)
    assert states(svc) == {"h1": "ok"}
    wall.now -= 100  # NTP steps the manager's clock back; h1 dies
    deadline = time.monotonic() + 10
    while states(svc) != {"h1": "unreachable"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert states(svc) == {"h1": "unreachable"}
    _, urls = svc.steer("192.168.1.7", "a")
    assert not any(u.startswith("http://h1:8081/") for u in urls.urls)


def test_a_wall_clock_stepped_forward_leaves_live_appliances_reachable(tmp_path: Path) -> None:
    wall = Clock()
    svc = service(tmp_path, wall, 5.0)
    enrol(svc, "h1", "home")
    beat(svc, "h1", 1)
    wall.now += 3600  # an hour ahead between two beats (far over 3 x 5 s)
    assert states(svc) == {"h1": "ok"}
    _, urls = svc.steer("192.168.1.7", "a")
    assert urls.urls[0].startswith("http://h1:8081/")


def test_silence_on_an_injected_monotonic_clock(tmp_path: Path) -> None:
    wall, mono = Clock(), Clock()
    svc = service(tmp_path, wall, 5.0, monotonic=mono)
    enrol(svc, "h1", "home")
    svc.heartbeat("h1", Beat(at=wall.now, sequence=1), {})
    wall.now -= 100
    mono.now += 15
    assert states(svc) == {"h1": "ok"}
    mono.now += 1  # 16 s of silence, whatever the wall clock says
    assert states(svc) == {"h1": "unreachable"}
    # A cached snapshot is not kept for the size of a wall clock step either.
    svc.heartbeat("h1", Beat(at=wall.now, sequence=2), {})
    assert states(svc) == {"h1": "ok"}
    wall.now -= 1000
    mono.now += 20
    assert {a.name: a.state for a in svc.snapshot().appliances} == {"h1": "unreachable"}

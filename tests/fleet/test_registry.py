"""Registry rules: liveness from beats, drain wins, repeated beats count once."""

from __future__ import annotations

from fleet.model import HeldTitle, Site
from fleet.registry import ApplianceRecord, Beat, accept_beat, build_snapshot, state_of

REC = ApplianceRecord("h1", "home", "http://h1", b"k" * 32, 0.0)


def test_state_from_beats_and_drain() -> None:
    beat = Beat(at=100.0, sequence=5, health="degraded")
    assert state_of(REC, beat, 114.9, 5.0, 3) == "degraded"
    assert state_of(REC, beat, 115.1, 5.0, 3) == "unreachable"  # 3 beats of 5 s missed
    assert state_of(REC, None, 0.0, 5.0, 3) == "unreachable"
    drained = ApplianceRecord("h1", "home", "u", b"k" * 32, 0.0, drained=True)
    assert state_of(drained, beat, 101.0, 5.0, 3) == "drained"


def test_beats_count_once_and_restarts_count_again() -> None:
    last = Beat(at=1.0, sequence=7)
    assert not accept_beat(last, Beat(at=2.0, sequence=7))
    assert not accept_beat(last, Beat(at=2.0, sequence=3))
    assert accept_beat(last, Beat(at=2.0, sequence=8))
    assert accept_beat(last, Beat(at=2.0, sequence=1))
    assert accept_beat(None, Beat(at=2.0, sequence=42))


def test_snapshot_carries_beats_into_appliances() -> None:
    site = Site.build("home", ["192.168.1.0/24"])
    beat = Beat(
        at=10.0, sequence=1, capacity_bps=1e9, load_bps=2e8, titles={"t": HeldTitle("d", True, 5)}
    )
    other = ApplianceRecord("h2", "home", "http://h2", b"k" * 32, 0.0)
    snap = build_snapshot((site,), {"h1": REC, "h2": other}, {"h1": beat}, 11.0, 5.0, 3, "o")
    h1, h2 = snap.appliances
    assert (h1.state, h1.load_bps, h1.holds_complete("t")) == ("ok", 2e8, True)
    assert (h2.state, h2.capacity_bps) == ("unreachable", 0.0)

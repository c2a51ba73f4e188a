"""Registry rules: liveness from beats, drain wins, repeated beats count once; call signing."""

from __future__ import annotations

import pytest

from edgeflix.proto import auth
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


def test_signed_calls_verify_and_tampering_is_refused() -> None:
    key = auth.new_private_key()
    pub = auth.public_key(key)
    md = auth.sign_call("h1", key, "/x/Heartbeat", b"body", now=1000.0)
    assert auth.caller(md) == "h1"
    assert auth.verify_call(md, pub, "/x/Heartbeat", b"body", now=1010.0) == "h1"
    with pytest.raises(auth.AuthError, match="does not match"):
        auth.verify_call(md, pub, "/x/Heartbeat", b"other", now=1010.0)
    with pytest.raises(auth.AuthError, match="does not match"):
        auth.verify_call(md, pub, "/x/GetKeys", b"body", now=1010.0)
    with pytest.raises(auth.AuthError, match="too far"):
        auth.verify_call(md, pub, "/x/Heartbeat", b"body", now=2000.0)
    other = auth.public_key(auth.new_private_key())
    with pytest.raises(auth.AuthError):
        auth.verify_call(md, other, "/x/Heartbeat", b"body", now=1000.0)
    with pytest.raises(auth.AuthError, match="not signed"):
        auth.verify_call(md[:1], pub, "/x/Heartbeat", b"body", now=1000.0)

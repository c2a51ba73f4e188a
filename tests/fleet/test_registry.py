"""Registry rules: liveness from beats, drain wins, repeated beats count once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgeflix.proto import auth
from fleet.model import HeldTitle, Site
from fleet.registry import (
    REPLAY_WINDOW_S,
    ApplianceRecord,
    Beat,
    accept_beat,
    build_snapshot,
    state_of,
)

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
    assert accept_beat(last, Beat(at=2.0, sequence=7)) == "repeat"
    assert accept_beat(last, Beat(at=2.0, sequence=3)) == "stale"
    assert accept_beat(last, Beat(at=2.0, sequence=8)) == "taken"
    assert accept_beat(last, Beat(at=2.0, sequence=1)) == "taken"
    assert accept_beat(None, Beat(at=2.0, sequence=42)) == "taken"


def test_sequences_compare_within_one_boot_only() -> None:
    """An appliance restarted (new boot, sequence from 1) while the manager held a beat of
    its previous boot with sequence 121: every beat was dropped as late for 240 s."""
    last = Beat(at=1.0, sequence=121, boot=b"A" * 16)
    for seq in (1, 2, 3):
        assert accept_beat(last, Beat(at=2.0, sequence=seq, boot=b"B" * 16)) == "taken"
        last = Beat(at=2.0, sequence=seq, boot=b"B" * 16)
    # Within one boot, the floor holds as before.
    assert accept_beat(last, Beat(at=3.0, sequence=2, boot=b"B" * 16)) == "stale"
    assert accept_beat(last, Beat(at=3.0, sequence=3, boot=b"B" * 16)) == "repeat"
    assert accept_beat(last, Beat(at=3.0, sequence=1, boot=b"B" * 16)) == "stale"


def test_a_sequence_far_ahead_holds_the_floor_only_for_the_replay_window() -> None:
    """A forged or buggy 2**62 once dropped the real appliance's beats for ever."""
    far = Beat(at=100.0, sequence=2**62)
    assert accept_beat(Beat(at=99.0, sequence=40), far) == "taken"  # signed with its key
    within = 100.0 + REPLAY_WINDOW_S
    assert accept_beat(far, Beat(at=within, sequence=41)) == "stale"  # late or replayed
    assert accept_beat(far, Beat(at=within + 0.001, sequence=41)) == "taken"  # signed after
    # The same sequence is a resend whose answer was lost: never counted twice.
    assert accept_beat(far, Beat(at=within + 1e6, sequence=2**62)) == "repeat"
    assert REPLAY_WINDOW_S >= 2 * auth.MAX_SKEW_S


@given(
    last=st.integers(1, 2**64 - 1),
    seq=st.integers(1, 2**64 - 1),
    after=st.floats(0.0, 10 * REPLAY_WINDOW_S, allow_nan=False),
)
def test_beats_count_once_within_the_window_and_nothing_locks_out(
    last: int, seq: int, after: float
) -> None:
    previous = Beat(at=1000.0, sequence=last)
    verdict = accept_beat(previous, Beat(at=1000.0 + after, sequence=seq))
    if seq == last:
        assert verdict == "repeat"  # a resend, however late
    elif seq > last or seq == 1 or after > REPLAY_WINDOW_S:
        assert verdict == "taken"
    else:
        assert verdict == "stale"  # below the floor while a copy could still be replayed


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

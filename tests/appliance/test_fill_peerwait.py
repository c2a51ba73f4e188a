"""Waiting for a site peer that lacks a title yet (appliance/fill/peerwait.py): how long, how
often, and when the origin is taken instead (waits spent, too little of the window left)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.fill.peerwait import (
    WAITS_SPENT,
    WINDOW_SHORT,
    PeerWaitPolicy,
    decide,
    open_span,
    transfer_s,
)
from appliance.fill.window import parse_window

WINDOW = parse_window("02:00-06:00", "UTC")  # four hours: a quarter is one hour
OPENS = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
POLICY = PeerWaitPolicy()  # 120 s, doubling to 480 s, 4 waits, a quarter of the window


def test_waits_double_up_to_four_times_the_first_then_the_origin() -> None:
    waits = [decide(POLICY, n, OPENS, None).wait_s for n in range(4)]
    assert waits == [120, 240, 480, 480]
    spent = decide(POLICY, 4, OPENS, None)
    assert (spent.wait_s, spent.reason) == (None, WAITS_SPENT)


def test_no_waits_configured_means_the_origin_at_once() -> None:
    decision = decide(PeerWaitPolicy(waits=0), 0, OPENS, WINDOW)
    assert (decision.wait_s, decision.reason) == (None, WAITS_SPENT)


def test_early_in_the_window_the_title_waits() -> None:
    decision = decide(POLICY, 0, OPENS + timedelta(minutes=30), WINDOW)
    assert decision.wait_s == 120
    assert decision.window_left_s == 3.5 * 3600 and decision.reserve_s == 3600


def test_a_wait_that_would_eat_into_the_last_quarter_goes_to_the_origin() -> None:
    # At 04:57 a 2 min wait ends at 04:59, with the last hour (a quarter) still ahead.
    assert decide(POLICY, 0, OPENS + timedelta(hours=2, minutes=57), WINDOW).wait_s == 120
    late = decide(POLICY, 0, OPENS + timedelta(hours=2, minutes=59), WINDOW)
    assert (late.wait_s, late.reason) == (None, WINDOW_SHORT)
    assert late.window_left_s == 61 * 60 and late.reserve_s == 3600
    # The second wait is longer (240 s): refused earlier than the first would be.
    second = decide(POLICY, 1, OPENS + timedelta(hours=2, minutes=57), WINDOW)
    assert second.reason == WINDOW_SHORT


def test_the_titles_transfer_time_at_the_cap_is_kept_when_longer() -> None:
    now = OPENS + timedelta(minutes=30)  # 3.5 h left
    size = 12 * 10**9  # 12 GB at 10 Mbit/s: 9600 s, 2.7 h
    assert transfer_s(size, 10_000_000) == 9600
    assert decide(POLICY, 0, now, WINDOW, cap_bps=None, size_bytes=size).wait_s == 120
    capped = decide(POLICY, 0, now, WINDOW, cap_bps=10_000_000, size_bytes=size)
    assert capped.wait_s == 120 and capped.reserve_s == 9600
    slow = decide(POLICY, 0, now, WINDOW, cap_bps=7_500_000, size_bytes=size)  # 12800 s
    assert (slow.wait_s, slow.reason, slow.reserve_s) == (None, WINDOW_SHORT, 12800)
    # Years at 1 bit/s: past what a datetime can hold, still just "too long".
    huge = decide(POLICY, 0, now, WINDOW, cap_bps=1, size_bytes=10**12)
    assert (huge.wait_s, huge.reason) == (None, WINDOW_SHORT)


def test_a_shut_window_or_none_at_all_waits() -> None:
    assert decide(POLICY, 0, OPENS - timedelta(hours=1), WINDOW).wait_s == 120
    assert decide(POLICY, 3, OPENS, None).wait_s == 480


def test_an_instant_in_another_zone_is_the_same_instant() -> None:
    local = (OPENS + timedelta(hours=2, minutes=59)).astimezone(timezone(timedelta(hours=2)))
    assert decide(POLICY, 0, local, WINDOW).reason == WINDOW_SHORT
    assert open_span(WINDOW, OPENS) == (OPENS, OPENS + timedelta(hours=4))


@pytest.mark.parametrize(
    "bad", [{"first_s": 0}, {"waits": -1}, {"window_share": 1.5}, {"first_s": float("nan")}]
)
def test_a_policy_that_makes_no_sense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PeerWaitPolicy(**bad)  # type: ignore[arg-type]


@given(
    waited=st.integers(0, 10),
    minute=st.integers(-120, 360),
    first_s=st.floats(1, 3600),
    waits=st.integers(0, 8),
    share=st.floats(0, 1),
    cap=st.none() | st.integers(1, 10**10),
    size=st.none() | st.integers(0, 10**12),
)
def test_waits_are_bounded_and_never_eat_the_reserve(
    waited: int,
    minute: int,
    first_s: float,
    waits: int,
    share: float,
    cap: int | None,
    size: int | None,
) -> None:
    policy = PeerWaitPolicy(first_s=first_s, waits=waits, window_share=share)
    now = OPENS + timedelta(minutes=minute)
    decision = decide(policy, waited, now, WINDOW, cap, size)
    if decision.wait_s is None:
        assert decision.reason in (WAITS_SPENT, WINDOW_SHORT)
        return
    assert waited < waits and 0 < decision.wait_s <= 4 * first_s
    span = open_span(WINDOW, now)
    if span is not None:  # open: the wait ends before the reserve kept for the origin
        assert decision.reserve_s is not None
        left = (span[1] - now).total_seconds()
        assert decision.wait_s + decision.reserve_s <= left

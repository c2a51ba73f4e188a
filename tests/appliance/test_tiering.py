from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.tiering import Move, Rate, decayed, observe, plan_moves, wanted_tier


def test_rate_halves_every_half_life() -> None:
    r = Rate(value=8.0, at=100.0)
    assert decayed(r, 100.0, 60.0) == 8.0
    assert decayed(r, 160.0, 60.0) == pytest.approx(4.0)
    assert decayed(r, 220.0, 60.0) == pytest.approx(2.0)
    assert decayed(r, 50.0, 60.0) == 8.0  # a clock that went back does not inflate the rate


def test_steady_stream_converges_to_its_rate() -> None:
    rate = None
    now = 0.0
    for _ in range(2000):  # 3 requests/s reported once a second for 2000 s, half-life 60 s
        now += 1.0
        rate = observe(rate, 3, now, 60.0)
    assert rate is not None
    assert decayed(rate, now, 60.0) == pytest.approx(3.0, rel=0.02)


@given(
    counts=st.lists(st.integers(0, 1000), min_size=1, max_size=30),
    gaps=st.lists(st.floats(0.0, 1e4), min_size=30, max_size=30),
)
def test_rate_is_never_negative_and_decays_monotonically(
    counts: list[int], gaps: list[float]
) -> None:
    rate = None
    now = 0.0
    for count, gap in zip(counts, gaps, strict=False):
        now += gap
        rate = observe(rate, count, now, 30.0)
    assert rate is not None and rate.value >= 0
    assert decayed(rate, now + 1, 30.0) <= decayed(rate, now, 30.0)
    assert math.isfinite(rate.value)


def test_wanted_tier() -> None:
    assert wanted_tier(5.0, 1.0, {"ssd", "hdd"}) == "ssd"
    assert wanted_tier(1.0, 1.0, {"ssd", "hdd"}) == "ssd"
    assert wanted_tier(0.5, 1.0, {"ssd", "hdd"}) == "hdd"
    assert wanted_tier(0.0, 1.0, {"ssd"}) == "ssd"  # only one tier: everything goes there
    assert wanted_tier(9.0, 1.0, {"hdd"}) == "hdd"


def test_plan_moves_promotes_hottest_first_and_demotes_with_hysteresis() -> None:
    placed = {
        "cold-on-ssd": "ssd",
        "warm-on-ssd": "ssd",
        "hot": "hdd",
        "hotter": "hdd",
        "meh": "hdd",
    }
    rates = {"warm-on-ssd": 0.7, "hot": 2.0, "hotter": 9.0, "meh": 0.9}
    plan = plan_moves(placed, rates, hot_rate=1.0, tiers={"ssd", "hdd"})  # type: ignore[arg-type]
    assert plan == [
        Move("hotter", "ssd", 9.0),
        Move("hot", "ssd", 2.0),
        Move("cold-on-ssd", "hdd", 0.0),
    ]
    assert plan_moves(placed, rates, 1.0, {"hdd"}) == []  # type: ignore[arg-type]


def test_a_rate_stamped_ahead_of_the_clock_decays_from_now() -> None:
    """Written while the clock was a month ahead, then NTP set it right: the rate must start
    decaying at once, not a month later when the clock reaches its stamp."""
    ahead = Rate(value=8.0, at=1_000_000.0)
    assert decayed(ahead, 100.0, 60.0) == 8.0  # never grown
    again = observe(ahead, 0, 100.0, 60.0)
    assert again.at == 100.0
    assert decayed(again, 160.0, 60.0) == pytest.approx(4.0)
    assert decayed(observe(ahead, 0, 100.0, 60.0), 220.0, 60.0) == pytest.approx(2.0)

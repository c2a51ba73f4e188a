"""Popularity under a clock that steps: forwards, back, by years. A count made while the
clock was far ahead must never leave the counters unreadable (an OverflowError in every
planning round, kept across restarts in the saved soft state)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.popularity import DAY_S, DecayedCounts, Popularity, PopularityPolicy, predicted_demand
from fleet.store import Store

T = 1.78e9
YEAR = 365 * DAY_S
# One-hour young half-life: 1024 half-lives (where 2.0 ** x overflows) are 43 days.
POLICY = PopularityPolicy(young_half_life_s=3600.0)


def _check(values: dict[str, float]) -> None:
    for title, v in values.items():
        assert math.isfinite(v) and v >= 0, (title, v)


def test_a_count_from_years_ahead_does_not_break_reading_once_the_clock_is_right() -> None:
    p = Popularity(PopularityPolicy(), T)
    p.add({"a": 100.0}, T)
    p.add({"b": 100.0}, T + 3 * YEAR)  # the clock wrongly 3 years ahead for one beat
    p.add({"a": 50.0}, T + 60)  # corrected
    for releases in ({}, {"a": T}, {"b": T + 3 * YEAR}):
        _check(p.rates(T + 120, releases))
    # What was counted "in the future" counts as now, neither lost nor inflated.
    assert p.long.at(T + 120)["b"] <= 100.0
    assert p.long.at(T + 120)["b"] > 99.0


def test_reading_before_the_reference_time_without_a_new_count() -> None:
    c = DecayedCounts(3600.0, T)
    c.add({"x": 5.0}, T + 60 * DAY_S)
    got = c.at(T)  # the clock went back; no beat since
    assert got["x"] == 5.0
    assert c.total_since(T - DAY_S, T) == 5.0


def test_saved_state_with_a_reference_time_in_the_future_loads_and_reads() -> None:
    ahead = Popularity(POLICY, T + 2 * YEAR)
    ahead.add({"x": 10.0}, T + 2 * YEAR)
    doc = json.loads(json.dumps(ahead.to_dict()))
    back = Popularity.restore(POLICY, doc, T)  # restarted with the clock right
    _check(back.rates(T, {"x": T}))
    assert back.short.to_dict()["t0"] <= T and back.long.to_dict()["t0"] <= T
    back.add({"x": 1.0}, T + 60)
    _check(back.rates(T + 3600, {"x": T}))
    assert back.long.at(T + 60)["x"] > 10.0


def test_saved_state_that_is_not_finite_starts_afresh() -> None:
    doc = Popularity(POLICY, T).to_dict()
    doc["long"]["t0"] = float("inf")
    doc["long"]["last"] = float("inf")
    restored = Popularity.restore(POLICY, json.loads(json.dumps(doc)), T)
    assert restored.long.to_dict()["t0"] == T


_STEP = st.one_of(
    st.floats(-3600.0, 3600.0),  # jitter and small steps
    st.floats(-5 * YEAR, 5 * YEAR),  # a huge step either way
    st.sampled_from([0.0, 1800.0, DAY_S, -DAY_S, 60 * DAY_S, -60 * DAY_S]),
)
_OP = st.tuples(
    _STEP,
    st.sampled_from(["add", "read", "save"]),
    st.floats(0.0, 1e12),
    st.sampled_from(["a", "b", "c"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_OP, max_size=25), st.floats(-YEAR, YEAR))
def test_any_clock_sequence_reads_finite_non_negative(
    ops: list[tuple[float, str, float, str]], release_shift: float
) -> None:
    now = T
    p = Popularity(POLICY, now)
    releases = {"a": T + release_shift, "b": T}
    for step, op, count, title in ops:
        now = min(max(now + step, 0.0), 4e9)  # a wall clock between 1970 and 2096
        if op == "add":
            p.add({title: count}, now)
        elif op == "save":
            p = Popularity.restore(POLICY, json.loads(json.dumps(p.to_dict())), now)
        _check(p.rates(now, releases))
        _check(p.long.at(now))
        _check(p.short.at(now))
        for counter in (p.long, p.short):
            since = counter.total_since(now - DAY_S, now)
            assert math.isfinite(since) and since >= 0


def test_a_title_first_seen_while_the_clock_was_ahead_is_boosted_as_released_now(
    tmp_path: Path,
) -> None:
    """The fleet's clock was 20 days ahead when the origin first listed `newfilm`; then it
    was set right. Its release boost belongs to now, not to 20 days from now (when it would
    be boosted as a new release while nobody watches it any more). The date is set right
    where it is kept: `releases` may hold dates to come on purpose (a catalog's release
    dates, boosted from the night before), so predicted_demand takes them as they are."""
    store = Store(tmp_path / "fleet.sqlite")
    policy = PopularityPolicy()
    observed = {f"old{i}": 100.0 - i for i in range(10)}  # rank 5 scores 96
    store.first_seen(["newfilm"], T + 20 * DAY_S)
    releases = store.first_seen(["newfilm", "other"], T)  # the next round, clock right
    assert releases == {"newfilm": T, "other": T}  # rewritten in the database
    assert store.first_seen(["newfilm"], T + DAY_S)["newfilm"] == T  # and kept as it is
    demand = [
        predicted_demand(observed, releases, T + d * DAY_S, policy, ["newfilm"])["newfilm"]
        for d in (0, 1, 2, 3, 20)
    ]
    assert demand == [96.0, 48.0, 0.0, 0.0, 0.0]
    store.close()

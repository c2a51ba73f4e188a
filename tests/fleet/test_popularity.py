"""Decayed popularity and the new-release boost."""

from __future__ import annotations

import pytest

from fleet.popularity import DecayedCounts, PopularityPolicy, predicted_demand

DAY = 86_400.0


def test_counts_add_and_halve_every_half_life() -> None:
    c = DecayedCounts(half_life_s=DAY, start=0.0)
    c.add({"a": 100.0, "b": 10.0}, now=0.0)
    c.add({"a": 50.0}, now=DAY)
    got = c.at(DAY)
    assert got["a"] == pytest.approx(100.0)  # 100 halved, plus 50
    assert got["b"] == pytest.approx(5.0)
    assert c.at(3 * DAY)["a"] == pytest.approx(25.0)


def test_counts_survive_a_long_run_and_a_clock_step_back() -> None:
    c = DecayedCounts(half_life_s=60.0, start=0.0)
    for minute in range(0, 60 * 24 * 30, 60):  # 30 days, hourly; 720 half-lives per day
        c.add({"x": 1.0}, now=minute * 60.0)
    c.add({"x": 1.0}, now=0.0)  # a late beat counts at the latest time, not in the past
    assert c.at(c._last)["x"] == pytest.approx(2.0 + 2.0**-60, rel=1e-6)


def test_ignores_non_positive_counts() -> None:
    c = DecayedCounts(half_life_s=10.0, start=0.0)
    c.add({"a": 0.0, "b": -5.0}, now=1.0)
    assert c.at(1.0) == {}


def test_release_boost_before_and_after_release() -> None:
    policy = PopularityPolicy(boost_rank=2, boost_lead_s=DAY, boost_window_s=2 * DAY)
    observed = {"hit": 1000.0, "second": 400.0, "old": 5.0}
    releases = {"new": 10 * DAY, "hot-new": 10 * DAY, "far": 20 * DAY, "past": 0.0}
    at = predicted_demand({**observed, "hot-new": 5000.0}, releases, 9.5 * DAY, policy)
    assert at["new"] == 1000.0  # second-ranked score of {5000, 1000, 400, 5}
    assert at["hot-new"] == 5000.0  # already hotter than the boost
    assert "far" not in at and "past" not in at
    later = predicted_demand(observed, releases, 11 * DAY, policy)
    assert later["new"] == pytest.approx(400.0 * 0.5)  # half-way through the window
    assert predicted_demand(observed, releases, 12.5 * DAY, policy).get("new", 0.0) == 0.0


def test_unseen_catalog_titles_are_listed_with_zero() -> None:
    got = predicted_demand({}, {}, 0.0, PopularityPolicy(), titles=["a"])
    assert got == {"a": 0.0}


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        PopularityPolicy(half_life_s=0)


def test_site_demand_leads_and_fleet_demand_fills_in() -> None:
    from fleet.popularity import blend_site_demand

    local = {"regional": 90.0, "global-hit": 10.0}
    fleet_wide = {"global-hit": 900.0, "other": 100.0, "regional": 0.0}
    got = blend_site_demand(local, fleet_wide, weight=0.25)
    # Site volume is 100, fleet volume 1000: fleet values count 0.25 x 0.1.
    assert got == pytest.approx({"regional": 90.0, "global-hit": 32.5, "other": 2.5})
    assert blend_site_demand({}, {"a": 4.0}, 0.5) == {"a": 2.0}

"""Decayed popularity and the new-release boost."""

from __future__ import annotations

import pytest

from fleet.popularity import DecayedCounts, Popularity, PopularityPolicy, predicted_demand

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


def test_total_since_counts_only_later_traffic_decayed() -> None:
    c = DecayedCounts(half_life_s=DAY, start=0.0, checkpoint_s=3600.0)
    c.add({"a": 100.0}, now=0.0)
    c.add({"b": 40.0, "a": 10.0}, now=DAY)
    c.add({"c": 8.0}, now=2 * DAY)
    assert c.total_since(0.0, 2 * DAY) == pytest.approx(100 / 4 + 50 / 2 + 8)
    assert c.total_since(DAY, 2 * DAY) == pytest.approx(50 / 2 + 8)
    assert c.total_since(1.5 * DAY, 2 * DAY) == pytest.approx(8.0)
    assert c.total_since(-5.0, 2 * DAY) == pytest.approx(c.total_since(0.0, 2 * DAY))


def test_a_new_title_ranks_by_its_share_of_traffic_since_release() -> None:
    """Same share of traffic as an old favourite, one day out: same rate, not a fifth."""
    policy = PopularityPolicy(half_life_s=14 * DAY, young_half_life_s=DAY, min_exposure_s=0)
    pop = Popularity(policy, start=0.0)
    releases = {"new": 30 * DAY}
    for hour in range(31 * 24):
        at = hour * 3600.0
        out = at >= 30 * DAY
        deltas = {"old": 10.0, "rest": 80.0 if out else 90.0} | ({"new": 10.0} if out else {})
        pop.add(deltas, at)
    now = 31 * 24 * 3600.0
    raw = pop.long.at(now)
    assert raw["new"] < 0.1 * raw["old"]  # what a plain decayed count says
    got = pop.rates(now, releases)
    assert got["old"] == pytest.approx(raw["old"])
    assert got["new"] == pytest.approx(got["old"], rel=1e-6)


def test_a_young_title_that_faded_is_judged_on_the_short_half_life() -> None:
    policy = PopularityPolicy(half_life_s=14 * DAY, young_half_life_s=DAY, young_age_s=28 * DAY)
    pop = Popularity(policy, start=0.0)
    releases = {"flash": 20 * DAY, "steady": 0.0}
    for day in range(30):
        burst = 1000.0 if 20 <= day < 23 else 0.0
        pop.add({"flash": burst, "steady": 50.0, "rest": 500.0}, day * DAY)
    now = 30 * DAY
    assert pop.long.at(now)["flash"] > pop.long.at(now)["steady"]  # still carries the burst
    got = pop.rates(now, releases)
    assert got["flash"] < 0.5 * got["steady"]  # 7 quiet days: the short count has let go


def test_one_early_session_is_judged_on_the_minimum_exposure() -> None:
    def rates(min_exposure_s: float) -> dict[str, float]:
        pop = Popularity(PopularityPolicy(min_exposure_s=min_exposure_s), start=0.0)
        for hour in range(48):
            pop.add({"old": 100.0, "rest": 1900.0}, hour * 3600.0)
        pop.add({"new": 100.0, "rest": 100.0}, 48 * 3600.0)  # out a minute, one session
        return pop.rates(48 * 3600.0, {"new": 48 * 3600.0 - 60.0})

    assert rates(0.0)["new"] > 5 * rates(0.0)["old"]  # half the traffic since its release
    assert rates(6 * 3600.0)["new"] < rates(6 * 3600.0)["old"]


def test_a_restart_counts_a_young_title_from_its_own_start() -> None:
    """Released before the counters started (a fleet restart): exposure from the start."""
    policy = PopularityPolicy(min_exposure_s=0)
    pop = Popularity(policy, start=10 * DAY)
    for hour in range(24):
        pop.add({"a": 10.0, "b": 10.0}, 10 * DAY + hour * 3600.0)
    got = pop.rates(11 * DAY, {"a": 9 * DAY})  # a: young, released before the start
    assert got["a"] == pytest.approx(got["b"], rel=1e-6)


def test_counts_survive_a_restart_through_their_dict() -> None:
    import json

    policy = PopularityPolicy()
    pop = Popularity(policy, start=0.0)
    for hour in range(48):
        pop.add({"a": 100.0, "b": float(hour)}, now=hour * 3600.0)
    doc = json.loads(json.dumps(pop.to_dict()))  # what the store keeps
    again = Popularity.restore(policy, doc, start=50 * 3600.0)
    now, releases = 50 * 3600.0, {"b": 0.0}
    assert again.rates(now, releases) == pytest.approx(pop.rates(now, releases))
    again.add({"a": 5.0}, now=now)
    pop.add({"a": 5.0}, now=now)
    assert again.long.at(now) == pytest.approx(pop.long.at(now))


def test_kept_counts_under_other_half_lives_or_damaged_start_afresh() -> None:
    pop = Popularity(PopularityPolicy(half_life_s=DAY), start=0.0)
    pop.add({"a": 1.0}, now=10.0)
    other = Popularity.restore(PopularityPolicy(half_life_s=2 * DAY), pop.to_dict(), start=99.0)
    assert other.long.at(100.0) == {} and other.long.start == 99.0
    broken = {"long": {"half_life_s": DAY}, "short": None}
    assert Popularity.restore(PopularityPolicy(), broken, start=5.0).long.at(6.0) == {}

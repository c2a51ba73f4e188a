"""Where sessions go when the client's own site cannot take them (fleet/steering.py): a
client in no site, or a site whose boxes miss the title. Least utilised first sent every
title to one box (by name among idle ones, and a whole burst to the box whose last beat
was lowest); ranked by capacity-weighted rendezvous with bounded loads, titles spread over
the boxes, each title keeps one box (its cache) for every such client, and a box far over
the others' mean still goes behind them."""

from __future__ import annotations

from collections import Counter

from fleet.model import Appliance, FleetSnapshot, HeldTitle, Site
from fleet.steering import SteeringPolicy, steer

A = Site.build("A", ["10.1.0.0/16"])
B = Site.build("B", ["10.2.0.0/16"])
C = Site.build("C", ["10.3.0.0/16"])
TITLES = [f"t{j:03d}" for j in range(300)]
NO_SITE = ("8.8.8.8", "1.2.3.4", "203.0.113.9", "2a00::1")
CLIENT_B, CLIENT_C = "10.2.0.7", "10.3.0.7"
WIDE = SteeringPolicy(max_urls=8)


def box(name: str, site: str, titles: list[str] = TITLES, **kw: float | str) -> Appliance:
    held = {t: HeldTitle("d-" + t) for t in titles}
    return Appliance(name, site, f"http://{name}:8081", titles=held, **kw)  # type: ignore[arg-type]


def fleet(*boxes: Appliance) -> FleetSnapshot:
    return FleetSnapshot((A, B, C), boxes, "http://origin:8080")


def first(snap: FleetSnapshot, client: str, title: str) -> str:
    return steer(snap, client, title).candidates[0].name


def site_a(**kw: float | str) -> list[Appliance]:
    return [box(f"a{i}", "A", **kw) for i in (1, 2, 3)]


def test_titles_spread_over_idle_boxes_for_clients_in_no_site() -> None:
    snap = fleet(*site_a())
    for client in NO_SITE:
        firsts = Counter(first(snap, client, t) for t in TITLES)
        assert set(firsts) == {"a1", "a2", "a3"}
        assert min(firsts.values()) > 70  # about a third of 300 each


def test_each_title_keeps_one_box_whoever_asks() -> None:
    """Cache affinity: every client in no site, and every site whose boxes cannot serve a
    title, start it on the same box."""
    b_box = box("b1", "B", titles=[])  # holds nothing: B's clients go elsewhere
    snap = fleet(*site_a(), b_box, box("c1", "C", titles=[]))
    boxes = Counter[str]()
    for title in TITLES:
        chosen = {first(snap, c, title) for c in (*NO_SITE, CLIENT_B, CLIENT_C)}
        assert len(chosen) == 1, (title, chosen)
        # And the same answer on the next request: nothing but the title picks the box.
        assert first(snap, NO_SITE[0], title) in chosen
        boxes.update(chosen)
    assert set(boxes) == {"a1", "a2", "a3"}  # one box per title, not one for all


def test_other_site_fallbacks_spread_over_every_other_site() -> None:
    """B's clients miss on B (its box is drained): A's and C's boxes share its titles."""
    drained = box("b1", "B", state="drained")
    snap = fleet(*site_a(), drained, box("c1", "C"), box("c2", "C"))
    for client in (CLIENT_B, NO_SITE[0]):
        firsts = Counter(first(snap, client, t) for t in TITLES)
        assert set(firsts) == {"a1", "a2", "a3", "c1", "c2"}
        assert min(firsts.values()) > 30  # about a fifth of 300 each
    d = steer(snap, CLIENT_B, TITLES[0])
    assert d.outcome == "outside_site_health_miss"
    assert {c.reason for c in d.candidates} == {"other site, rendezvous"}


def test_a_burst_does_not_all_land_on_the_box_that_beat_lowest() -> None:
    """Loads are as of the last beats: a little below its peers, a box took every session
    until its next beat. Within the bound the title picks, not the last figure."""
    boxes = [
        box("a1", "A", load_bps=2.0e8),
        box("a2", "A", load_bps=1.9e8),
        box("a3", "A", load_bps=2.1e8),
    ]
    firsts = Counter(first(fleet(*boxes), "8.8.8.8", t) for t in TITLES)
    assert set(firsts) == {"a1", "a2", "a3"} and min(firsts.values()) > 70


def test_capacity_weights_the_share_of_titles() -> None:
    big = box("big", "A", capacity_bps=3e9)
    small = box("small", "C", capacity_bps=1e9)
    firsts = Counter(first(fleet(big, small), CLIENT_B, t) for t in TITLES)
    assert 0.65 < firsts["big"] / len(TITLES) < 0.85  # 3:1 weights → 75 %


def test_a_box_over_the_bound_goes_behind_the_others_but_stays_listed() -> None:
    """Bounded loads over the boxes outside the client's site: mean (0.2 x 3 + 0.8) / 4 =
    0.35, bound 0.44 at epsilon 0.25, so the hot box is never first; the others still
    share the titles."""
    cool = [box(f"a{i}", "A", load_bps=2e8) for i in (1, 2)] + [box("c1", "C", load_bps=2e8)]
    hot = box("c2", "C", load_bps=8e8)
    snap = fleet(*cool, hot)
    for client in ("8.8.8.8", CLIENT_B):
        firsts = Counter[str]()
        for t in TITLES:
            d = steer(snap, client, t, WIDE)
            firsts[d.candidates[0].name] += 1
            assert d.candidates[-1].name == "c2"  # demoted, not banned
            assert d.candidates[-1].reason.endswith("over bound 80% > 44%")
        assert set(firsts) == {"a1", "a2", "c1"} and min(firsts.values()) > 70


def test_healthy_boxes_and_the_clients_own_site_still_come_first() -> None:
    degraded = box("c1", "C", state="degraded")
    snap = fleet(*site_a(), box("b1", "B"), degraded)
    for t in TITLES[:50]:
        ranked = [c.name for c in steer(snap, CLIENT_B, t, WIDE).candidates]
        assert ranked[0] == "b1"  # in site
        assert ranked[-1] == "c1"  # degraded behind every ok box
        assert set(ranked[1:4]) == {"a1", "a2", "a3"}

"""Fill planner across rounds: the fill budget, sources, appliances that drop out of planning
(no disks reported, drained) and replica counts near a boundary."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.model import Appliance, HeldTitle, TierSpace
from fleet.planner import plan
from fleet.plans import CatalogTitle, FillPlan, PlannerPolicy

from .test_planner import EXACT, GB, box, catalog, random_fleet


def holding(a: Appliance, p: FillPlan, cat: dict[str, CatalogTitle]) -> Appliance:
    """`a` once it has fetched all of its part of `p`."""
    entry = p.appliances[a.name]
    held = {t.title_id: HeldTitle(cat[t.title_id].digest, True, t.size_bytes, t.tier)
            for t in entry.titles}  # fmt: skip
    return Appliance(a.name, a.site, a.url, a.state, tiers=a.tiers, titles=held)


def test_the_fill_budget_counts_planned_titles_not_yet_fetched() -> None:
    cat = catalog(**{f"t{i}": 1 for i in range(10)})
    demand = {f"t{i}": 100.0 - i for i in range(10)}
    policy = PlannerPolicy(max_fill_bytes=2 * GB)
    empty = box("e1", hdd=100 * GB)
    p = plan((empty,), demand, cat, policy=policy)
    for _ in range(3):  # the appliance fetched nothing meanwhile (outside its window)
        p = plan((empty,), demand, cat, p, policy)
        assert p.appliances["e1"].planned_bytes <= 2 * GB
    assert p.version == 1
    # Once it holds them, the budget is for the next ones.
    p = plan((holding(empty, p, cat),), demand, cat, p, policy)
    assert sorted(p.appliances["e1"].title_ids) == ["t0", "t1", "t2", "t3"]


def sources(p: FillPlan, title: str) -> dict[str, str]:
    return {n: t.source for n, e in p.appliances.items() for t in e.titles if t.title_id == title}


def test_fills_completing_change_no_source_and_no_version() -> None:
    cat = catalog(hot=1)
    boxes = tuple(box(n) for n in ("a", "b", "c"))
    first = plan(boxes, {"hot": 100.0}, cat)
    assert len(sources(first, "hot")) == 3
    filler = next(n for n, s in sources(first, "hot").items() if s == "origin")
    peers = [n for n in ("a", "b", "c") if n != filler]
    p = first
    for done in ([filler], [filler, peers[0]], ["a", "b", "c"]):  # the usual order
        now = tuple(holding(b, first, cat) if b.name in done else b for b in boxes)
        p = plan(now, {"hot": 100.0}, cat, p)
        assert p.version == first.version, done
        assert sources(p, "hot") == sources(first, "hot")
    usual = p
    # A peer done first (its filler was slow, so it fell back to the origin): the others,
    # the filler too, take it from that holder from then on; once, not at every completion.
    p = first
    now = tuple(holding(b, first, cat) if b.name == peers[0] else b for b in boxes)
    p = plan(now, {"hot": 100.0}, cat, p)
    moved = sources(p, "hot")
    assert moved == {peers[0]: "origin", filler: peers[0], peers[1]: peers[0]}
    for done in ([peers[0], filler], ["a", "b", "c"]):
        now = tuple(holding(b, first, cat) if b.name in done else b for b in boxes)
        again = plan(now, {"hot": 100.0}, cat, p)
        assert again.version == p.version and sources(again, "hot") == moved, done
    # The filler gone, a peer holding the title takes over.
    gone = tuple(
        Appliance(b.name, b.site, b.url, "unreachable", tiers=b.tiers)
        if b.name == filler
        else holding(b, first, cat)
        if b.name == peers[1]
        else b
        for b in boxes
    )
    p = plan(gone, {"hot": 100.0}, cat, usual)
    assert sources(p, "hot") == {filler: "origin", peers[0]: peers[1], peers[1]: "origin"}


def test_an_appliance_reporting_no_disks_keeps_its_last_plan() -> None:
    cat = catalog(**{f"t{i}": 1 for i in range(10)})
    demand = {f"t{i}": 100.0 - i for i in range(10)}
    a = box("a1", hdd=10 * GB)
    first = plan((a,), demand, cat)
    held = holding(a, first, cat)
    # A beat while its disks were unreadable: no tiers, the titles still reported.
    blind = Appliance("a1", "home", "http://a1", tiers=(), titles=held.titles)
    p = plan((blind,), demand, cat, first)
    assert p.appliances["a1"].titles == first.appliances["a1"].titles
    assert p.appliances["a1"].diff.empty and p.version == first.version
    zero = Appliance("a1", "home", "http://a1", tiers=(TierSpace("hdd", 0),), titles=held.titles)
    assert plan((zero,), demand, cat, first).version == first.version


def test_serving_peers_take_the_titles_of_a_drained_appliance() -> None:
    cat = catalog(**{f"t{i}": 1 for i in range(10)})
    demand = {f"t{i}": 10.0 for i in range(10)}
    boxes = (box("a1", hdd=6 * GB), box("a2", hdd=8 * GB))
    first = plan(boxes, demand, cat)
    only_a1 = first.appliances["a1"].title_ids - first.appliances["a2"].title_ids
    assert len(only_a1) == 5
    a1, a2 = (holding(b, first, cat) for b in boxes)
    drained = Appliance("a1", "home", "http://a1", "drained", tiers=a1.tiers, titles=a1.titles)
    p = plan((drained, a2), demand, cat, first)
    # a2 has room for two more (7.84 GB planned of 8): it takes two of a1's titles, from
    # the origin (a drained appliance is no source), and a1 is told nothing new.
    gained = p.appliances["a2"].title_ids - first.appliances["a2"].title_ids
    assert len(gained) == 2 and gained <= only_a1
    assert all(t.source == "origin" for t in p.appliances["a2"].titles)
    assert p.appliances["a1"].titles == first.appliances["a1"].titles


def hot_and_nineteen(hot: float) -> dict[str, float]:
    # t0's share of demand is hot / (hot + 190): a third, at hot = 95, is where the
    # replicas it needs on three appliances go from 2 to 3 (a copy per half a box's share).
    return {"t0": hot} | {f"t{i}": 10.0 for i in range(1, 20)}


def replay(boxes: tuple[Appliance, ...], demands: list[float], policy: PlannerPolicy) -> None:
    """Plan each demand in turn, the appliances fetching each plan completely in between;
    after the first no plan may change."""
    cat = catalog(**{f"t{i}": 1 for i in range(20)})
    first = plan(boxes, hot_and_nineteen(demands[0]), cat, policy=policy)
    assert sum("t0" in e.title_ids for e in first.appliances.values()) == 3
    p = first
    for hot in demands[1:]:
        now = tuple(holding(b, p, cat) for b in boxes)
        p = plan(now, hot_and_nineteen(hot), cat, p, policy)
        assert p.version == first.version, hot
        assert all(e.diff.empty for e in p.appliances.values())


def test_a_tiny_demand_change_near_a_replica_boundary_changes_nothing() -> None:
    boxes = tuple(box(f"a{i}", hdd=50 * GB) for i in range(3))
    replay(boxes, [95.01, 94.99, 95.01, 94.99], PlannerPolicy())


def test_replica_hysteresis_holds_when_the_appliances_are_full() -> None:
    # 15 slots for 20 titles: a replica t0 gave up would go to t13 at once.
    boxes = tuple(box(f"a{i}", hdd=5 * GB) for i in range(3))
    replay(boxes, [95.01, 94.99, 90.0, 95.01], EXACT)


def test_spare_replicas_stay_while_their_appliances_have_room() -> None:
    boxes = tuple(box(f"a{i}", hdd=50 * GB) for i in range(3))
    replay(boxes, [500.0, 10.0, 0.5], PlannerPolicy())


def test_spare_replicas_give_way_to_titles_that_need_the_room() -> None:
    cat = catalog(**{f"t{i}": 1 for i in range(20)})
    boxes = tuple(box(f"a{i}", hdd=5 * GB) for i in range(3))
    first = plan(boxes, hot_and_nineteen(500.0), cat, policy=EXACT)
    now = tuple(holding(b, first, cat) for b in boxes)
    p = plan(now, hot_and_nineteen(10.0), cat, first, EXACT)
    assert sum("t0" in e.title_ids for e in p.appliances.values()) == 1
    assert sum(len(e.titles) for e in p.appliances.values()) == 15


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=30),
    demands=st.lists(st.floats(0, 1000), min_size=30, max_size=30),
    disks=st.lists(st.tuples(st.integers(0, 10), st.integers(1, 30)), min_size=1, max_size=4),
    budget=st.one_of(st.none(), st.integers(0, 20)),
    wobble=st.lists(st.floats(-0.001, 0.001), min_size=30, max_size=30),
)
def test_rounds_keep_the_budget_and_finished_fills_change_nothing(
    sizes: list[int],
    demands: list[float],
    disks: list[tuple[int, int]],
    budget: int | None,
    wobble: list[float],
) -> None:
    cat, demand, boxes = random_fleet(sizes, demands, disks)
    policy = PlannerPolicy(max_fill_bytes=None if budget is None else budget * GB)
    p = plan(boxes, demand, cat, policy=policy)
    for _ in range(2):  # nothing fetched meanwhile: still at most the budget to fetch
        p = plan(boxes, demand, cat, p, policy)
        if budget is not None:
            assert all(e.planned_bytes <= budget * GB for e in p.appliances.values())
    done = tuple(holding(b, p, cat) for b in boxes)
    if budget is None:  # everything fetched, demand a hair off: nothing to do
        nudged = {f"t{i}": v * (1 + wobble[i]) for i, v in enumerate(demand.values())}
        again = plan(done, nudged, cat, p, policy)
        assert again.version == p.version


def test_titles_keep_their_tier_when_their_order_flips() -> None:
    # t5 on the ssd and t0 on the hdd; t0 turning a hair denser than t5 must not move it
    # to the ssd first, leaving t5 (7 GB) no room on the hdd (6.86 GB).
    cat = catalog(t0=6, t5=7)
    a = box("b0", ssd=8 * GB, hdd=7 * GB)
    first = plan((a,), {"t0": 808.5, "t5": 943.5}, cat)
    assert {t.title_id: t.tier for t in first.appliances["b0"].titles} == {"t5": "ssd", "t0": "hdd"}
    again = plan((holding(a, first, cat),), {"t0": 809.0, "t5": 943.5}, cat, first)
    assert again.version == first.version

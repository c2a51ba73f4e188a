"""Fill planner: knapsack by demand density, replicas, tiers, hysteresis, sources, versions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.model import Appliance, HeldTitle, TierSpace
from fleet.planner import plan
from fleet.plans import CatalogTitle, FillPlan, PlannerPolicy

GB = 10**9
EXACT = PlannerPolicy(fill_ratio=1.0)


def box(name: str, site: str = "home", ssd: int = 0, hdd: int = 10 * GB, **kw: object) -> Appliance:
    tiers = tuple(TierSpace(t, c) for t, c in (("ssd", ssd), ("hdd", hdd)) if c)
    return Appliance(name=name, site=site, url=f"http://{name}", tiers=tiers, **kw)  # type: ignore[arg-type]


def catalog(**sizes_gb: float) -> dict[str, CatalogTitle]:
    return {t: CatalogTitle(int(s * GB), digest="d-" + t) for t, s in sizes_gb.items()}


def random_fleet(
    sizes: list[int], demands: list[float], disks: list[tuple[int, int]]
) -> tuple[dict[str, CatalogTitle], dict[str, float], tuple[Appliance, ...]]:
    """A catalogue, its demand and appliances in two sites from hypothesis's draws."""
    cat = catalog(**{f"t{i}": s for i, s in enumerate(sizes)})
    demand = {f"t{i}": demands[i] for i in range(len(sizes))}
    boxes = tuple(
        box(f"b{i}", site="home" if i % 2 == 0 else "away", ssd=s * GB, hdd=h * GB)
        for i, (s, h) in enumerate(disks)
    )
    return cat, demand, boxes


def ids(p: FillPlan, name: str) -> list[str]:
    entry = p.for_appliance(name)
    assert entry is not None
    return [t.title_id for t in entry.titles]


def test_takes_titles_by_demand_per_byte_within_capacity() -> None:
    cat = catalog(big=8, a=3, b=3, c=3, tiny=0.5)
    demand = {"big": 100.0, "a": 60.0, "b": 50.0, "c": 45.0, "tiny": 1.0}
    p = plan((box("h1"),), demand, cat, policy=EXACT)
    # Per GB: a 20, b 16.7, c 15, big 12.5, tiny 2 → a, b, c fit (9 GB), then tiny.
    assert ids(p, "h1") == ["a", "b", "c", "tiny"]
    assert p.appliances["h1"].planned_bytes <= 10 * GB


def test_titles_without_demand_or_size_are_not_planned() -> None:
    cat = {**catalog(a=1, cold=1), "empty": CatalogTitle(0)}
    p = plan((box("h1"),), {"a": 5.0, "empty": 9.0, "unknown": 7.0}, cat)
    assert ids(p, "h1") == ["a"]


def test_hottest_titles_go_to_the_fast_tier() -> None:
    cat = catalog(hot=2, warm=2, cool=2)
    p = plan(
        (box("h1", ssd=2 * GB, hdd=10 * GB),),
        {"hot": 90.0, "warm": 50, "cool": 10},
        cat,
        policy=EXACT,
    )
    tiers = {t.title_id: t.tier for t in p.appliances["h1"].titles}
    assert tiers == {"hot": "ssd", "warm": "hdd", "cool": "hdd"}


def test_hot_titles_are_replicated_and_cold_ones_are_not() -> None:
    titles = {f"t{i}": 1.0 for i in range(20)}
    cat = catalog(**titles)
    demand = {f"t{i}": 1.0 for i in range(20)} | {"t0": 60.0}
    boxes = tuple(box(f"h{i}") for i in range(4))
    p = plan(boxes, demand, cat)
    holders = {t: [n for n in p.appliances if t in p.appliances[n].title_ids] for t in titles}
    assert len(holders["t0"]) == 4  # 60/79 of demand on 4 boxes
    assert all(len(holders[f"t{i}"]) == 1 for i in range(1, 20))


def test_hysteresis_keeps_an_incumbent_against_a_slightly_hotter_title() -> None:
    cat = catalog(old=5, new=5)
    held = box("h1", hdd=5 * GB, titles={"old": HeldTitle("d-old")})
    policy = PlannerPolicy(hysteresis=0.25, fill_ratio=1.0)
    assert ids(plan((held,), {"old": 100.0, "new": 120.0}, cat, policy=policy), "h1") == ["old"]
    assert ids(plan((held,), {"old": 100.0, "new": 130.0}, cat, policy=policy), "h1") == ["new"]


def test_a_stale_digest_is_not_an_incumbent() -> None:
    cat = catalog(old=5, new=5)
    stale = box("h1", hdd=5 * GB, titles={"old": HeldTitle("other-version")})
    assert ids(plan((stale,), {"old": 100.0, "new": 110.0}, cat, policy=EXACT), "h1") == ["new"]


def test_one_appliance_per_site_fills_from_origin_and_peers_from_it() -> None:
    cat = catalog(hot=1, **{f"t{i}": 1 for i in range(10)})
    demand = {"hot": 100.0} | {f"t{i}": 1.0 for i in range(10)}
    boxes = (box("h1"), box("h2"), box("h3"), box("a1", site="away"), box("a2", site="away"))
    p = plan(boxes, demand, cat)
    for site, names in (("home", ["h1", "h2", "h3"]), ("away", ["a1", "a2"])):
        sources = {
            n: next(t.source for t in p.appliances[n].titles if t.title_id == "hot") for n in names
        }
        fillers = [n for n, s in sources.items() if s == "origin"]
        assert len(fillers) == 1
        assert all(s == fillers[0] for n, s in sources.items() if n != fillers[0])
        assert p.appliances[names[0]].site == site


def test_an_appliance_already_holding_a_title_is_its_source() -> None:
    cat = catalog(hot=1)
    boxes = (box("h1"), box("h2", titles={"hot": HeldTitle("d-hot")}), box("h3"))
    p = plan(boxes, {"hot": 100.0}, cat)
    sources = {n: p.appliances[n].titles[0].source for n in ("h1", "h2", "h3")}
    assert sources == {"h1": "h2", "h2": "origin", "h3": "h2"}


def test_versions_rise_only_when_content_changes_and_diffs_say_what() -> None:
    cat = catalog(a=4, b=4, c=4)
    boxes = (box("h1", hdd=8 * GB),)
    first = plan(boxes, {"a": 10.0, "b": 9.0, "c": 1.0}, cat, policy=EXACT)
    assert first.version == 1 and first.appliances["h1"].diff.added == ("a", "b")
    same = plan(boxes, {"a": 11.0, "b": 8.0, "c": 1.0}, cat, first, EXACT)
    assert same.version == 1 and same.appliances["h1"].diff.empty
    moved = plan(boxes, {"a": 10.0, "b": 1.0, "c": 9.0}, cat, same, EXACT)
    assert moved.version == 2
    assert moved.appliances["h1"].diff.added == ("c",)
    assert moved.appliances["h1"].diff.removed == ("b",)
    # The origin re-published "a": same titles and tiers, a new version that says so.
    republished = {**cat, "a": CatalogTitle(cat["a"].size_bytes, "d-a-v2")}
    updated = plan(boxes, {"a": 10.0, "b": 1.0, "c": 9.0}, republished, moved, EXACT)
    assert updated.version == 3
    diff = updated.appliances["h1"].diff
    assert diff.updated == ("a",) and not (diff.added or diff.removed or diff.retiered)


def test_unreachable_appliances_keep_their_last_plan() -> None:
    cat = catalog(a=4, b=4)
    first = plan((box("h1"), box("h2")), {"a": 10.0, "b": 5.0}, cat)
    gone = plan((box("h1"), box("h2", state="unreachable")), {"b": 50.0}, cat, first)
    assert gone.appliances["h2"].titles == first.appliances["h2"].titles


def test_fill_budget_caps_new_bytes_per_plan() -> None:
    cat = catalog(a=4, b=4, c=4)
    p = plan(
        (box("h1", hdd=12 * GB),),
        {"a": 3.0, "b": 2.0, "c": 1.0},
        cat,
        policy=PlannerPolicy(max_fill_bytes=9 * GB, fill_ratio=1.0),
    )
    assert ids(p, "h1") == ["a", "b"]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=30),
    demands=st.lists(st.floats(0, 1000), min_size=30, max_size=30),
    disks=st.lists(st.tuples(st.integers(0, 10), st.integers(1, 30)), min_size=1, max_size=4),
)
def test_plans_fit_every_tier_and_sources_are_site_peers(
    sizes: list[int], demands: list[float], disks: list[tuple[int, int]]
) -> None:
    cat, demand, boxes = random_fleet(sizes, demands, disks)
    p = plan(boxes, demand, cat)
    for b in boxes:
        entry = p.appliances[b.name]
        assert len(entry.title_ids) == len(entry.titles)
        for tier in b.tiers:
            used = sum(t.size_bytes for t in entry.titles if t.tier == tier.tier)
            assert used <= tier.capacity_bytes
        for t in entry.titles:
            assert demand[t.title_id] > 0
            if t.source != "origin":
                peer = p.appliances[t.source]
                assert peer.site == b.site and t.title_id in peer.title_ids
    again = plan(boxes, demand, cat, p)
    assert again.version == p.version  # the same inputs again change nothing

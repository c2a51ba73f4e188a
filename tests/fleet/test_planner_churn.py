"""Fill planner across rounds: the fill budget, sources, appliances that drop out of planning
(no disks reported, drained) and replica counts near a boundary."""

from __future__ import annotations

from fleet.model import Appliance, HeldTitle
from fleet.planner import CatalogTitle, FillPlan, PlannerPolicy, plan

from .test_planner import GB, box, catalog


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

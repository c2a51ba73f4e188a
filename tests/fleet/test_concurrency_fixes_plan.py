"""An appliance removed while a planning round runs (`fleet rm` during `fleet plan --now`):
the rm answered at once, yet the round's plan, made from the fleet as it was, listed the
removed appliance, was stored and answered, until the next tick replaced it. The round is
driven here in its two halves (FleetService.plan_job, then adopt_plan, as fleet/planning.py
runs them around the planner process) with the removal between them."""

from __future__ import annotations

from pathlib import Path

from fleet.catalogue import OriginTitle
from fleet.plans import ORIGIN, ApplianceFillPlan, FillPlan, PlannedTitle, without_appliances
from fleet.service import FleetService
from fleet.store import Store
from tests.fleet.test_service import GB, Clock, beat, enrol, service


def fleet(tmp_path: Path) -> FleetService:
    """c1-c3 at one site, beating, with a hot title c1 fills from the origin for c3."""
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    for name in ("c1", "c2", "c3"):
        enrol(svc, name, "home")
    svc.set_origin_titles([OriginTitle(f"t{i}", f"d{i}", GB) for i in range(6)])
    for seq in range(1, 6):
        for name in ("c1", "c2", "c3"):
            beat(svc, name, seq, {"t0": 10**12})
        clock.now += 4
    return svc


def named(plan: FillPlan | None, name: str) -> bool:
    """The plan has a part for `name`, or a part filling from it."""
    if plan is None:
        return False
    parts = plan.appliances.values()
    return name in plan.appliances or any(t.source == name for p in parts for t in p.titles)


def test_an_appliance_removed_while_the_first_plan_is_made_is_not_in_it(tmp_path: Path) -> None:
    svc = fleet(tmp_path)
    assert svc.current_plan is None
    job = svc.plan_job()
    made = job.run()
    assert named(made, "c1")  # planned from the fleet as it was
    svc.remove("c1")  # answered while the planner process ran
    adopted = svc.adopt_plan(job, made)
    assert adopted is not None and not named(adopted, "c1")
    assert set(adopted.appliances) == {"c2", "c3"}
    assert not named(Store(svc.config.server.db).plan(), "c1")
    assert svc.replan_due  # its titles go to its peers in the next round
    again = svc.replan()
    assert not named(again, "c1") and again.version > adopted.version


def test_an_appliance_removed_while_a_plan_is_remade_is_in_no_plan(tmp_path: Path) -> None:
    svc = fleet(tmp_path)
    before = svc.replan()
    assert named(before, "c1")
    job = svc.plan_job()
    made = job.run()
    svc.remove("c1")
    # From the moment `rm` answers: neither the plan shown nor the one stored names it.
    assert not named(svc.current_plan, "c1")
    assert not named(Store(svc.config.server.db).plan(), "c1")
    adopted = svc.adopt_plan(job, made)
    assert adopted is svc.current_plan and not named(adopted, "c1")
    assert not named(Store(svc.config.server.db).plan(), "c1")
    assert adopted is not None and adopted.version > before.version  # appliances fetch it
    assert svc.replan_due
    assert not named(svc.replan(), "c1")


def test_removing_an_appliance_in_no_plan_leaves_the_plan_as_it_is(tmp_path: Path) -> None:
    svc = fleet(tmp_path)
    before = svc.replan()
    enrol(svc, "c4", "home")
    svc.remove("c4")
    assert svc.current_plan is before  # no new version for appliances to fetch


def test_without_appliances_drops_their_parts_and_their_place_as_a_source() -> None:

    def part(name: str, *titles: tuple[str, str]) -> ApplianceFillPlan:
        rows = tuple(PlannedTitle(t, "d" + t, GB, "hdd", source) for t, source in titles)
        return ApplianceFillPlan(name, "home", rows)

    plan = FillPlan(
        3,
        {
            "a": part("a", ("x", ORIGIN)),
            "b": part("b", ("x", "a"), ("y", ORIGIN)),
            "c": part("c", ("y", "b")),
        },
    )
    out = without_appliances(plan, {"a"})
    assert out == {"b": part("b", ("x", ORIGIN), ("y", ORIGIN)), "c": plan.appliances["c"]}
    assert out["c"] is plan.appliances["c"]  # untouched parts are the same objects
    assert without_appliances(plan, set()) == dict(plan.appliances)

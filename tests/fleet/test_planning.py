"""What crosses to the planner process (fleet/planning.py) arrives whole: appliances, the
catalogue and plans pickle as columns, and must come back equal, field for field."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import pytest

from fleet.errors import UnavailableError
from fleet.model import Appliance, HeldTitle, TierSpace
from fleet.planning import PlanJob, Planning, run_job
from fleet.plans import (
    ApplianceFillPlan,
    CatalogTitle,
    FillPlan,
    PlanDiff,
    PlannedTitle,
    PlannerPolicy,
)
from tests.fleet.test_audit import service


def test_a_plan_job_and_its_plan_survive_pickling_field_for_field() -> None:
    boxes = (
        Appliance("a", "home", "http://192.168.1.2:8081", "degraded", 2e9, 1e8, 7,
                  {"film": HeldTitle("d1", True, 10, "ssd"), "show": HeldTitle("d2", False)},
                  (TierSpace("ssd", 100), TierSpace("hdd", 1000))),
        Appliance("b", "home", "http://192.168.1.3:8081"),
    )  # fmt: skip
    previous = FillPlan(
        3,
        {"a": ApplianceFillPlan("a", "home", (PlannedTitle("film", "d1", 10, "ssd", "origin"),),
                                PlanDiff(added=("film",)))},
    )  # fmt: skip
    job = PlanJob(
        boxes,
        {"film": 2.0, "show": 1.0},
        {"film": CatalogTitle(10, "d1"), "show": CatalogTitle(20, "d2")},
        previous,
        PlannerPolicy(),
        {"home": {"film": 1.0}},
    )
    back = pickle.loads(pickle.dumps(job))
    assert back == job
    assert back.appliances[0].titles["show"] == HeldTitle("d2", False)
    made = run_job(back)
    assert pickle.loads(pickle.dumps(made)) == made == job.run()
    assert made.appliances["a"].titles  # something was planned, so columns were exercised


def test_a_closed_planning_refuses_a_round_rather_than_plan_on_the_loop(tmp_path: Path) -> None:
    """A `POST /plan` arriving while the manager stops: after close() there is no planner
    process, and a round must not fall back to planning on the loop (seconds of stall)."""
    svc = service(tmp_path)

    async def round_after_close() -> None:
        planning = Planning(svc)  # a real planner process
        planning.close()
        with pytest.raises(UnavailableError, match="stopping"):
            await planning.replan()

    asyncio.run(round_after_close())

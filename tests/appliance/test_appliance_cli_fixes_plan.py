"""A plan document must name its titles (`{}` would prune everything), and a plan file given
to `appliance fill` may not empty the box unless told to; the fleet's plans parse as before."""

from __future__ import annotations

import pytest

from appliance.fill.plan import FillPlan, PlanError, PlannedTitle, parse_plan
from appliance.fill.session import refuse_emptying
from appliance.fleetlink_core import plan_document, to_fill_plan
from edgeflix.proto.gen import fleet_pb2


@pytest.mark.parametrize("raw", [b"{}", b'{"window": "02:00-06:00", "timezone": "UTC"}'])
def test_a_plan_without_titles_is_refused(raw: bytes) -> None:
    with pytest.raises(PlanError, match=r"^p\.json: not a valid fill plan: titles: missing"):
        parse_plan(raw, "p.json")


def test_an_empty_list_of_titles_is_a_plan() -> None:
    assert parse_plan(b'{"titles": []}', "p.json").titles == ()


def test_the_fleets_plans_parse_as_before_even_when_empty() -> None:
    empty = to_fill_plan(plan_document(fleet_pb2.Plan()))
    assert empty.titles == () and empty.prune
    one = fleet_pb2.Plan(titles=[fleet_pb2.PlannedTitle(title_id="film", sources=["http://o"])])
    assert [t.id for t in to_fill_plan(plan_document(one)).titles] == ["film"]


def _plan(*ids: str, prune: bool = True) -> FillPlan:
    return FillPlan(titles=tuple(PlannedTitle(id=i, sources=("http://o",)) for i in ids),
                    prune=prune)  # fmt: skip


@pytest.mark.parametrize(
    ("plan", "held"),
    [
        (_plan("a"), ["a", "b"]),  # keeps one: the rest go, as always
        (_plan(), []),  # nothing held: nothing to lose
        (_plan(prune=False), ["a"]),  # never deletes
        (_plan("x", prune=False), ["a"]),
    ],
)
def test_plans_that_keep_something_pass(plan: FillPlan, held: list[str]) -> None:
    refuse_emptying(plan, held, "p.json")


@pytest.mark.parametrize("plan", [_plan(), _plan("x", "y")])
def test_plans_that_would_empty_the_box_are_refused(plan: FillPlan) -> None:
    held = ["a", "b", "c", "d"]
    with pytest.raises(PlanError) as info:
        refuse_emptying(plan, held, "p.json")
    message = str(info.value)
    assert message.startswith("p.json lists none of the 4 titles this appliance holds (a, b, c, …)")
    assert "--prune-all" in message and "\n" not in message


def test_one_title_held_is_named_so() -> None:
    with pytest.raises(PlanError, match=r"^p\.json does not list the one title .* \(film\): "):
        refuse_emptying(_plan("other"), ["film"], "p.json")

"""Disaster recovery, the planner's part: an appliance the manager has not heard from since it
enrolled (its registry lost and the appliance enrolled again, or `fleet rm` and a new join
token) is left out of the plan until a beat says what it holds, never planned empty (an
order to delete its whole library); one known from before keeps its last part."""

from __future__ import annotations

from fleet.model import Appliance, HeldTitle, TierSpace
from fleet.planner import plan
from fleet.plans import CatalogTitle

GB = 10**9
CATALOG = {t: CatalogTitle(GB, "d-" + t) for t in ("a", "b", "c")}
DEMAND = {"a": 3.0, "b": 2.0, "c": 1.0}
HELD = {t: HeldTitle("d-" + t, True, GB, "hdd") for t in ("a", "b", "c")}
DISKS = (TierSpace("hdd", 100 * GB, 3 * GB),)


def box(name: str, **kw: object) -> Appliance:
    """A beating appliance holding the three titles."""
    fields: dict[str, object] = {"titles": HELD, "tiers": DISKS, **kw}
    return Appliance(name=name, site="home", url=f"http://{name}", **fields)  # type: ignore[arg-type]


def unheard(name: str) -> Appliance:
    """Enrolled, no beat yet: what build_snapshot makes of it."""
    return Appliance(name=name, site="home", url=f"http://{name}", state="unreachable",
                     capacity_bps=0.0)  # fmt: skip


def test_an_appliance_enrolled_again_on_a_new_registry_is_not_planned_empty() -> None:
    """The registry lost: e3 enrols on the new one and the round before its first beat
    planned it zero titles, which it pruned to. Left out, it is answered "no plan"."""
    p = plan((box("e1"), unheard("e3")), DEMAND, CATALOG)
    assert "e3" not in p.appliances
    assert p.for_appliance("e3") is None
    assert [t.title_id for t in p.appliances["e1"].titles] == ["a", "b", "c"]


def test_a_fresh_registrys_first_plan_leaves_out_every_appliance_not_heard_from() -> None:
    p = plan((unheard("e1"), unheard("e2")), DEMAND, CATALOG)
    assert p.appliances == {}


def test_removed_and_joined_again_it_is_left_out_until_it_beats() -> None:
    """`fleet rm` took it out of the plan; a new join token enrols it again."""
    before = plan((box("e1"), box("e2")), DEMAND, CATALOG)
    after_rm = plan((box("e1"),), DEMAND, CATALOG, before)
    assert "e2" not in after_rm.appliances
    rejoined = plan((box("e1"), unheard("e2")), DEMAND, CATALOG, after_rm)
    assert "e2" not in rejoined.appliances
    assert rejoined.version == after_rm.version  # nothing changed for anyone
    beating = plan((box("e1"), box("e2")), DEMAND, CATALOG, rejoined)
    planned = beating.for_appliance("e2")
    assert planned is not None
    assert {t.title_id for t in planned.titles} == {"a", "b", "c"}  # what it holds, kept
    assert not planned.diff.removed


def test_an_appliance_whose_beats_have_not_come_since_a_restart_keeps_its_part() -> None:
    """The manager restarted on the same registry without its last beats: the appliance is
    unreachable until it beats, and keeps its part as it was (a check, not a fix: the
    planner did this already)."""
    first = plan((box("e1"), box("e2")), DEMAND, CATALOG)
    restarted = plan((box("e1"), unheard("e2")), DEMAND, CATALOG, first)
    kept = restarted.appliances["e2"]
    assert kept.titles == first.appliances["e2"].titles and not kept.diff.removed


def test_a_beat_without_disks_or_from_a_drained_one_never_makes_a_first_empty_part() -> None:
    """Not plannable now (its tiers unreadable for a moment, drained, failing) and told
    nothing before: left out, so it keeps what it holds."""
    for odd in (
        box("e2", tiers=()),
        box("e2", state="drained"),
        box("e2", state="failing"),
    ):
        p = plan((box("e1"), odd), DEMAND, CATALOG)
        assert "e2" not in p.appliances, odd

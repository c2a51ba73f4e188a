"""The fill plan's types and versions: what fleet/planner.py decides, fleet/store.py keeps,
fleet/publish.py hands to appliances and `fleet plan` shows. A plan's version rises when
its content changes, and only then (next_version); each appliance's part says what changed
since the one before (diff_plans)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

ORIGIN = "origin"


@dataclass(frozen=True)
class CatalogTitle:
    size_bytes: int
    digest: str = ""

    def __reduce__(self) -> tuple[type[CatalogTitle], tuple[int, str]]:
        return CatalogTitle, (self.size_bytes, self.digest)  # see HeldTitle.__reduce__


@dataclass(frozen=True)
class PlannerPolicy:
    # An incumbent's demand counts (1 + hysteresis) times against a newcomer's.
    hysteresis: float = 0.25
    min_replicas: int = 1
    # A title gets another replica for each `replica_load_share` of one appliance's fair
    # share of the site's demand it carries (0.5: no copy serves over half its box's share).
    replica_load_share: float = 0.5
    # Plan at most this share of what each tier takes: the appliance's high watermarks of
    # its disks (TierSpace.fillable_bytes; the capacity from one that does not say). The rest
    # absorbs files.json (catalog sizes leave it out), size drift and partial fills.
    fill_ratio: float = 0.98
    fast_tiers: tuple[str, ...] = ("nvme", "ssd")
    # Bytes one appliance may be asked to fetch, all planned titles it does not hold complete
    # counted (what its fill window carries).
    max_fill_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.hysteresis < 0 or self.min_replicas < 1 or self.replica_load_share <= 0:
            raise ValueError("need hysteresis >= 0, min_replicas >= 1, replica_load_share > 0")
        if not 0 < self.fill_ratio <= 1:
            raise ValueError("fill_ratio must be in (0, 1]")


@dataclass(frozen=True)
class PlannedTitle:
    title_id: str
    digest: str
    size_bytes: int
    tier: str
    # "origin", or the name of the site peer to fill from (the appliance skips what it has).
    source: str


@dataclass(frozen=True)
class PlanDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    retiered: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()  # kept, in a new version (the origin re-published it)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.retiered or self.updated)


@dataclass(frozen=True)
class ApplianceFillPlan:
    appliance: str
    site: str
    # Hottest first: the order in which to fill.
    titles: tuple[PlannedTitle, ...]
    diff: PlanDiff = PlanDiff()
    # What the plan is published with besides its titles (the site's fill window and time
    # zone, the origin's URL): set by the fleet service, part of the content, so a change of
    # them in fleet.toml reaches appliances as a new version (FleetService.adopt_plan).
    schedule: str = ""

    @property
    def title_ids(self) -> frozenset[str]:
        return frozenset(t.title_id for t in self.titles)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Titles as columns, as Appliance.__reduce__: plans cross to and from the planner.
        t = self.titles
        columns = (
            tuple(x.title_id for x in t),
            tuple(x.digest for x in t),
            tuple(x.size_bytes for x in t),
            tuple(x.tier for x in t),
            tuple(x.source for x in t),
        )
        return _fill_plan_from_columns, (
            self.appliance, self.site, columns, self.diff, self.schedule
        )  # fmt: skip

    @property
    def planned_bytes(self) -> int:
        return sum(t.size_bytes for t in self.titles)

    def content(self) -> tuple[frozenset[tuple[str, str, str, str]], str]:
        """What the appliance must do, without order: equal content means nothing to apply."""
        return frozenset((t.title_id, t.digest, t.tier, t.source) for t in self.titles), (
            self.schedule
        )


@dataclass(frozen=True)
class FillPlan:
    """Every appliance's plan under one version; the version rises whenever content changes."""

    version: int
    appliances: Mapping[str, ApplianceFillPlan] = field(default_factory=dict)

    def for_appliance(self, name: str) -> ApplianceFillPlan | None:
        return self.appliances.get(name)


def _fill_plan_from_columns(
    appliance: str,
    site: str,
    columns: tuple[
        tuple[str, ...], tuple[str, ...], tuple[int, ...], tuple[str, ...], tuple[str, ...]
    ],
    diff: PlanDiff,
    schedule: str = "",
) -> ApplianceFillPlan:
    titles = tuple(PlannedTitle(*row) for row in zip(*columns, strict=True))
    return ApplianceFillPlan(appliance, site, titles, diff, schedule)


def diff_plans(old: ApplianceFillPlan | None, new_titles: tuple[PlannedTitle, ...]) -> PlanDiff:
    before = {t.title_id: (t.tier, t.digest) for t in old.titles} if old else {}
    after = {t.title_id: (t.tier, t.digest) for t in new_titles}
    both = after.keys() & before.keys()
    return PlanDiff(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        retiered=tuple(sorted(t for t in both if after[t][0] != before[t][0])),
        updated=tuple(sorted(t for t in both if after[t][1] != before[t][1])),
    )


def next_version(previous: FillPlan | None, plans: Mapping[str, ApplianceFillPlan]) -> int:
    """Bump on any change of content, so an unchanged plan is not re-applied everywhere."""
    if previous is None:
        return 1
    same = previous.appliances.keys() == plans.keys() and all(
        previous.appliances[n].content() == p.content() for n, p in plans.items()
    )
    return previous.version if same else previous.version + 1


def without_appliances(plan: FillPlan, gone: Collection[str]) -> dict[str, ApplianceFillPlan]:
    """`plan`'s parts without the appliances in `gone`: neither their own parts nor as a
    peer's source (those peers fill from the origin, as publish.source_urls already sends
    them for a source it does not know, until a round picks a new filler among them)."""
    parts = {}
    for name, part in plan.appliances.items():
        if name in gone:
            continue
        if any(t.source in gone for t in part.titles):
            titles = tuple(
                replace(t, source=ORIGIN) if t.source in gone else t for t in part.titles
            )
            part = replace(part, titles=titles)
        parts[name] = part
    return parts

"""Fill planning: predicted demand + appliance disks → what every appliance should hold.

A pure function over the snapshot (fleet/model.py), the demand from fleet/popularity.py,
the catalog's sizes and the previous plan. Appliances reconcile towards their part of the
plan inside their fill window; the server stores and versions plans and does no deciding.

Per site: titles are taken by demand per byte stored (a greedy knapsack, which is what
maximises bytes served from the edge), incumbents counted (1 + hysteresis) times so small
rank changes cause no evict-and-refetch; a title whose demand share would overload one
appliance gets more replicas (a held one dropped only past the same hysteresis, and kept
anyway while its appliance has room); replicas go where the title already is, then by
rendezvous (as steering ranks them); a new placement takes the fastest tier with room, so
the hottest titles land on the fast tier, and an incumbent stays on its tier. One appliance
per site fills a title from the origin, its peers fill from it, and it stays their source.

Room is what the appliance accepts: `fill_ratio` of its tiers' high watermarks (or their
capacity, from an appliance that does not say), less what else is on its disks (used bytes
that are none of its titles). A title it must fetch has to fit beside everything it holds
now, dropped titles included (it prunes those once the plan's titles are in), or it goes
to another appliance or waits for the next round; and a title its last fill found no room
for goes to another appliance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import accumulate

from fleet.model import Appliance, TierSpace
from fleet.plans import (
    ORIGIN,
    ApplianceFillPlan,
    CatalogTitle,
    FillPlan,
    PlannedTitle,
    PlannerPolicy,
    diff_plans,
    next_version,
)
from fleet.steering import rendezvous_keys, rendezvous_score, rendezvous_scores

# Appliances in these states get new plans; the others keep their last one until they return.
# A drained one is left out too: counted as a replica it kept serving peers from taking
# titles only it held, and keeping its last plan prunes nothing from it while drained.
PLANNED_STATES = frozenset({"ok", "degraded"})
# Only these may be the in-site source of a title for peers.
SOURCE_STATES = frozenset({"ok", "degraded"})


def replicas_for(share: float, members: int, policy: PlannerPolicy, holders: int = 0) -> int:
    """Copies of a title carrying `share` of its site's demand. Of `holders` copies one goes
    only once the others would carry its load with a (1 + hysteresis) margin: at a hard
    boundary a change of 0.02% in demand evicted a copy, and the next one fetched it back."""

    def needed(load: float) -> int:
        wanted = math.ceil(load * members / policy.replica_load_share) if load > 0 else 1
        return max(min(max(wanted, policy.min_replicas), members), 1)

    return max(needed(share), min(holders, needed(share * (1 + policy.hysteresis))))


def tier_order(tiers: tuple[TierSpace, ...], fast: tuple[str, ...]) -> list[TierSpace]:
    return sorted(tiers, key=lambda t: (t.tier not in fast, -t.capacity_bytes, t.tier))


def holds_version(appliance: Appliance, title_id: str, entry: CatalogTitle) -> bool:
    held = appliance.titles.get(title_id)
    return held is not None and held.complete and (not entry.digest or held.digest == entry.digest)


def title_sizes(
    appliances: tuple[Appliance, ...] | list[Appliance], catalog: Mapping[str, CatalogTitle]
) -> dict[str, int]:
    """Title → the bytes it takes on an appliance's disks: the catalog's size, or what an
    appliance holding this version whole reports when more. The catalog counts files.json
    too (the origin lists its size); from an older origin it does not, and for a title
    nobody holds yet `fill_ratio`'s headroom absorbs that."""
    sizes = {t: e.size_bytes for t, e in catalog.items()}
    for a in appliances:
        for t, held in a.titles.items():
            entry = catalog.get(t)
            if (
                entry is not None
                and held.size_bytes > sizes[t]
                and held.complete
                and (not entry.digest or held.digest == entry.digest)
            ):
                # At most a files.json more than the catalog says: one appliance's odd
                # report must not price a title out of every site.
                sizes[t] = min(held.size_bytes, entry.size_bytes + files_json_allowance(entry))
    return sizes


def files_json_allowance(entry: CatalogTitle) -> int:
    """What a title's files.json may add to its media bytes (an older origin lists only
    those): a few hundred bytes a file, MBs for a long title."""
    return max(1 << 20, entry.size_bytes // 100)


def held_bytes(a: Appliance, tier: str) -> int:
    """Bytes of the titles `a` reports on `tier` (complete or not, any version)."""
    return sum(h.size_bytes for h in a.titles.values() if h.tier == tier)


def tier_room(a: Appliance, t: TierSpace, policy: PlannerPolicy) -> int:
    """Bytes of titles `t` may hold as planned: `fill_ratio` of what the appliance fills it
    up to, less its used bytes that are none of its titles (other data on its filesystem,
    replaced versions kept a while). Its titles, kept or dropped, are not taken off: those
    it keeps are charged as they are placed, those it drops go (see _Bins.now)."""
    foreign = max(0, t.used_bytes - held_bytes(a, t.tier))
    return int(t.limit_bytes * policy.fill_ratio) - foreign


class _Bins:
    """Free bytes per (appliance, tier) and the fill budget per appliance, while placing."""

    def __init__(self, members: list[Appliance], policy: PlannerPolicy) -> None:
        self.order = {a.name: tier_order(a.tiers, policy.fast_tiers) for a in members}
        self.free = {(a.name, t.tier): tier_room(a, t, policy) for a in members for t in a.tiers}
        # Room beside everything the appliance holds now, dropped titles included: it deletes
        # what its plan drops only once every planned title is in (appliance/fill/runner.py),
        # so a title it must fetch has to fit here too, or its fill fails for want of room
        # and the drop never happens. An appliance that reports no used bytes cannot say.
        self.now = {
            (a.name, t.tier): int(t.limit_bytes * policy.fill_ratio) - t.used_bytes
            if any(x.used_bytes for x in a.tiers)
            else math.inf
            for a in members
            for t in a.tiers
        }
        budget = policy.max_fill_bytes
        self.budget = {a.name: budget if budget is not None else math.inf for a in members}

    def tier_with_room(
        self, name: str, size: int, fetch: bool, keep: str = "", need: int = 0
    ) -> str | None:
        """The tier `keep` (where the title is now) if it has room, else the fastest that has;
        `need`: the bytes it must fetch, which must also fit beside what it holds now."""
        if fetch and self.budget[name] < size:
            return None
        for tier in [keep, *(t.tier for t in self.order[name])]:
            key = (name, tier)
            if key in self.free and self.free[key] >= size and self.now[key] >= need:
                return tier
        return None

    def largest_free(self) -> int:
        return max(self.free.values(), default=0)

    def take(self, name: str, tier: str, size: int, fetch: bool, need: int = 0) -> None:
        self.free[(name, tier)] -= size
        self.now[(name, tier)] -= need
        if fetch:
            self.budget[name] -= size


def plan_site(
    members: list[Appliance],
    demand: Mapping[str, float],
    catalog: Mapping[str, CatalogTitle],
    incumbents: Mapping[str, Mapping[str, str]],
    policy: PlannerPolicy,
    fillers: Mapping[str, str] | None = None,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, list[PlannedTitle]]:
    """Place titles on one site's appliances; returns appliance name → titles, hottest first.
    `incumbents`: appliance → the titles it holds or was planned, each with its tier there.
    `fillers`: title → the appliance the previous plan had fill it from the origin.
    `sizes`: title → bytes it takes on disk (title_sizes; from `members` when not given)."""
    sizes = sizes if sizes is not None else title_sizes(members, catalog)
    site_incumbents = frozenset().union(*incumbents.values()) if incumbents else frozenset()
    total = sum(v for t, v in demand.items() if t in catalog and v > 0)
    candidates = [
        t
        for t, entry in catalog.items()
        if entry.size_bytes > 0 and (demand.get(t, 0.0) > 0 or t in site_incumbents)
    ]

    def density(title: str) -> tuple[float, str]:
        value = demand.get(title, 0.0) * (1 + policy.hysteresis * (title in site_incumbents))
        return (-value / sizes[title], title)

    candidates.sort(key=density)
    bins = _Bins(members, policy)
    placed: dict[str, list[tuple[str, str]]] = {a.name: [] for a in members}
    keys = rendezvous_keys(
        [a.name for a in members], [float(max(a.disk_bytes, 1)) for a in members]
    )
    held = [incumbents.get(a.name, {}) for a in members]
    # (title, member, tier) held copies beyond the wanted count
    spare: list[tuple[str, int, str]] = []
    # Smallest size from each position on: once no tier has room for it, planning is done.
    smallest = list(accumulate(reversed([sizes[t] for t in candidates]), min))[::-1]
    for i, title in enumerate(candidates):
        room = bins.largest_free()
        if room < smallest[i]:
            break
        size = sizes[title]
        if size > room:
            continue  # leftover space goes to the next smaller title that fits
        share = demand.get(title, 0.0) / total if total > 0 else 0.0
        holders = sum(title in h for h in held)
        wanted = replicas_for(share, len(members), policy, holders)
        # Holders first (no churn), then by rendezvous score (the order steering uses).
        scores = rendezvous_scores(title, keys)
        preference = sorted(
            zip([title not in h for h in held], [-x for x in scores], range(len(members)),
                strict=True)
        )  # fmt: skip
        count = 0
        later: list[Appliance] = []  # room for it once their drops are pruned, not now
        for j, (_, _, k) in enumerate(preference):
            if count == wanted:
                spare.extend((title, m, held[m][title]) for new, _, m in preference[j:] if not new)
                break
            a = members[k]
            # Bytes it must still fetch: a title planned last round but not yet fetched
            # (outside the window, say) is charged again, or the budget added up per round.
            fetch = not holds_version(a, title, catalog[title])
            if fetch and title in a.no_room:
                continue  # its last fill had no room for it: another appliance tries
            # An incumbent stays on its tier: taking the fast tier because a title a hair
            # hotter was placed first left no room for the one that was there.
            keep = held[k].get(title, "")
            need = new_bytes(a, title, catalog[title], size)
            tier = bins.tier_with_room(a.name, size, fetch, keep, need)
            if tier is not None:
                bins.take(a.name, tier, size, fetch, need)
                placed[a.name].append((title, tier))
                count += 1
            elif fetch and bins.tier_with_room(a.name, size, fetch, keep) is not None:
                later.append(a)
        # Copies no appliance can fetch beside what it holds now: the room is kept on the
        # first that has it once its dropped titles are pruned, so colder titles are
        # dropped this round and this one fits the next (a swap on a full box).
        for a in later[: max(0, wanted - count)]:
            tier = bins.tier_with_room(a.name, size, False)
            if tier is not None:
                bins.take(a.name, tier, size, False)
    if keep_spare_replicas(members, spare, catalog, bins, placed, sizes):
        rank = {t: i for i, t in enumerate(candidates)}
        for rows in placed.values():
            rows.sort(key=lambda row: rank[row[0]])  # hottest first again
    return assign_sources(members, placed, catalog, fillers or {})


def keep_spare_replicas(
    members: list[Appliance],
    spare: list[tuple[str, int, str]],
    catalog: Mapping[str, CatalogTitle],
    bins: _Bins,
    placed: dict[str, list[tuple[str, str]]],
    sizes: Mapping[str, int],
) -> bool:
    """Held copies beyond what a title needs stay where no title wanted the room: deleting
    them frees nothing of use, and a rise in demand would fetch them again. True if any."""
    kept = False
    for title, k, keep in spare:  # hottest first
        a, size = members[k], sizes[title]
        fetch = not holds_version(a, title, catalog[title])
        if fetch and title in a.no_room:
            continue
        need = new_bytes(a, title, catalog[title], size)
        tier = bins.tier_with_room(a.name, size, fetch, keep, need)
        if tier is not None:
            bins.take(a.name, tier, size, fetch, need)
            placed[a.name].append((title, tier))
            kept = True
    return kept


def new_bytes(a: Appliance, title: str, entry: CatalogTitle, size: int) -> int:
    """The room `a` needs to hold `title` as planned: none when it holds this version; the
    growth when it holds another version or part of it (which the new one replaces)."""
    held = a.titles.get(title)
    if held is None or not held.complete:
        # Partly lost (a disk out): it reports the whole title's size, but only what is
        # left counts in its used bytes, so the refill is charged whole.
        return size
    if holds_version(a, title, entry):
        return 0
    return max(0, size - held.size_bytes)


def assign_sources(
    members: list[Appliance],
    placed: Mapping[str, list[tuple[str, str]]],
    catalog: Mapping[str, CatalogTitle],
    fillers: Mapping[str, str],
) -> dict[str, list[PlannedTitle]]:
    """One appliance per site takes each title from the origin; its peers take it from it.
    The previous filler stays while it is still placed and holds the title (or nobody does
    yet): choosing again among holders as fills complete flipped sources, and with them the
    plan's version, for nothing."""
    by_name = {a.name: a for a in members}
    where: dict[str, list[str]] = {}
    for name, titles in placed.items():
        for title, _tier in titles:
            where.setdefault(title, []).append(name)
    filler: dict[str, str] = {}
    for title, names in where.items():
        entry = catalog[title]
        # Only appliances keeping the title may serve it to peers (others will delete it).
        holders = [
            by_name[n]
            for n in names
            if by_name[n].state in SOURCE_STATES and holds_version(by_name[n], title, entry)
        ]
        kept = fillers.get(title)
        if (
            kept is not None
            and kept in names
            and by_name[kept].state in SOURCE_STATES
            and (not holders or any(h.name == kept for h in holders))
        ):
            # Still filling with nobody holding it yet, or holding it: it stays. A filler
            # still fetching from the origin gives way to a peer that holds the title whole.
            filler[title] = kept
            continue
        if holders:
            filler[title] = max(holders, key=lambda a: rendezvous_score(title, a.name, 1.0)).name
        else:
            able = [n for n in names if by_name[n].state in SOURCE_STATES] or names
            filler[title] = max(able, key=lambda n: rendezvous_score(title, n, 1.0))
    out: dict[str, list[PlannedTitle]] = {}
    for name, titles in placed.items():
        rows = []
        for title, tier in titles:
            entry = catalog[title]
            # A holder keeps its source too: the appliance skips what it already has, and
            # a plan must not change version just because a fill completed.
            source = ORIGIN if filler[title] == name else filler[title]
            rows.append(PlannedTitle(title, entry.digest, entry.size_bytes, tier, source))
        out[name] = rows
    return out


def plan(
    appliances: tuple[Appliance, ...],
    demand: Mapping[str, float],
    catalog: Mapping[str, CatalogTitle],
    previous: FillPlan | None = None,
    policy: PlannerPolicy | None = None,
    site_demand: Mapping[str, Mapping[str, float]] | None = None,
) -> FillPlan:
    """Plan every appliance that can be (`plannable`); one that cannot keeps its previous
    part, and one with none is left out. `site_demand[site]`, when given, replaces `demand`
    for that site."""
    policy = policy or PlannerPolicy()
    sites = sorted({a.site for a in appliances})
    rows: dict[str, tuple[str, tuple[PlannedTitle, ...]]] = {}
    sizes = title_sizes(appliances, catalog)
    for site in sites:
        members = sorted(
            (a for a in appliances if a.site == site and plannable(a)), key=lambda a: a.name
        )
        incumbents = {a.name: incumbent_tiers(a, previous, catalog) for a in members}
        wanted = (site_demand or {}).get(site, demand)
        fillers = previous_fillers(members, previous, catalog)
        placed = plan_site(members, wanted, catalog, incumbents, policy, fillers, sizes)
        for name, titles in placed.items():
            rows[name] = (site, tuple(titles))
    for a in appliances:  # not plannable now: keep what they were told last
        kept = previous.for_appliance(a.name) if previous and a.name not in rows else None
        if kept is not None:
            rows[a.name] = (a.site, kept.titles)
        # With nothing told before (just enrolled or re-enrolled, no beat yet; its registry
        # lost or `fleet rm`): left out, not planned empty. An empty plan is an order to
        # prune, and the appliance deleted its whole library for it, to fetch it all again
        # once its beat had said what it holds. Left out, it is answered "no plan" and
        # keeps what it has until it is planned from a beat.
    plans = {
        name: ApplianceFillPlan(
            name,
            site,
            titles,
            diff_plans(previous.for_appliance(name) if previous else None, titles),
        )
        for name, (site, titles) in sorted(rows.items())
    }
    return FillPlan(version=next_version(previous, plans), appliances=plans)


def previous_fillers(
    members: list[Appliance], previous: FillPlan | None, catalog: Mapping[str, CatalogTitle]
) -> dict[str, str]:
    """Title → the member the previous plan had fetch this version of it from the origin
    (so it holds it or is filling it)."""
    out: dict[str, str] = {}
    for a in members:  # sorted by name: the first wins if a past plan had two
        entry = previous.for_appliance(a.name) if previous else None
        for t in entry.titles if entry else ():
            current = catalog.get(t.title_id)
            if t.source == ORIGIN and current is not None and t.digest == current.digest:
                out.setdefault(t.title_id, a.name)
    return out


def incumbent_tiers(
    a: Appliance, previous: FillPlan | None, catalog: Mapping[str, CatalogTitle]
) -> dict[str, str]:
    """Title → tier of what `a` holds complete or was planned last: the tier of its plan,
    which it is moving towards, before the one it reports."""
    out = {
        t: h.tier for t, h in a.titles.items() if t in catalog and holds_version(a, t, catalog[t])
    }
    entry = previous.for_appliance(a.name) if previous else None
    out.update((t.title_id, t.tier) for t in (entry.titles if entry else ()))
    return out


def plannable(a: Appliance) -> bool:
    """Whether this beat says enough to plan the appliance afresh. No disk space reported
    (tiers unreadable for a moment) is not knowing its disks, not having none: planned as
    empty it would be told to prune everything, and to fetch it all again a beat later."""
    return a.state in PLANNED_STATES and a.disk_bytes > 0

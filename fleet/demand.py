"""How much each title is wanted, fleet-wide and at each site: the decayed counts
(fleet/popularity.py) of the bytes appliances report serving and of the sessions the edge did
not serve, turned into a planning round's demand. FleetService (fleet/service.py) feeds it
from heartbeats and steering; fleet/softstate.py keeps it across a restart. Pure: the time
comes in.

Only titles of the catalogue (fleet/catalogue.py) are counted and kept: the ids in beats
come from appliances, which may make up any number of them.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable, Mapping
from typing import Any

from edgeflix.log import event
from fleet.catalogue import Catalogue, OriginTitle
from fleet.model import Site
from fleet.plans import CatalogTitle
from fleet.popularity import Popularity, PopularityPolicy, blend_site_demand, predicted_demand
from fleet.registry import Beat
from fleet.steering import SteeringDecision

log = logging.getLogger("fleet")
# How much the fleet's taste counts in a site's demand, relative to the site's own.
SITE_BLEND = 0.25


class Demand:
    """The counts, fleet-wide (`fleet`) and per site (`sites`), restored from `kept`
    (Demand.to_dict, as fleet/softstate.py kept it) at `now`."""

    def __init__(
        self,
        policy: PopularityPolicy,
        sites: Iterable[Site],
        kept: Mapping[str, Any],
        now: float,
    ) -> None:
        self.policy = policy
        self.fleet = Popularity.restore(policy, kept.get("fleet", {}), now)
        self.sites = {
            s.name: Popularity.restore(policy, kept.get("sites", {}).get(s.name, {}), now)
            for s in sites
        }
        # Counted before the restart: kept until the origin lists its titles (see prune),
        # whether or not an appliance holds them now.
        self._restored_titles = frozenset(t for p in self._all() for t in p.titles())

    def _all(self) -> tuple[Popularity, ...]:
        return (self.fleet, *self.sites.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet.to_dict(),
            "sites": {name: p.to_dict() for name, p in self.sites.items()},
        }

    def count(self, deltas: Mapping[str, float], at: float, site: str) -> None:
        """Bytes served by title (a beat's counts, of countable titles), at `site`."""
        self.fleet.add(deltas, at)
        counts = self.sites.get(site)
        if counts is not None:
            counts.add(deltas, at)

    def count_unserved(
        self, decision: SteeringDecision, title: OriginTitle | None, now: float
    ) -> None:
        """Demand that no heartbeat will report: without it a title that no appliance holds
        could never earn its place in a plan. The client's site did not serve the session;
        nobody at the edge did when it went to the origin (or nowhere). `title`: the origin's
        listing of the title steered."""
        if title is None or title.total_bytes <= 0:
            return
        delta = {decision.title_id: title.total_bytes * self.policy.miss_session_share}
        if decision.outcome in ("origin", "none"):
            self.fleet.add(delta, now)
        site = self.sites.get(decision.client_site or "")
        if site is not None:
            site.add(delta, now)

    def prune(self, catalogue: Catalogue, beats: Iterable[Beat]) -> None:
        """Forget the counts of titles out of the catalogue (withdrawn, or never in it), at
        each planning round and save. Until the origin has listed titles (unreachable since
        the start, or listing none) its catalogue is unknown, not empty: then only titles
        counted since the start that nobody holds (in `beats`) go (a hostile appliance's
        rotating ids), never those kept from before the restart nor those the origin listed
        once."""
        keep: Container[str]
        if catalogue.read:
            keep, self._restored_titles = catalogue.titles, frozenset()
        else:
            held = (t for b in beats for t in b.titles)
            keep = {*self._restored_titles, *catalogue.releases, *held}
        gone = sum(p.retain(keep) for p in self._all())
        if gone:
            event(log, "fleet.popularity_pruned", entries=gone)

    def for_plan(
        self, now: float, releases: Mapping[str, float], catalog: Mapping[str, CatalogTitle]
    ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """A planning round's demand at `now`, fleet-wide and by site (each site's blended
        with the fleet's taste), for the titles of `catalog` only."""
        fleet_wide = self.fleet.rates(now, releases)
        # A new catalogue with no traffic yet: every title a little demand, so fresh
        # appliances fill with something, then by traffic as it comes.
        floor = dict.fromkeys(catalog, 1.0)

        def demand(observed: dict[str, float]) -> dict[str, float]:
            # Only what can be planned crosses to the planner (it skips the rest anyway).
            predicted = predicted_demand(observed, releases, now, self.policy)
            return {**floor, **{t: v + 1.0 for t, v in predicted.items() if t in catalog}}

        site_demand = {
            site: demand(blend_site_demand(counts.rates(now, releases), fleet_wide, SITE_BLEND))
            for site, counts in self.sites.items()
        }
        return demand(fleet_wide), site_demand

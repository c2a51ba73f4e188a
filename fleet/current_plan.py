"""The fill plan appliances fetch (FleetService.current_plan), as stored: a planning round's
plan made current under the version appliances must see (what it is published with counted
in, above what a restored manager's appliances run: fleet/catchup.py), an appliance taken out
of it at once when removed, and its digest, which every heartbeat answer carries, kept until
it changes. Which round's plan is adopted is FleetService.adopt_plan's call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

from edgeflix.log import event
from fleet.model import Site
from fleet.plans import FillPlan, next_version, without_appliances
from fleet.store import Store, plan_to_json

log = logging.getLogger("fleet")


class CurrentPlan:
    """`plan`: the current plan (None: none made yet). `sites` and `origin_url`: what each
    appliance's part is published with."""

    def __init__(self, store: Store, sites: tuple[Site, ...], origin_url: str) -> None:
        self.store, self.sites, self.origin_url = store, sites, origin_url
        self.plan: FillPlan | None = store.plan()
        self._digest: tuple[FillPlan, bytes] | None = None

    def digest(self) -> bytes:
        """PlanResponse.digest of the current plan: of the whole plan as stored, version
        included (b"" when there is none)."""
        plan = self.plan
        if plan is None:
            return b""
        cached = self._digest
        if cached is None or cached[0] is not plan:
            h = hashlib.blake2b(plan_to_json(plan), digest_size=16, person=b"edgeflix-plan")
            cached = self._digest = (plan, h.digest())
        return cached[1]

    def adopt(self, new: FillPlan, previous: FillPlan | None, floor: int) -> FillPlan:
        """`new`, planned from `previous` (the current plan), made current: with its
        schedules, numbered above `floor` (what appliances run, see fleet/catchup.py). The
        current plan stays when it is the same content."""
        new = self.with_schedules(new, previous)
        if new.version <= floor:
            new = FillPlan(floor + 1, new.appliances)
        current = self.plan
        if current is not None and new.version == current.version:
            # Same content: keep the version as made, with its diff against the one before
            # (a new diff against itself would say nothing changed, unlike the stored one).
            return current
        self.store.save_plan(new)
        event(log, "fleet.plan", version=new.version, appliances=len(new.appliances))
        self.plan = new
        return new

    def with_schedules(self, new: FillPlan, previous: FillPlan | None) -> FillPlan:
        """`new` with what each appliance's part is published with (its site's window and
        time zone, the origin's URL) in its content, and its version counted again: an
        operator's change of those in fleet.toml then reaches the appliances, which only
        fetch a plan of a higher version."""
        sites = {s.name: s for s in self.sites}
        origin = self.origin_url

        def schedule(site: str) -> str:
            s = sites.get(site)
            return json.dumps([str(s.fill_window), s.timezone, origin] if s else [None, origin])

        plans = {
            name: dataclasses.replace(p, schedule=schedule(p.site))
            for name, p in new.appliances.items()
        }
        return FillPlan(next_version(previous, plans), plans)

    def remove(self, name: str) -> None:
        """`name` out of the current plan at once: once `fleet rm` answers, no plan shown or
        stored names it; and a round planning meanwhile sees its plan moved on (adopt_plan)."""
        current = self.plan
        if current is not None:
            parts = without_appliances(current, {name})
            version = next_version(current, parts)
            if version != current.version:
                plan = FillPlan(version, parts)
                self.store.save_plan(plan)
                self.plan = plan

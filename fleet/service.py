"""The fleet manager's state and operations, behind both wire shells (fleet/grpc_api.py for
appliances, fleet/http.py for the CLI and services). Decisions are delegated to the pure
cores (steering, planner, keys, registry); this class holds the state between calls, and
hands parts of it to its neighbours: the key set (fleet/keyring.py), the current plan
(fleet/current_plan.py), the origin's listing (fleet/catalogue.py), popularity
(fleet/demand.py), what survives a restart (fleet/softstate.py), versions it did not issue
(fleet/catchup.py), refused calls (fleet/refusals.py), enrolment rules (fleet/enrolment.py),
/metrics (fleet/metrics.py).

Clock and entropy are injected; nothing here blocks on the network.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from edgeflix.log import event
from edgeflix.proto import auth
from edgeflix.tokens import SigningKey
from fleet import softstate
from fleet.catalogue import Catalogue, OriginTitle
from fleet.catchup import CatchUp, foreign_keys
from fleet.clocks import ApplianceClocks
from fleet.config import FleetConfig
from fleet.current_plan import CurrentPlan
from fleet.demand import Demand
from fleet.enrolment import (
    JOIN_TOKEN_TTL_S,
    check_enrolment,
    check_open_room,
    new_join_token,
    site_for_url,
)
from fleet.errors import UnknownNameError
from fleet.keyring import Keyring
from fleet.keys import KeySet, key_for
from fleet.metrics import render_metrics
from fleet.model import FleetSnapshot, check_appliance_url
from fleet.planning import PlanJob
from fleet.plans import CatalogTitle, FillPlan, without_appliances
from fleet.popularity import Popularity
from fleet.refusals import Refusals
from fleet.registry import ApplianceRecord, Beat, BeatVerdict, accept_beat, build_snapshot
from fleet.steering import Candidate, SteeringDecision, steer
from fleet.store import Store
from fleet.urls import SignedUrls, TokenCache, playback_urls

log = logging.getLogger("fleet")
SNAPSHOT_MAX_AGE_S = 1.0


class FleetService:
    def __init__(
        self,
        config: FleetConfig,
        store: Store,
        clock: Callable[[], float] = time.time,
        entropy: Callable[[int], bytes] = secrets.token_bytes,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock  # wall time: keys, tokens, popularity, what people read
        self.monotonic = monotonic  # intervals: an appliance's silence, the snapshot's age
        self.entropy = entropy
        self.sites = config.site_list()
        self.records: dict[str, ApplianceRecord] = store.appliances()
        now = clock()
        # The last beats saved before a restart, with the age they had: appliances stay
        # steerable for the usual missed-beats grace instead of every session going to the
        # origin until each one beats again (gRPC reconnects within 2 s of our return);
        # liveness counts their silence from here (snapshot), `fleet ls` shows all of it.
        self._started = monotonic()
        self.beats: dict[str, Beat] = softstate.restore_beats(
            store, self.records, now, self._started
        )
        # Weeks of counts (the long half-life) survive a restart: kept in the store.
        kept = softstate.kept_popularity(store)
        self.demand = Demand(config.popularity_policy(), self.sites, kept, now)
        self.catalogue = Catalogue(store.withdrawn_titles())
        self.catch_up = CatchUp(store)
        self.keyring = Keyring(config, store, clock, entropy, self.catch_up.keys_rebased, now)
        self.current = CurrentPlan(store, self.sites, config.origin.url)
        self.outcomes: Counter[str] = Counter()
        self.refusals = Refusals(clock, monotonic)
        self.fill_now: set[str] = set()
        # Set when the fleet changed enough that waiting for the next planning round is wasteful.
        self.replan_due = True
        self._snapshot: FleetSnapshot | None = None
        self._snapshot_at = 0.0
        # The steering path's per-request work, done once: the policy (config is frozen),
        # the signing key (Keyring.signers), tokens.
        self._steering_policy = config.steering_policy()
        self._tokens = TokenCache()

    # What the neighbours keep, under the names the wire shells and tests read it by.

    @property
    def keys(self) -> KeySet:
        return self.keyring.keys

    @property
    def current_plan(self) -> FillPlan | None:
        return self.current.plan

    @property
    def popularity(self) -> Popularity:
        return self.demand.fleet

    @property
    def site_popularity(self) -> dict[str, Popularity]:
        return self.demand.sites

    @property
    def clocks(self) -> ApplianceClocks:
        return self.refusals.clocks

    def save_soft_state(self) -> None:
        """Keep the decayed counts and the last beats (the server calls this every few
        minutes and on stop): what a restart would otherwise have to learn again."""
        self._prune_popularity()
        softstate.save(self.store, self.demand.to_dict(), self.beats, self.records)

    # -- registry --------------------------------------------------------------------

    def snapshot(self) -> FleetSnapshot:
        """Rebuilt on each heartbeat and at least every second (liveness needs the clock)."""
        mono = self.monotonic()
        if self._snapshot is None or not 0 <= mono - self._snapshot_at <= SNAPSHOT_MAX_AGE_S:
            hb = self.config.heartbeat
            self._snapshot = build_snapshot(
                self.sites,
                self.records,
                softstate.heard_since(self.beats, self._started),
                mono,
                hb.interval_s,
                hb.missed_beats,
                self.config.origin.url,
                min((s.since for s in self.keyring.signers(self.clock())), default=0),
                self.catalogue.digests(),
                self.catalogue.withdrawn,
            )
            self._snapshot_at = mono
        return self._snapshot

    def _changed(self) -> None:
        self._snapshot = None

    def record(self, name: str) -> ApplianceRecord:
        rec = self.records.get(name)
        if rec is None:
            raise UnknownNameError(f"no appliance named '{name}'")
        return rec

    def _reread(self, name: str) -> None:
        """One record as stored after a change to it (the table holds every appliance)."""
        rec = self.store.appliance(name)
        if rec is None:
            self.records.pop(name, None)
        else:
            self.records[name] = rec

    def join_token(self, site: str) -> str:
        if site not in {s.name for s in self.sites}:
            known = ", ".join(s.name for s in self.sites) or "none configured"
            raise UnknownNameError(f"no site named '{site}' (sites: {known})")
        token = new_join_token(self.entropy)
        self.store.add_join_token(token, site, self.clock(), JOIN_TOKEN_TTL_S)
        event(log, "fleet.join_token", site=site)
        return token

    def enrol(self, token: str, name: str, url: str, public_key: bytes) -> ApplianceRecord:
        url = check_enrolment(name, url, public_key)
        open_mode = self.config.server.enrolment == "open" and not token
        if open_mode:
            check_open_room(self.records, name, self.config.server.open_enrolment_limit)
        site = site_for_url(self.sites, url) if open_mode else ""
        rec = self.store.enrol(
            None if open_mode else token, name, url, public_key, site, self.clock()
        )
        # The one record changes; the snapshot is rebuilt when next read (as after a beat),
        # not once per enrolment: a burst of them cost more each, quadratic in all.
        self.records[name] = rec
        self._changed()
        self.replan_due = True
        event(log, "fleet.enrolled", appliance=name, site=rec.site)
        return rec

    def heartbeat(
        self, name: str, beat: Beat, counts: Mapping[str, int], url: str = ""
    ) -> BeatVerdict:
        """Record a beat; `url` (when sent) is where the appliance serves now: a box whose
        address or port changed since it enrolled is steered to its new one. Returns what
        became of it: only a "taken" beat's counts were added (a "repeat" one's were, with
        its first copy; a "stale" one's never: the appliance is told to keep them)."""
        rec = self.record(name)
        url = check_appliance_url(url) if url else rec.url  # a bad one refuses the whole beat
        beat = replace(beat, seen=self.monotonic())  # silence is measured from here
        verdict = accept_beat(self.beats.get(name), beat)
        if verdict != "taken":
            return verdict
        if url != rec.url:
            self.store.set_url(name, url)
            self._reread(name)
            event(log, "fleet.url_changed", appliance=name, url=url, previous=rec.url)
        reported = beat
        if foreign_keys(self.keyring, beat):
            # Its key set is not one this fleet issued (see fleet/catchup.py): which of our
            # keys it holds is unknown, so none is assumed. Steering leaves it out, rather
            # than sign URLs it would refuse, until it fetches ours (on this beat's answer)
            # and reports it, one beat later.
            beat = replace(beat, keys_version=0)
        self.beats[name] = beat
        if self.catch_up.hear(name):
            self.replan_due = True  # left out of the plans since a catch-up until now
        deltas = {t: float(b) for t, b in counts.items() if self.catalogue.countable(t, beat)}
        self.demand.count(deltas, beat.at, self.records[name].site)
        self._changed()
        # Last: if its write fails, the beat and its counts are in, and the appliance's
        # resend of the same sequence is dropped, so nothing is counted twice.
        self._catch_up_versions(name, reported)
        return verdict

    def _catch_up_versions(self, name: str, beat: Beat) -> None:
        """Ours moved above a key set or plan `name` runs that this manager did not issue
        (its database restored from a backup, or replaced: see fleet/catchup.py)."""
        if self.catch_up.keys_after(name, beat, self.keyring):
            self._changed()
        if self.catch_up.plan_after(name, beat, self.current_plan, self.plan_digest):
            self.replan_due = True

    def _prune_popularity(self) -> None:
        self.demand.prune(self.catalogue, self.beats.values())

    def keys_digest(self) -> bytes:
        """KeySet.digest of the current key set (appliances report it back)."""
        return self.keyring.digest()

    def plan_digest(self) -> bytes:
        """PlanResponse.digest of the current plan (b"" when there is none)."""
        return self.current.digest()

    def keys_rebased(self) -> bool:
        """Whether the key set is one a catch-up made (no rotation or revocation since)."""
        return self.catch_up.keys_rebased(self.keys)

    def auth_refused(self, error: auth.AuthError, name: str = "", peer: str = "") -> None:
        """A signed call refused (see Refusals.auth_refused)."""
        self.refusals.auth_refused(error, name, peer)

    def enrolment_refused(self, reason: str, name: str, peer: str) -> None:
        """An Enrol refused (see Refusals.enrolment_refused)."""
        self.refusals.enrolment_refused(reason, name, peer)

    def auth_accepted(self, name: str, correction: float) -> None:
        """A signed call of `name` accepted, signed at its clock plus `correction`."""
        self.refusals.auth_accepted(name, correction)

    def set_drained(self, name: str, drained: bool) -> None:
        self.store.set_drained(name, drained)
        self._reread(name)
        self._changed()
        self.replan_due = True  # its site peers take over its titles at the next tick
        event(log, "fleet.drain" if drained else "fleet.undrain", appliance=name)

    def remove(self, name: str) -> None:
        self.store.remove(name)
        self.records.pop(name, None)
        self.beats.pop(name, None)
        self.catch_up.forget(name)
        self.fill_now.discard(name)
        self.clocks.forget(name)
        self._changed()
        # Its titles go to its site peers on the next tick, not the next planning round.
        self.replan_due = True
        event(log, "fleet.removed", appliance=name)
        self.current.remove(name)

    # -- steering ----------------------------------------------------------------------

    def steer(
        self, client_ip: str, title_id: str, *, count: bool = True
    ) -> tuple[SteeringDecision, SignedUrls]:
        decision = steer(
            self.snapshot(), client_ip, title_id, self._steering_policy, self.catalogue.listed
        )
        now = self.clock()
        s = self.config.steering
        usable = self.keyring.signers(now)
        beats = self.beats

        def key_of(c: Candidate) -> SigningKey | None:
            # The best key this appliance holds: after a rotation, one that has not fetched
            # the new key set yet gets the key it replaced (steering left out any with none).
            beat = beats.get(c.name)
            return key_for(usable, beat.keys_version if beat else 0)

        urls = playback_urls(
            decision,
            key_of,
            now,
            s.token_ttl_s,
            bind_client_ip=s.bind_client_ip,
            signer=self._tokens,
        )
        if count:
            self.outcomes[decision.outcome] += 1
            if decision.outcome != "in_site":
                title = self.catalogue.titles.get(decision.title_id)
                self.demand.count_unserved(decision, title, now)
        return decision, urls

    # -- keys (fleet/keyring.py): each change rebuilds the snapshot, as which appliances
    # hold a usable key may change with it ----------------------------------------------

    def maybe_rotate_keys(self) -> bool:
        if self.keyring.rotation_due():
            self.rotate_keys(immediate=not self.keys.keys)
            return True
        return False

    def rotate_keys(self, immediate: bool = False) -> None:
        self.keyring.rotate(immediate)
        self._changed()

    def revoke_key(self, key_id: str) -> None:
        """Take a (leaked) key out of the key set now (see Keyring.revoke)."""
        self.keyring.revoke(key_id)
        self._changed()

    def verification_keys(self) -> dict[str, bytes]:
        return self.keyring.verification_keys()

    # -- catalog and planning ---------------------------------------------------------

    def set_origin_titles(self, titles: Iterable[OriginTitle]) -> None:
        """The origin answered its listing (the server calls this only then: an origin it
        cannot read leaves everything as the last listing made it)."""
        listing = {t.id: t for t in titles}
        # Stored first: if that fails, the last listing's state stays whole, here too.
        releases, withdrawn = self.store.record_listing(sorted(listing), self.clock())
        self.catalogue.take(listing, releases, withdrawn)
        self._changed()  # steering prefers holders of each title's current version

    def catalog(self) -> dict[str, CatalogTitle]:
        """What is planned (see Catalogue.planned)."""
        return self.catalogue.planned(self.beats.values())

    def plan_job(self) -> PlanJob:
        """A planning round's inputs as they are now (fleet/planning.py plans them)."""
        self.replan_due = False
        now = self.clock()
        self._prune_popularity()
        catalog = self.catalog()
        demand, site_demand = self.demand.for_plan(now, self.catalogue.releases, catalog)
        job = PlanJob(
            self.snapshot().appliances,
            demand,
            catalog,
            self.current_plan,
            self.config.planner_policy(),
            site_demand,
        )
        self.catch_up.planning(job)
        return job

    def adopt_plan(self, job: PlanJob, new: FillPlan) -> FillPlan | None:
        """Make `new` (planned from `job`) the current plan. Dropped, and planned again on
        the next tick, when the current plan moved on while it was made (one was removed),
        or an appliance's plan caught up since: versions only ever rise, from the plan they
        were made from. Appliances removed meanwhile are never in what it adopts; after a
        catch-up, nor are those not heard from since this start (fleet/catchup.py)."""
        current = self.current_plan
        left_out = self.catch_up.left_out_of(job)
        if current is not job.previous or left_out is None:
            self.replan_due = True
            return current
        gone = {a.name for a in job.appliances if a.name not in self.records}
        if gone:
            # Removed while this was planned, with no plan to move on (none yet): taken out
            # before anyone sees it; its titles go to its peers in the round planned next.
            self.replan_due = True
        if gone or left_out:
            new = FillPlan(new.version, without_appliances(new, gone | left_out))
        return self.current.adopt(new, job.previous, self.catch_up.plan_floor)

    def replan(self) -> FillPlan:
        """A planning round on this thread (tests; the server plans in fleet/planning.py)."""
        job = self.plan_job()
        adopted = self.adopt_plan(job, job.run())
        assert adopted is not None  # nothing can move the plan on between the two calls
        return adopted

    def request_fill_now(self, site: str | None) -> list[str]:
        """Flag the site's appliances to fill once now; those not heard from lately are
        left out (one would take the flag days later, at whatever hour it came back)."""
        if site is not None and site not in {s.name for s in self.sites}:
            raise UnknownNameError(f"no site named '{site}'")
        states = {a.name: a.state for a in self.snapshot().appliances}
        wanted = [r.name for r in self.records.values() if site is None or r.site == site]
        names = [n for n in wanted if states.get(n) not in (None, "unreachable")]
        skipped = sorted(set(wanted) - set(names))
        if skipped:
            event(log, "fleet.fill_now.skipped", appliances=",".join(skipped),
                  reason="unreachable")  # fmt: skip
        self.fill_now.update(names)
        return sorted(names)

    def take_fill_now(self, name: str) -> bool:
        if name in self.fill_now:
            self.fill_now.discard(name)
            return True
        return False

    def metrics(self) -> str:
        snap, plan = self.snapshot(), self.current_plan
        return render_metrics(
            snap,
            self.outcomes,
            self.refusals.by_reason,
            plan.version if plan else 0,
            self.keys.version,
        )

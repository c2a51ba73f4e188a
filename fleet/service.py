"""The fleet manager's state and operations, behind both wire shells (fleet/grpc_api.py for
appliances, fleet/http.py for the CLI and services). Decisions are delegated to the pure
cores (steering, planner, keys, registry); this class holds the state between calls.

Clock and entropy are injected; nothing here blocks on the network.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import math
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from edgeflix.log import event
from edgeflix.metrics import Sample, render
from edgeflix.proto import auth
from edgeflix.tokens import SigningKey
from fleet.clocks import LOG_EVERY_S, MAX_TRACKED, ApplianceClocks
from fleet.config import FleetConfig
from fleet.errors import FleetError, FleetInputError, UnknownNameError
from fleet.keys import (
    KeySet,
    Signer,
    cover_token_ttl,
    digest,
    key_for,
    rebase,
    revoke_now,
    rotate,
    rotation_due,
    signers,
    verification_keys,
)
from fleet.model import (
    APPLIANCE_STATES,
    FleetSnapshot,
    check_appliance_url,
    check_name,
    parse_address,
)
from fleet.planning import PlanJob
from fleet.plans import CatalogTitle, FillPlan, next_version, without_appliances
from fleet.popularity import Popularity, blend_site_demand, predicted_demand
from fleet.registry import (
    ApplianceRecord,
    Beat,
    BeatVerdict,
    accept_beat,
    beat_from_dict,
    beat_to_dict,
    build_snapshot,
)
from fleet.steering import OUTCOMES, Candidate, SteeringDecision, steer
from fleet.store import Store, plan_to_json
from fleet.urls import SignedUrls, TokenCache, playback_urls

log = logging.getLogger("fleet")
JOIN_TOKEN_TTL_S = 7 * 86_400.0
SNAPSHOT_MAX_AGE_S = 1.0
# A version reported above ours by more than this is an appliance's bug, not a restored
# backup: it is not followed (a version near 2**64 would not fit the wire or the table).
MAX_VERSION_JUMP = 1_000_000
POPULARITY_META = "popularity"
BEATS_META = "last_beats"
# The key ids of the set a catch-up made (see _rebase_keys): while the key set holds exactly
# these (no rotation or revocation since), it goes out marked `rebased`.
KEYS_REBASED_META = "keys_rebased"
# Of the names a refusal is about (made up by anyone who reaches the port), this many are
# logged in LOG_EVERY_S at most; the rest are counted at /metrics only.
MAX_NAMES_LOGGED = 50
RESTORED_ACTION = (
    "key revocations and rotations made after the backup are lost here: revoke again any key "
    "revoked since (edgeflix fleet keys revoke ID); appliances keep refusing the ones they saw "
    "revoked"
)
UNKNOWN_ACTION = (
    "not in this fleet's database (removed, or the database was lost or restored): give it a "
    "new join token (edgeflix fleet join-token --site S)"
)
# How much the fleet's taste counts in a site's demand, relative to the site's own.
SITE_BLEND = 0.25


class NameLog:
    """Which names a refusal is logged for now: each at most once in `every_s`, at most
    `per_window` names in `every_s` in all, `limit` names remembered (the least recently
    logged forgotten first), as fleet/clocks.py keeps its readings. The names come from
    callers nobody enrolled, so neither memory nor the log grows with how many they make
    up. `mono`: monotonic seconds."""

    def __init__(
        self,
        every_s: float = LOG_EVERY_S,
        limit: int = MAX_TRACKED,
        per_window: int = MAX_NAMES_LOGGED,
    ) -> None:
        self.every_s, self.limit, self.per_window = every_s, limit, per_window
        self._logged: OrderedDict[str, float] = OrderedDict()
        self._window = (float("-inf"), 0)  # its start, names logged in it

    def due(self, name: str, mono: float) -> bool:
        last = self._logged.get(name)
        if last is not None and 0 <= mono - last < self.every_s:
            return False
        start, count = self._window
        if not 0 <= mono - start < self.every_s:
            start, count = mono, 0
        if count >= self.per_window:
            return False
        self._window = (start, count + 1)
        self._logged.pop(name, None)
        self._logged[name] = mono
        while len(self._logged) > self.limit:
            self._logged.popitem(last=False)
        return True


def said_name(text: str) -> str:
    """A name a caller sent, as a log line may show it: printable, 80 characters at most."""
    return "".join(c for c in text[:80] if c.isprintable())


class OpenEnrolmentFull(FleetError):
    """Open enrolment has enrolled `[server] open_enrolment_limit` appliances."""

    http_status = 429


@dataclass(frozen=True)
class OriginTitle:
    id: str
    digest: str
    total_bytes: int


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
        self.beats: dict[str, Beat] = _restore_beats(
            store.meta(BEATS_META), self.records, now, self._started
        )
        popularity = config.popularity_policy()
        self._miss_share = popularity.miss_session_share
        # Weeks of counts (the long half-life) survive a restart: kept in the store.
        kept = _json_or_empty(store.meta(POPULARITY_META))
        self.popularity = Popularity.restore(popularity, kept.get("fleet", {}), now)
        self.site_popularity = {
            s.name: Popularity.restore(popularity, kept.get("sites", {}).get(s.name, {}), now)
            for s in self.sites
        }
        # Counted before the restart: kept until the origin lists its titles (see
        # _prune_popularity), whether or not an appliance holds them now.
        self._restored_titles = frozenset(
            t for p in (self.popularity, *self.site_popularity.values()) for t in p.titles()
        )
        self.origin_titles: dict[str, OriginTitle] = {}
        self.origin_read = False  # its catalogue read at least once (see catalog)
        # What /steer may hand out: the titles of the origin's last listing of any since
        # this start, None until one (see set_origin_titles).
        self.listed: frozenset[str] | None = None
        self.releases: dict[str, float] = {}
        # See FleetSnapshot.withdrawn. As of the origin's last listing, kept in the store:
        # a restart with the origin unreachable refuses them still.
        self.withdrawn: frozenset[str] = store.withdrawn_titles()
        self.keys = store.keyset()
        # Every key that may sign from now on is marked with this config's token TTL (its
        # verification after retiring lasts that long), raised, never lowered.
        covered = cover_token_ttl(self.keys, now, config.key_policy())
        if covered is not self.keys:
            store.save_keyset(covered)
            self.keys = covered
        self._keys_digest: tuple[KeySet, bytes] | None = None
        self._rebased_ids = _key_ids(store.meta(KEYS_REBASED_META))
        # A catch-up rotates once per start (a restore is a restart): an appliance reporting
        # a higher version beat after beat must not make a key each time.
        self._rotated_on_catch_up = False
        self.current_plan: FillPlan | None = store.plan()
        # Set by a catch-up of the plan (see _catch_up_plan): the plan a round must go above,
        # and from then on the plans adopted leave out appliances not heard since this start
        # (their beats are the backup's); the round in flight with whom it leaves out.
        self._plan_floor = 0
        self._plan_restored = False
        self._job_left_out: tuple[PlanJob, frozenset[str]] | None = None
        self._heard: set[str] = set()  # appliances with a beat taken since this start
        self._plan_digest: tuple[FillPlan, bytes] | None = None
        self.outcomes: Counter[str] = Counter()
        self.auth_refusals: Counter[str] = Counter()  # signed calls refused, by reason
        self.clocks = ApplianceClocks()
        self._unknown_log = NameLog()
        self._enrolment_log = NameLog()
        self.fill_now: set[str] = set()
        # Set when the fleet changed enough that waiting for the next planning round is wasteful.
        self.replan_due = True
        self._snapshot: FleetSnapshot | None = None
        self._snapshot_at = 0.0
        # The steering path's per-request work, done once: the policy (config is frozen),
        # the signing key (until the key set changes or a key activates or retires), tokens.
        self._steering_policy = config.steering_policy()
        self._signing: tuple[KeySet, float, float, tuple[Signer, ...]] | None = None
        self._tokens = TokenCache()

    def save_soft_state(self) -> None:
        """Keep the decayed counts and the last beats (the server calls this every few
        minutes and on stop): what a restart would otherwise have to learn again."""
        self._prune_popularity()
        doc = {
            "fleet": self.popularity.to_dict(),
            "sites": {name: p.to_dict() for name, p in self.site_popularity.items()},
        }
        self.store.set_meta(POPULARITY_META, json.dumps(doc, separators=(",", ":")))
        beats = {
            name: {**beat_to_dict(b), "at": b.at}
            for name, b in self.beats.items()
            if name in self.records
        }
        self.store.set_meta(BEATS_META, json.dumps(beats, separators=(",", ":")))

    # -- registry --------------------------------------------------------------------

    def snapshot(self) -> FleetSnapshot:
        """Rebuilt on each heartbeat and at least every second (liveness needs the clock)."""
        mono = self.monotonic()
        if self._snapshot is None or not 0 <= mono - self._snapshot_at <= SNAPSHOT_MAX_AGE_S:
            hb = self.config.heartbeat
            self._snapshot = build_snapshot(
                self.sites,
                self.records,
                _heard_since(self.beats, self._started),
                mono,
                hb.interval_s,
                hb.missed_beats,
                self.config.origin.url,
                min((s.since for s in self._signers(self.clock())), default=0),
                {t.id: t.digest for t in self.origin_titles.values()},
                self.withdrawn,
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
        token = base64.urlsafe_b64encode(self.entropy(24)).decode().rstrip("=")
        self.store.add_join_token(token, site, self.clock(), JOIN_TOKEN_TTL_S)
        event(log, "fleet.join_token", site=site)
        return token

    def enrol(self, token: str, name: str, url: str, public_key: bytes) -> ApplianceRecord:
        if not name or not url or len(public_key) != 32:
            raise FleetInputError("enrolment needs a name, a URL and a 32-byte Ed25519 key")
        check_name(name, "appliance")
        url = check_appliance_url(url)
        open_mode = self.config.server.enrolment == "open" and not token
        if open_mode:
            self._check_open_room(name)
        site = self._site_for_url(url) if open_mode else ""
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

    def _check_open_room(self, name: str) -> None:
        """Open enrolment takes anyone who reaches the port, so it stops at a limit (each
        appliance is a row, a log line, a planner entry): one client enrolled 2,777 made-up
        ones in 50 s. A name enrolled already may enrol again (a lost reply); join tokens,
        each made by an operator, have no limit."""
        limit = self.config.server.open_enrolment_limit
        if name not in self.records and len(self.records) >= limit:
            raise OpenEnrolmentFull(
                f"open enrolment is full: {len(self.records)} appliances enrolled, "
                f"[server] open_enrolment_limit is {limit}; open enrolment is for loopback "
                'demos: a real fleet uses enrolment = "token" and `edgeflix fleet join-token`'
            )

    def _site_for_url(self, url: str) -> str:
        """Open enrolment: the site whose prefixes hold the appliance's address, else the first."""
        host = urlsplit(url).hostname or ""
        try:
            # Sites only: the fleet's snapshot (every appliance) is not rebuilt for this.
            site = FleetSnapshot(self.sites, ()).site_of(parse_address(host))
        except FleetInputError:
            site = None
        if site is None and not self.sites:
            raise FleetInputError("open enrolment needs at least one [[sites]] entry")
        return (site or self.sites[0]).name

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
        if self._foreign_keys(beat):
            # Its key set is not one this fleet issued (see _catch_up_versions): which of our
            # keys it holds is unknown, so none is assumed. Steering leaves it out, rather
            # than sign URLs it would refuse, until it fetches ours (on this beat's answer)
            # and reports it, one beat later.
            beat = replace(beat, keys_version=0)
        self.beats[name] = beat
        if name not in self._heard:
            self._heard.add(name)
            # Left out of the plans since a catch-up until now: planned from this beat.
            self.replan_due = self.replan_due or self._plan_restored
        deltas = {t: float(b) for t, b in counts.items() if self._countable(t, beat)}
        self.popularity.add(deltas, beat.at)
        site = self.site_popularity.get(self.records[name].site)
        if site is not None:
            site.add(deltas, beat.at)
        self._changed()
        # Last: if its write fails, the beat and its counts are in, and the appliance's
        # resend of the same sequence is dropped, so nothing is counted twice.
        self._catch_up_versions(name, reported)
        return verdict

    def _countable(self, title: str, beat: Beat) -> bool:
        """Whether a beat's count for `title` is kept: the origin lists it, or (until the
        origin has listed titles) it listed it once or the sender holds it. Each title
        counted is an entry in popularity, kept for weeks and saved: an appliance's made-up
        ids, a million a beat, made gigabytes of them and stalled every planning round."""
        if self.origin_read:
            return title in self.origin_titles
        return title in self.releases or title in beat.titles

    def _prune_popularity(self) -> None:
        """Forget the counts of titles out of the catalogue (withdrawn, or never in it), at
        each planning round and save. Until the origin has listed titles (unreachable since
        the start, or listing none) its catalogue is unknown, not empty: then only titles
        counted since the start that nobody holds go (a hostile appliance's rotating ids),
        never those kept from before the restart nor those the origin listed once."""
        keep: Container[str]
        if self.origin_read:
            keep, self._restored_titles = self.origin_titles, frozenset()
        else:
            held = (t for b in self.beats.values() for t in b.titles)
            keep = {*self._restored_titles, *self.releases, *held}
        gone = sum(p.retain(keep) for p in (self.popularity, *self.site_popularity.values()))
        if gone:
            event(log, "fleet.popularity_pruned", entries=gone)

    def keys_digest(self) -> bytes:
        """KeySet.digest of the current key set (appliances report it back)."""
        cached = self._keys_digest
        if cached is None or cached[0] is not self.keys:
            cached = self._keys_digest = (self.keys, digest(self.keys))
        return cached[1]

    def plan_digest(self) -> bytes:
        """PlanResponse.digest of the current plan: of the whole plan as stored, version
        included (b"" when there is none)."""
        plan = self.current_plan
        if plan is None:
            return b""
        cached = self._plan_digest
        if cached is None or cached[0] is not plan:
            h = hashlib.blake2b(plan_to_json(plan), digest_size=16, person=b"edgeflix-plan")
            cached = self._plan_digest = (plan, h.digest())
        return cached[1]

    def _foreign_keys(self, beat: Beat) -> bool:
        """The beat reports a key set this fleet did not issue: a version above ours, or
        ours with other content (by digest; appliances that send none are taken at their
        word)."""
        ours = self.keys.version
        if beat.keys_version > ours:
            return True
        return (
            beat.keys_version == ours
            and bool(beat.keys_digest)
            and beat.keys_digest != self.keys_digest()
        )

    def _catch_up_versions(self, name: str, beat: Beat) -> None:
        """An appliance runs a plan or key set this manager did not issue: the database was
        restored from a backup (or replaced) and the versions went on from there, so an
        appliance may run a higher version, or the same version with other content (the
        backup's next rotation made another key under the number the appliance already
        runs). Appliances fetch only a version above their own and never apply one version
        twice with other content; so ours moves above theirs, which they then fetch and
        apply whole.

        Why this rules the race out rather than narrowing it: a version number may be
        reused, but never silently. Every beat carries the digest of what the appliance
        runs; the only case where an appliance would not fetch ours, its version equal to
        ours, is exactly the case compared here, so whenever an appliance reports (its
        first beat to a restored manager, or days later, back from an outage), a conflict
        is seen and moved past. Learning the highest version before issuing one could not
        do that: an appliance that is off during the restore reports only later."""
        if self._foreign_keys(beat) and beat.keys_version <= self.keys.version + MAX_VERSION_JUMP:
            self._rebase_keys(name, beat.keys_version)
        current = self.current_plan
        ours = current.version if current is not None else 0
        if ours < beat.plan_version <= ours + MAX_VERSION_JUMP or (
            current is not None
            and beat.plan_version == ours
            and beat.plan_digest
            and beat.plan_digest != self.plan_digest()
        ):
            self._catch_up_plan(name, beat.plan_version, ours)

    def _rebase_keys(self, name: str, reported: int) -> None:
        """Our key set above the version `name` reports, marked rebased (KeySet.rebased):
        the keys it holds that ours lacks were made after the backup, not revoked. With a
        new key signing at once: the backup's signing key may have been revoked since, and
        appliances refuse it (they remember revocations), so every URL signed with it until
        the next scheduled rotation (up to a day) would fail."""
        keys, rotated = self.keys, not self._rotated_on_catch_up
        if rotated:
            policy = self.config.key_policy()
            new = rebase(keys, reported, self.clock(), policy, self.entropy(32))
        else:  # rotated at this start already: that key is this manager's own
            new = replace(keys, version=max(reported, keys.version) + 1)
        ids = sorted(k.id for k in new.keys)
        # The mark first: alone (the key set's write failing) it names ids no key set holds.
        self.store.set_meta(KEYS_REBASED_META, json.dumps(ids))
        self._rebased_ids = frozenset(ids)
        self.store.save_keyset(new)
        self.keys = self.store.keyset()
        self._rotated_on_catch_up = True
        self._changed()
        event(log, "fleet.keys_version_caught_up", logging.WARNING, appliance=name,
              reported=reported, version=self.keys.version)  # fmt: skip
        if rotated:
            event(
                log,
                "fleet.restored_from_backup",
                logging.ERROR,
                appliance=name,
                reported=reported,
                version=self.keys.version,
                signing=self._signers(self.clock())[0].key.id,
                reason=f"appliance {name} runs key set {reported}, which this manager did not "
                f"issue (it had {keys.version}): its database was restored from a backup, or "
                "replaced; a new key signs from now",
                action=RESTORED_ACTION,
            )

    def _catch_up_plan(self, name: str, reported: int, ours: int) -> None:
        """The plan `name` runs is not ours (version `reported`): the next round's plan goes
        out above it. Ours is not re-stamped and sent as it is: it is the backup's, and an
        appliance applying it deletes the titles planned since (a plan moments later
        fetches them again). A round planned before this beat is not adopted, and the rounds
        from now leave out appliances not heard from since this start (their beats, like the
        plan, are the backup's): they keep what they run until they beat."""
        if reported > self._plan_floor:
            event(
                log,
                "fleet.plan_version_caught_up",
                logging.WARNING,
                appliance=name,
                reported=reported,
                version=ours,
                action="the next plan, made from what appliances report holding, goes out "
                "above it; appliances not heard from since this start keep their plans until "
                "they beat",
            )
        self._plan_floor = max(self._plan_floor, reported)
        self._plan_restored = True
        self._job_left_out = None
        self.replan_due = True

    def keys_rebased(self) -> bool:
        """Whether the key set is one a catch-up made (no rotation or revocation since)."""
        return bool(self.keys.keys) and self._rebased_ids == {k.id for k in self.keys.keys}

    def auth_refused(self, error: auth.AuthError, name: str = "", peer: str = "") -> None:
        """A signed call refused: counted by reason; one refused for its time (an appliance
        whose clock is off: no RTC, no NTP) is also noted for `fleet ls`/`show` and logged,
        once in a while per appliance. The manager answers it with its own time, which the
        appliance corrects the time it signs at with (appliance/fleetlink_rpc.py).

        One from a name not enrolled (`name`, as the call says; `peer`, where it came from)
        is logged once in a while per name: a box that calls in to a manager whose database
        was lost or restored, or after `fleet rm`, is otherwise refused in silence."""
        self.auth_refusals[error.reason] += 1
        shown = said_name(name)
        if error.reason == "unknown_appliance" and self._unknown_log.due(shown, self.monotonic()):
            event(log, "fleet.unknown_appliance", logging.WARNING, appliance=shown,
                  peer=said_name(peer), action=UNKNOWN_ACTION)  # fmt: skip
        call = error.skewed
        if call is None:
            return
        now, mono = self.clock(), self.monotonic()
        seen = self.clocks.refused(call.name, call.signed_at, call.correction, now, mono)
        if seen is not None:
            event(
                log,
                "fleet.clock_skew",
                logging.WARNING,
                appliance=call.name,
                signed=round(call.signed_at, 3),
                fleet=round(now, 3),
                clock_offset_s=round(seen.offset_s, 1),
                action=f"its calls are refused while more than {auth.MAX_SKEW_S:g} s off this "
                "manager's clock; it corrects the time it signs at from our answer (a version "
                "that can), but set its clock right (NTP), or this manager's if that is off",
            )

    def enrolment_refused(self, reason: str, name: str, peer: str) -> None:
        """An Enrol refused (an unknown, used or expired join token, a name taken by another
        key, open enrolment full): logged once in a while per name, as unknown names are."""
        shown = said_name(name)
        if self._enrolment_log.due(shown, self.monotonic()):
            event(log, "fleet.enrolment_refused", logging.WARNING, reason=reason,
                  appliance=shown, peer=said_name(peer))  # fmt: skip

    def auth_accepted(self, name: str, correction: float) -> None:
        """A signed call of `name` accepted, signed at its clock plus `correction`."""
        self.clocks.accepted(name, correction, self.clock())

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
        self._heard.discard(name)
        self.fill_now.discard(name)
        self.clocks.forget(name)
        self._changed()
        # Its titles go to its site peers on the next tick, not the next planning round.
        self.replan_due = True
        event(log, "fleet.removed", appliance=name)
        # Out of the current plan at once: once `fleet rm` answers, no plan shown or stored
        # names it; and a round planning meanwhile sees its plan moved on (adopt_plan).
        current = self.current_plan
        if current is not None:
            parts = without_appliances(current, {name})
            version = next_version(current, parts)
            if version != current.version:
                plan = FillPlan(version, parts)
                self.store.save_plan(plan)
                self.current_plan = plan

    # -- steering ----------------------------------------------------------------------

    def steer(
        self, client_ip: str, title_id: str, *, count: bool = True
    ) -> tuple[SteeringDecision, SignedUrls]:
        decision = steer(self.snapshot(), client_ip, title_id, self._steering_policy, self.listed)
        now = self.clock()
        s = self.config.steering
        usable = self._signers(now)
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
                self._count_unserved(decision, now)
        return decision, urls

    def _count_unserved(self, decision: SteeringDecision, now: float) -> None:
        """Demand that no heartbeat will report: without it a title that no appliance holds
        could never earn its place in a plan. The client's site did not serve the session;
        nobody at the edge did when it went to the origin (or nowhere)."""
        title = self.origin_titles.get(decision.title_id)
        if title is None or title.total_bytes <= 0:
            return
        delta = {decision.title_id: title.total_bytes * self._miss_share}
        if decision.outcome in ("origin", "none"):
            self.popularity.add(delta, now)
        site = self.site_popularity.get(decision.client_site or "")
        if site is not None:
            site.add(delta, now)

    def _signers(self, now: float) -> tuple[Signer, ...]:
        """signers(), recomputed only when the key set changes or `now` crosses an instant
        where its answer can change (an activation, a retirement plus the skew)."""
        cached = self._signing
        if cached is not None and cached[0] is self.keys and cached[1] <= now < cached[2]:
            return cached[3]
        skew = self.config.key_policy().skew_s
        edges = [k.activates for k in self.keys.keys] + [
            k.retires + skew for k in self.keys.keys if k.retires is not None
        ]
        since = max((t for t in edges if t <= now), default=float("-inf"))
        until = min((t for t in edges if t > now), default=float("inf"))
        found = signers(self.keys, now, self.config.key_policy(), newest_only=self.keys_rebased())
        self._signing = (self.keys, since, until, found)
        return found

    # -- keys --------------------------------------------------------------------------

    def maybe_rotate_keys(self) -> bool:
        if rotation_due(self.keys, self.clock(), self.config.key_policy()):
            self.rotate_keys(immediate=not self.keys.keys)
            return True
        return False

    def rotate_keys(self, immediate: bool = False) -> None:
        keys = rotate(
            self.keys, self.clock(), self.config.key_policy(), self.entropy(32), immediate=immediate
        )
        self.store.save_keyset(keys)
        self.keys = keys
        self._changed()  # which appliances hold a usable key may change with it
        event(log, "fleet.keys_rotated", version=keys.version, newest=keys.keys[-1].id)

    def revoke_key(self, key_id: str) -> None:
        """Take a (leaked) key out of the key set now: appliances drop it on their next
        sync (the new version's number is in every heartbeat answer) and refuse its URLs,
        unexpired or not; if it signed, a new key signs from now (fleet/keys.py)."""
        policy = self.config.key_policy()
        keys = revoke_now(self.keys, key_id, self.clock(), policy, self.entropy(32))
        if keys is None:
            known = ", ".join(k.id for k in self.keys.keys) or "none"
            raise UnknownNameError(f"no key '{key_id}' in the key set (keys: {known})")
        self.store.save_keyset(keys)
        self.keys = keys
        self._changed()  # which appliances hold a usable key may change with it
        event(log, "fleet.key_revoked", logging.WARNING, key=key_id, version=keys.version,
              signing=self._signers(self.clock())[0].key.id)  # fmt: skip

    def verification_keys(self) -> dict[str, bytes]:
        return verification_keys(self.keys, self.clock(), self.config.key_policy())

    # -- catalog and planning ---------------------------------------------------------

    def set_origin_titles(self, titles: Iterable[OriginTitle]) -> None:
        """The origin answered its listing (the server calls this only then: an origin it
        cannot read leaves everything as the last listing made it)."""
        listing = {t.id: t for t in titles}
        # Stored first: if that fails, the last listing's state stays whole, here too.
        releases, withdrawn = self.store.record_listing(sorted(listing), self.clock())
        self.origin_titles, self.releases, self.withdrawn = listing, releases, withdrawn
        self._changed()  # steering prefers holders of each title's current version
        # An empty listing is taken as neither the catalogue nor a withdrawal (an origin
        # pointed at a mistyped or fresh store would prune every appliance and refuse every
        # title at once): appliances keep and serve what they hold until it lists titles.
        self.origin_read = bool(listing)
        if listing:
            # Steering refuses (404) a title not listed: its origin URL would 404 and no
            # appliance is planned to hold it. One ingested since the last poll is refused
            # until the next one reads it, about [origin] poll_s (30 s by default): the
            # player is told plainly and may retry, nothing at the edge holds it yet, and
            # asking the origin on the request path would let any client make the manager
            # call it at will. Before a listing of titles since this start (the origin
            # unreachable, or listing nothing) nothing is refused this way, and a title no
            # appliance holds goes to the origin; an empty listing keeps the one before.
            self.listed = frozenset(listing)
        else:
            kept = "appliances keep and serve what they hold until the origin lists titles"
            event(log, "fleet.origin_empty", logging.WARNING, action=kept)

    def catalog(self) -> dict[str, CatalogTitle]:
        """The origin's titles. Until it has listed some (unreachable since the manager
        started, or listing none), the titles appliances report stand in for it; after that,
        a title the origin no longer lists (withdrawn) is planned nowhere, so appliances
        prune it."""
        out: dict[str, CatalogTitle] = {}
        if not self.origin_read:
            for beat in self.beats.values():
                for tid, held in beat.titles.items():
                    if held.complete and held.size_bytes > 0:
                        out.setdefault(tid, CatalogTitle(held.size_bytes, held.digest))
        for t in self.origin_titles.values():
            out[t.id] = CatalogTitle(t.total_bytes, t.digest)
        return out

    def plan_job(self) -> PlanJob:
        """A planning round's inputs as they are now (fleet/planning.py plans them)."""
        self.replan_due = False
        now = self.clock()
        self._prune_popularity()
        catalog = self.catalog()
        policy = self.config.popularity_policy()
        fleet_wide = self.popularity.rates(now, self.releases)
        # A new catalogue with no traffic yet: every title a little demand, so fresh
        # appliances fill with something, then by traffic as it comes.
        floor = dict.fromkeys(catalog, 1.0)

        def demand(observed: dict[str, float]) -> dict[str, float]:
            # Only what can be planned crosses to the planner (it skips the rest anyway).
            predicted = predicted_demand(observed, self.releases, now, policy)
            return {**floor, **{t: v + 1.0 for t, v in predicted.items() if t in catalog}}

        site_demand = {
            site: demand(
                blend_site_demand(counts.rates(now, self.releases), fleet_wide, SITE_BLEND)
            )
            for site, counts in self.site_popularity.items()
        }
        job = PlanJob(
            self.snapshot().appliances,
            demand(fleet_wide),
            catalog,
            self.current_plan,
            self.config.planner_policy(),
            site_demand,
        )
        if self._plan_restored:  # see _catch_up_plan
            unheard = frozenset(a.name for a in job.appliances if a.name not in self._heard)
            self._job_left_out = (job, unheard)
        return job

    def adopt_plan(self, job: PlanJob, new: FillPlan) -> FillPlan | None:
        """Make `new` (planned from `job`) the current plan. Dropped, and planned again on
        the next tick, when the current plan moved on while it was made (one was removed),
        or an appliance's plan caught up since: versions only ever rise, from the plan they
        were made from. Appliances removed meanwhile are never in what it adopts; after a
        catch-up, nor are those not heard from since this start (see _catch_up_plan)."""
        current = self.current_plan
        left_out = self._left_out_of(job)
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
        new = self.with_schedules(new, job.previous)
        if new.version <= self._plan_floor:  # above what appliances run (_catch_up_plan)
            new = FillPlan(self._plan_floor + 1, new.appliances)
        if current is not None and new.version == current.version:
            # Same content: keep the version as made, with its diff against the one before
            # (a new diff against itself would say nothing changed, unlike the stored one).
            return current
        self.store.save_plan(new)
        event(log, "fleet.plan", version=new.version, appliances=len(new.appliances))
        self.current_plan = new
        return new

    def _left_out_of(self, job: PlanJob) -> frozenset[str] | None:
        """Who `job`'s plan leaves out (see _catch_up_plan); None: it is not to be adopted,
        planned before a catch-up."""
        if not self._plan_restored:
            return frozenset()
        made = self._job_left_out
        return made[1] if made is not None and made[0] is job else None

    def with_schedules(self, new: FillPlan, previous: FillPlan | None) -> FillPlan:
        """`new` with what each appliance's part is published with (its site's window and
        time zone, the origin's URL) in its content, and its version counted again: an
        operator's change of those in fleet.toml then reaches the appliances, which only
        fetch a plan of a higher version."""
        sites = {s.name: s for s in self.sites}
        origin = self.config.origin.url

        def schedule(site: str) -> str:
            s = sites.get(site)
            return json.dumps([str(s.fill_window), s.timezone, origin] if s else [None, origin])

        plans = {
            name: dataclasses.replace(p, schedule=schedule(p.site))
            for name, p in new.appliances.items()
        }
        return FillPlan(next_version(previous, plans), plans)

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

    # -- metrics -------------------------------------------------------------------------

    def metrics(self) -> str:
        snap = self.snapshot()
        # Every state, 0 when none is in it: a state that empties must read 0, not vanish (a
        # query or alert on `state="failing"` would keep its last value or show no data).
        states = Counter({s: 0 for s in APPLIANCE_STATES})
        states.update(a.state for a in snap.appliances)
        return render(
            [
                (
                    "edgeflix_fleet_steering_total",
                    "counter",
                    "Steering answers by outcome (where the best URL points, and why).",
                    [Sample({"outcome": o}, self.outcomes[o]) for o in OUTCOMES],
                ),
                (
                    "edgeflix_fleet_appliances",
                    "gauge",
                    "Enrolled appliances by state.",
                    [Sample({"state": s}, n) for s, n in sorted(states.items())],
                ),
                (
                    "edgeflix_fleet_auth_refusals_total",
                    "counter",
                    "Signed gRPC calls refused, by reason (clock_skew: signed more than "
                    f"{auth.MAX_SKEW_S:g} s from this manager's clock).",
                    [Sample({"reason": r}, self.auth_refusals[r]) for r in auth.REFUSAL_REASONS],
                ),
                (
                    "edgeflix_fleet_plan_version",
                    "gauge",
                    "Version of the current fill plan.",
                    [Sample({}, self.current_plan.version if self.current_plan else 0)],
                ),
                (
                    "edgeflix_fleet_keys_version",
                    "gauge",
                    "Version of the URL-token key set.",
                    [Sample({}, self.keys.version)],
                ),
            ]
        )


def _key_ids(raw: str | None) -> frozenset[str] | None:
    """The ids KEYS_REBASED_META keeps (None: none, or not readable)."""
    try:
        ids = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return None
    return frozenset(ids)


def _json_or_empty(raw: str | None) -> dict[str, Any]:
    """Kept state, or nothing when it is missing or unreadable (counts rebuild from beats)."""
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _restore_beats(
    raw: str | None, records: Mapping[str, ApplianceRecord], now: float, mono: float
) -> dict[str, Beat]:
    """Saved beats of appliances still enrolled, received when they were (`at`, on the wall
    clock `now` reads; `seen` that long before `mono`); one of another shape is skipped (its
    appliance is unreachable until it beats, as it would be with nothing saved)."""
    beats = {}
    for name, doc in _json_or_empty(raw).items():
        if name not in records or not isinstance(doc, dict):
            continue
        try:
            at = _saved_at(doc.get("at"), now)
            beats[name] = beat_from_dict(doc, at, mono - (now - at))
        except (AttributeError, KeyError, TypeError, ValueError):
            event(log, "fleet.beat_unrestored", logging.WARNING, appliance=name)
    return beats


def _saved_at(value: Any, now: float) -> float:
    """When a saved beat arrived: `now` if not saved (a file from before it was) or not a
    time, and at the latest `now` (saved while the clock was ahead, and set right since)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return now
    return min(float(value), now)


def _heard_since(beats: dict[str, Beat], started: float) -> dict[str, Beat]:
    """The beats as liveness measures them: one restored from before this manager started
    counts as received at its start (it could hear none before), so its appliance has the
    usual missed-beats grace to beat again; its real age stays in `beats` for display."""
    if all(b.seen is None or b.seen >= started for b in beats.values()):
        return beats
    return {
        name: b if b.seen is None or b.seen >= started else replace(b, seen=started)
        for name, b in beats.items()
    }

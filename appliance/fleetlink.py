"""The appliance's link to the fleet manager (I/O shell): enrol once with `[fleet] join_token`
and a key pair of its own, then heartbeat over signed gRPC calls, fetch newer plans and key
sets, hand them to the fill scheduler and the serving workers, and keep serving on the
cached ones while the fleet is away (`grace_period_s`, then degrade as configured).

FleetLink is the thread and its round; it coordinates the link's parts: the enrolment
(fleetlink_enrol.py), the plan and key set received (fleetlink_received.py), the failures
explained (fleetlink_diagnosis.py), the calls (fleetlink_rpc.py) and the files kept
(fleetlink_state.py). The rules are pure: beats, plans and the grace period in
fleetlink_core.py, keys in fleetlink_keys.py, the clock in fleetlink_clock.py. daemon.py
builds one FleetLink with callables for its figures (health, traffic) and its sinks (plan,
keys), and start()s / stop()s it; everything here runs on the link's own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from appliance.config import ApplianceConfig, FleetLinkConfig
from appliance.fill.plan import FillPlan
from appliance.fleetlink_clock import Contact, KeptCorrection, boot_id, clock_note
from appliance.fleetlink_core import (
    BeatFigures,
    CountLedger,
    Phase,
    build_beat,
    link_health,
    load_bps,
    phase,
)
from appliance.fleetlink_diagnosis import Diagnosis
from appliance.fleetlink_enrol import Enrolled, Enrolling
from appliance.fleetlink_figures import (
    BoxHealth,
    Traffic,
    fill_figures,
    held_titles,
    tier_figures,
)
from appliance.fleetlink_files import Enrolment, StoredPlan
from appliance.fleetlink_keys import FleetKey, KeyHistory
from appliance.fleetlink_received import Received
from appliance.fleetlink_rpc import CallFailed, FleetRpc
from appliance.fleetlink_state import LinkState, LinkStateError
from appliance.health import FleetLinkView
from edgeflix.errors import EdgeflixError
from edgeflix.log import event
from edgeflix.proto import auth
from edgeflix.proto.codec import TITLES_NEEDED
from edgeflix.versioning import Versioned

log = logging.getLogger("appliance.fleet")


@dataclass
class LinkSinks:
    """Where the link's results go (the daemon's fill scheduler and serving workers) and
    what it reads from the daemon."""

    health: Callable[[], BoxHealth]
    traffic: Callable[[], Traffic]
    submit_plan: Callable[[FillPlan], None]
    set_keys: Callable[[dict[str, bytes]], None]
    fill_state: Callable[[], dict[str, Any]] = dict
    out_of_service: Callable[[], set[str]] = set
    # The workers check token expiries at their clock plus this (fleetlink_rpc's correction:
    # the fleet signs them on its clock); it goes to them with the keys (appliance/keyfile.py),
    # and to the fill scheduler, whose windows are the fleet's too.
    set_clock_correction: Callable[[float], None] = lambda correction: None


class FleetLink:
    def __init__(
        self,
        config: ApplianceConfig,
        url: str,
        sinks: LinkSinks,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        boot: str | None = None,
    ) -> None:
        """`boot`: the kernel's boot id (None: read it), which says whether a monotonic
        reading the last run saved can be compared with this one's (KeptCorrection)."""
        fleet = config.fleet
        if fleet.url is None:
            raise ValueError("FleetLink needs [fleet] url")
        self.config = config
        self.fleet: FleetLinkConfig = fleet
        self.name = fleet.name or config.name
        self.url = fleet.public_url or url
        self.sinks = sinks
        self.clock = clock  # the wall clock: what is saved, signed and shown
        self.monotonic = monotonic  # silence within a run is measured on this (Contact)
        self.state_store = LinkState(config.fleet_state_dir())
        self.key = self.state_store.private_key()
        self.ledger = CountLedger()
        self.drained = False
        self.phase: Phase = "unenrolled"
        self.last_error: str | None = None
        self.beats = 0
        self._load_prev: tuple[float, int] | None = None
        self._interval_s = fleet.heartbeat_s
        self._problem_saved: str | None = None  # problem.json as last written
        self._reopen = False  # a SIGHUP changed the fleet's address: a new channel
        # Set by every enrolment: the fleet's versions may belong to another lineage (its
        # database was reset, or this is another fleet), so its key set and plan are taken
        # as they are, not compared with the cached ones (an equal version with other
        # content would otherwise be refused, and every URL it signs with them).
        self._rebase = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        # The digest of the held-titles list the fleet last said it keeps: beats leave the
        # list out while ours matches it. Forgotten with the connection it came over.
        self._fleet_titles = b""
        self._thread = threading.Thread(target=self._main, name="fleet-link", daemon=True)
        self.kept = KeptCorrection(
            self.state_store,
            lambda: self.fleet.url or "",
            clock,
            monotonic,
            boot_id() if boot is None else boot,
        )
        self.rpc = FleetRpc(
            fleet, self.state_store, self.name, self.key, clock, on_change=self.kept.changed
        )
        self.contact = Contact(self.state_store, clock, monotonic, self._lock, self.rpc.follow_step)
        self.diagnosis = Diagnosis(self.state_store, clock)
        self.enrolling = Enrolling(
            self.name,
            self.url,
            self.key,
            self.state_store,
            self.rpc,
            clock,
            self._lock,
            fleet=lambda: self.fleet,
            interval=lambda: self._interval_s,
            note_error=self._note_error,
            reopen=self._ask_reopen,
        )
        self.received = Received(
            self.name,
            self.state_store,
            sinks,
            self.rpc,
            self._call,
            lambda: (self.phase, self.fleet.after_grace),
            self._lock,
        )
        # The link's surface from before its parts were split out, which tests drive.
        self.apply_plan = self.received.apply_plan
        self.apply_keys = self.received.apply_keys
        self._verifying_keys = self.received.verifying_keys
        self._keep_enrolment = self.enrolling.keep  # enrolling again failed for good

    # What the parts hold, as /status, the round and tests read it.

    @property
    def last_contact(self) -> float | None:
        return self.contact.at

    @property
    def enrolment(self) -> Enrolment | None:
        return self.enrolling.enrolment

    @property
    def refused(self) -> str | None:
        return self.enrolling.refused

    @property
    def plan(self) -> StoredPlan | None:
        return self.received.plan

    @property
    def keys(self) -> Versioned[tuple[FleetKey, ...]] | None:
        return self.received.keys

    @property
    def key_history(self) -> KeyHistory:
        return self.received.key_history

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Apply what the last run kept (keys, plan) at once, then go on in the thread."""
        self.restore()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.contact.mono is not None:
            self.contact.save()
        self.rpc.close()

    def reconfigure(self, fleet: FleetLinkConfig) -> None:
        """A SIGHUP with a new `[fleet]` section: a refused token may be tried again."""
        with self._lock:
            moved = (fleet.url, fleet.ca, fleet.enrol_url) != (
                self.fleet.url,
                self.fleet.ca,
                self.fleet.enrol_url,
            )
            unheard = self._unheard()
            unused = self.enrolling.reconfigure(self.fleet, fleet, moved=moved, unheard=unheard)
            # Failing over TLS, a new channel even at the same paths: the operator may have
            # copied the manager's new CA over the old file.
            self._reopen = self._reopen or moved or (fleet.ca is not None and unheard)
            self.fleet = fleet
        if unused is not None:
            self.enrolling.say_unused(unused)
        self._wake.set()

    def _unheard(self) -> bool:
        """The link is failing and has not been answered since this start, or for longer
        than a few beats."""
        failing = self.last_error is not None or self.refused is not None
        return failing and (self.beats == 0 or self.phase != "connected")

    def _ask_reopen(self) -> None:
        """A new channel before the next call (the client certificate to present changed)."""
        self._reopen = True

    def state(self) -> dict[str, Any]:
        """The link for /status."""
        with self._lock:
            e = self.enrolment
            return {
                "fleet": self.fleet.url,
                "appliance": e.appliance if e else None,
                "site": e.site if e else None,
                "phase": self.phase,
                "refused": self.refused,
                "last_contact": self.contact.at,
                "last_error": self.last_error,
                "beats": self.beats,
                "drained": self.drained,
                "plan_version": self.plan.version if self.plan else 0,
                "keys_version": self.keys.version if self.keys else 0,
                "counts_unacknowledged": len(self.ledger.unsent()),
                "clock_correction_s": round(self.rpc.correction, 1),
                "clock": clock_note(self.rpc.correction),
            }

    def health_view(self, tokens_required: bool) -> FleetLinkView:
        """The link as the box's own health counts it (/status: health.with_link).
        `tokens_required`: the daemon's config now (a SIGHUP may have changed it)."""
        with self._lock:
            problem = self.refused or self.last_error
            contact, last = self.contact.mono, self.contact.at
        return FleetLinkView(
            url=self.fleet.url or "",
            phase=self.phase,
            silent_s=None if contact is None else round(self.contact.silent_s(), 1),
            last_contact=last,
            grace_period_s=self.fleet.grace_period_s,
            after_grace=self.fleet.after_grace,
            tokens_required=tokens_required,
            problem=problem,
        )

    def restore(self) -> None:
        st = self.state_store
        # First: the keys usable now, the workers' token checks and peer URLs signed below
        # all go by the fleet's time, and so does the first call.
        self.rpc.correction = self.kept.restore()
        e = self.enrolling.restore()
        if e is not None and e is self.enrolment:  # held: enrolled under this name
            self._interval_s = e.heartbeat_interval_ms / 1000 or self.fleet.heartbeat_s
            if e.fleet != self.fleet.url:
                self._rebase = True  # its versions are taken as they are, once
        self.received.restore(st.plan(), st.saved_keys())
        self._problem_saved = st.saved_problem()
        self.contact.restore(e)
        self._update_phase()
        self.received.publish_keys()
        if self.plan is not None:
            self.received.submit(self.plan)
        event(
            log,
            "fleet.restored",
            enrolled=self.enrolment is not None,
            plan=self.plan.version if self.plan else 0,
            keys=self.keys.version if self.keys else 0,
        )

    # -- the thread ------------------------------------------------------------------------

    def _main(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.step())
            self._wake.clear()

    def step(self) -> float:
        """One round of the link (enrol or beat, then the grace period and fill-now);
        returns how long to wait before the next."""
        wait = self._interval_s
        try:
            # Before any call: one signed with a correction a clock step made wrong would be
            # refused, and the refusal taken for this box's clock being off.
            self.contact.follow()
            if self.enrolling.afresh_due:
                self.enrolling.afresh_due = False
                self.enrolling.afresh(self.last_error)
            if self._reopen:
                self._reopen = False
                self.rpc.fleet = self.fleet
                self.rpc.reopen()
                self._fleet_titles = b""
            wait = self._try_enrol() if self.enrolling.due else self._beat()
            self.check_grace()
            self.received.follow_fill_now()
        except (EdgeflixError, OSError) as exc:  # the link outlives any one failure
            self._note_error(str(exc))
        self._save_problem()
        return wait

    def _save_problem(self) -> None:
        """problem.json follows what /status says the link failed on, when that changes:
        `appliance status` reads it, and the contact with it (saved exactly when a problem
        begins, so the status need not allow for the link saving it only once a minute)."""
        with self._lock:
            problem = self.refused or self.last_error
        if problem == self._problem_saved:
            return
        try:
            if problem is not None and self.contact.mono is not None:
                self.state_store.save_contact(self.contact.on_wall_clock())
            self.state_store.save_problem(problem)
            self._problem_saved = problem
        except LinkStateError as exc:
            event(log, "fleet.state_unwritable", logging.ERROR, reason=str(exc))

    def _note_error(self, why: str) -> None:
        problem = self.diagnosis.problem(why, self.fleet.ca, self.last_error)
        with self._lock:
            self.last_error = problem

    def _call(self, method: str, request: Any) -> Any | None:
        """A signed call; None (and the error noted for /status) when it failed."""
        try:
            return self.rpc.call(method, request)
        except CallFailed as exc:
            self._note_error(str(exc))
            return None

    def _contact(self) -> None:
        """The fleet answered."""
        now, mono = self.clock(), self.monotonic()
        with self._lock:
            self.contact.at, self.contact.mono = now, mono
            self.last_error = None
        self.diagnosis.answered()
        self.contact.save_now_and_then(now, mono)
        self.kept.taken(self.rpc.correction)

    # -- enrolment and heartbeats ----------------------------------------------------------

    def _try_enrol(self) -> float:
        done = self.enrolling.attempt()
        if not isinstance(done, Enrolled):
            return done
        e = done.enrolment
        self._rebase = True
        self._fleet_titles = b""  # a new registration: the fleet keeps no list of ours yet
        self._interval_s = e.heartbeat_interval_ms / 1000 or self.fleet.heartbeat_s
        if not done.again:
            # Enrolling again proves nothing about the beats (a clock too far off is also
            # UNAUTHENTICATED): only an answered beat holds off the grace period's end.
            self._contact()
        event(log, "fleet.enrolled", appliance=e.appliance, site=e.site, fleet=e.fleet)
        return 0.0  # first beat right away

    def figures(self) -> BeatFigures:
        now = self.clock()
        box = self.sinks.health()
        traffic = self.sinks.traffic()
        self.ledger.observe(traffic.titles)
        bps = load_bps(self._load_prev, now, traffic.bytes_total)
        self._load_prev = (now, traffic.bytes_total)
        titles = held_titles(self.config.storage.index)
        fill = fill_figures(self.config, self.plan, titles)
        space = tier_figures(self.config, self.sinks.out_of_service())
        lost = self.contact.silent_s()
        state, reasons = link_health(box.state, box.reasons, self.phase, lost)
        return BeatFigures(
            health=state,
            reasons=reasons,
            capacity_bps=box.capacity_bps,
            load_bps=bps,
            connections=traffic.connections,
            tiers=space.space,
            fillable=space.fillable,
            titles=titles,
            plan_version=self.plan.version if self.plan else 0,
            keys_version=self.keys.version if self.keys else 0,
            keys_digest=self.received.keys_digest,
            plan_digest=self.plan.digest if self.plan else b"",
            fill_done=fill.done,
            fill_total=fill.total,
            fill_failed=tuple(fill.failed),
            fill_reasons=fill.failed,
        )

    def _beat(self) -> float:
        """One heartbeat and what its answer asks for; returns the wait before the next."""
        assert self.enrolment is not None
        received = self.received
        if self._rebase and received.fetch_keys(rebase=True) and received.fetch_plan(rebase=True):
            # Before the first beat after enrolling: that beat then reports the fleet's
            # key set, and steering (which leaves out an appliance without the current
            # key) takes this appliance from its first beat on.
            self._rebase = False
        figures = self.figures()
        batch = self.ledger.next_batch()
        req = build_beat(
            self.enrolment.appliance,
            batch,
            figures,
            self.url,
            self.ledger.boot,
            self._fleet_titles,
        )
        try:
            resp = self.rpc.call("Heartbeat", req)
        except CallFailed as exc:
            if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                return self._beat_refused(exc)
            if req.titles_omitted and exc.details == TITLES_NEEDED:
                # The fleet keeps no list under our digest (it restarted): send it, now.
                self._fleet_titles = b""
                return 0.0
            self._note_error(str(exc))
            if self.enrolling.new_token and self._unheard():
                self.enrolling.afresh(self.last_error)
                return 0.0
            return self._interval_s
        if resp.stale:
            # Answered, but its counts were not taken (the fleet holds a later sequence of
            # this boot): they go again with the next beat, not lost as acknowledged.
            self.ledger.requeue(batch.sequence)
        else:
            self.ledger.acknowledge(batch.sequence)
        self._fleet_titles = resp.titles_digest
        self._contact()
        self.beats += 1
        self.diagnosis.heard()
        self.enrolling.heard()
        if resp.heartbeat_interval_ms:
            self._interval_s = resp.heartbeat_interval_ms / 1000
        if resp.drained != self.drained:
            event(log, "fleet.drained" if resp.drained else "fleet.undrained")
            self.drained = resp.drained
        if self.keys is None or resp.keys_version > self.keys.version:
            received.fetch_keys()
        if resp.plan_version and (self.plan is None or resp.plan_version > self.plan.version):
            received.fetch_plan()
        received.fill_now(resp.fill_now)
        return self._interval_s

    def _beat_refused(self, exc: CallFailed) -> float:
        """The fleet refused the beat's signature: only its saying it does not know this
        appliance (or knows another key for it) leads to enrolling again. A clock too far
        off is this box's to fix, and enrolling again would neither help nor, with the
        one-time token spent, succeed."""
        wait = self.enrolling.beat_refused()
        if auth.refusal_of(exc.details) == "clock_skew":
            with self._lock:
                self.last_error = str(exc)
            self.diagnosis.clock_refused(str(exc))
            return wait
        self._note_error(str(exc))
        self.enrolling.unknown(str(exc))
        return wait

    # -- the grace period ------------------------------------------------------------------

    def check_grace(self) -> None:
        """Where the control plane stands now; the keys the workers hold follow it, and so
        do the peer URLs of the plan."""
        self.contact.follow()
        self._update_phase()
        self.received.publish_keys()
        self.received.resign_peer_sources()

    def _update_phase(self) -> None:
        new = phase(
            self.enrolment is not None,
            self.contact.mono,
            self.monotonic(),
            self._interval_s,
            self.fleet.grace_period_s,
        )
        if new == self.phase:
            return
        old, self.phase = self.phase, new
        if old == "connected" and self.contact.mono is not None:
            # Saved at most once a minute while connected: the fleet's last answer exactly,
            # now that it is lost, so the grace period read back (the next start,
            # `appliance status`) ends when this one does.
            self.contact.save()
        level = logging.ERROR if new == "expired" else logging.WARNING
        if new == "connected":
            level = logging.INFO
        event(
            log, "fleet.phase", level, phase=new, previous=old, after_grace=self.fleet.after_grace
        )
        if self.plan is not None and (new == "expired" or old == "expired"):
            self.received.submit(self.plan)  # prune off while expired, back on once resynced

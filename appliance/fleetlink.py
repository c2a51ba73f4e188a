"""The appliance's link to the fleet manager (I/O shell): enrol once with `[fleet] join_token`
and a key pair of its own, then heartbeat over signed gRPC calls, fetch newer plans and key
sets, hand them to the fill scheduler and the serving workers, and keep serving on the
cached ones while the fleet is away (`grace_period_s`, then degrade as configured).

Decisions live in fleetlink_core.py, the files in fleetlink_state.py. daemon.py builds one
FleetLink with callables for its figures (health, traffic) and its sinks (plan, keys), and
start()s / stop()s it; everything here runs on the link's own thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from appliance.config import ApplianceConfig, FleetLinkConfig
from appliance.fill.plan import FillPlan
from appliance.fleetlink_core import (
    CONTACT_SAVE_S,
    BeatFigures,
    CountLedger,
    FleetKey,
    KeyHistory,
    KeyUpdate,
    Phase,
    TlsRefusal,
    build_beat,
    check_keys,
    check_plan,
    clock_note,
    effective_keys,
    keys_from_proto,
    link_health,
    load_bps,
    next_key_history,
    phase,
    plan_document,
    plan_sizes,
    sign_peer_sources,
    signing_key,
    tls_refusal,
    to_fill_plan,
    usable_keys,
)
from appliance.fleetlink_figures import (
    BoxHealth,
    Traffic,
    fill_figures,
    held_titles,
    tier_figures,
)
from appliance.fleetlink_rpc import CallFailed, FleetRpc
from appliance.fleetlink_state import (
    Enrolment,
    LinkState,
    LinkStateError,
    StoredPlan,
    token_digest,
)
from appliance.health import FleetLinkView
from edgeflix import wallclock
from edgeflix.errors import EdgeflixError
from edgeflix.log import event
from edgeflix.proto import auth
from edgeflix.proto.codec import TITLES_NEEDED, CodecError, unpack_plan
from edgeflix.proto.gen import fleet_pb2
from edgeflix.versioning import Versioned, receive

log = logging.getLogger("appliance.fleet")
ENROL_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# Fill requests to site peers carry a token this long-lived; a plan whose window opens later
# than that falls back to the origin for those titles.
PEER_TOKEN_TTL_S = 2 * 86_400.0


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
    # the fleet signs them on its clock); it goes to them with the keys (appliance/keyfile.py).
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
    ) -> None:
        fleet = config.fleet
        if fleet.url is None:
            raise ValueError("FleetLink needs [fleet] url")
        self.config = config
        self.fleet: FleetLinkConfig = fleet
        self.name = fleet.name or config.name
        self.url = fleet.public_url or url
        self.sinks = sinks
        self.clock = clock  # the wall clock: what is saved, signed and shown
        # Silence within a run is measured on this: a wall clock stepped back (NTP) would
        # read as "connected" while the fleet is away, one stepped ahead as a lost fleet.
        self.monotonic = monotonic
        self.state_store = LinkState(config.fleet_state_dir())
        self.key = self.state_store.private_key()
        self.ledger = CountLedger()
        self.enrolment: Enrolment | None = None
        self.plan: StoredPlan | None = None
        self.keys: Versioned[tuple[FleetKey, ...]] | None = None
        self.keys_digest = b""  # KeySet.digest of `keys`, reported in every beat
        # Keys revoked (refused even when a set carries them again) and carried past their
        # set (a restored manager's lacks them): fleetlink_core.next_key_history.
        self.key_history = KeyHistory()
        self.last_contact: float | None = None  # wall clock, for /status and contact.json
        self._contact_mono: float | None = None  # the same contact on `monotonic`
        self.refused: str | None = None
        self.drained = False
        self.phase: Phase = "unenrolled"
        self.last_error: str | None = None
        self.beats = 0
        self._published_keys: dict[str, bytes] | None = None
        self._published_correction = 0.0  # the workers start with none
        self._fill_now_runs: int | None = None
        self._fill_now_pending = False
        self._contact_saved: float | None = None  # `monotonic` at the last save
        # `clock` - `monotonic` at the last look: a change is the wall clock stepped (NTP).
        self._clock_offset: float | None = None
        self._load_prev: tuple[float, int] | None = None
        self._interval_s = fleet.heartbeat_s
        self._enrol_attempts = 0
        # Set when the fleet no longer knows this appliance's key (`edgeflix fleet rm`): the
        # next round enrols again with `[fleet] join_token`; cached keys and plan stay.
        self._reenrol = False
        self._auth_failures = 0  # beats refused in a row (UNAUTHENTICATED): the backoff
        self._skewed = False  # the fleet said this box's clock is off (logged once)
        self._tls_said: TlsRefusal | None = None  # a TLS refusal logged (once, until heard)
        # A join token this enrolment was not made with (a SIGHUP, or the config at start):
        # used to enrol again if the link cannot reach or authenticate with the fleet
        # (its CA changed, say); `_afresh_due`: the SIGHUP asked for that now.
        self._new_token = False
        self._afresh_due = False
        self._problem_saved: str | None = None  # problem.json as last written
        self._reopen = False  # a SIGHUP changed the fleet's address: a new channel
        # Set by every enrolment: the fleet's versions may belong to another lineage (its
        # database was reset, or this is another fleet), so its key set and plan are taken
        # as they are, not compared with the cached ones (an equal version with other
        # content would otherwise be refused, and every URL it signs with them).
        self._rebase = False
        self._peer_key: str | None = None  # the key the submitted plan's peer URLs carry
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        # The digest of the held-titles list the fleet last said it keeps: beats leave the
        # list out while ours matches it. Forgotten with the connection it came over.
        self._fleet_titles = b""
        self._thread = threading.Thread(target=self._main, name="fleet-link", daemon=True)
        self.rpc = FleetRpc(fleet, self.state_store, self.name, self.key, clock)

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
        if self._contact_mono is not None:
            try:
                self.state_store.save_contact(self._contact_on_wall_clock())
            except LinkStateError as exc:
                event(log, "fleet.state_unwritable", logging.ERROR, reason=str(exc))
        self.rpc.close()

    def reconfigure(self, fleet: FleetLinkConfig) -> None:
        """A SIGHUP with a new `[fleet]` section: a refused token may be tried again."""
        with self._lock:
            moved = (fleet.url, fleet.ca, fleet.enrol_url) != (
                self.fleet.url,
                self.fleet.ca,
                self.fleet.enrol_url,
            )
            new_token = fleet.join_token != self.fleet.join_token
            if new_token:
                self._new_token = self._token_is_new(fleet.join_token, self.fleet.join_token)
            e, unheard = self.enrolment, self._unheard()
            # Enrolled but unheard since (the fleet's CA changed and this box's certificate
            # is from the old one, say): the new token is what enrols it again. Forgotten by
            # the fleet, the next refused beat enrols with it already.
            afresh = e is not None and self._new_token and unheard and not self._forgotten()
            self._afresh_due = self._afresh_due or afresh
            # Enrolled and heard: the fleet knows this key, so a token is only ever used to
            # enrol again if it forgets it. Said, as an operator moving the box to another
            # site expects the new token to take.
            unused = new_token and e is not None and not self._forgotten() and not afresh
            if new_token or moved:
                self.refused = None
                self._enrol_attempts = 0
                # Beats refused before (`fleet rm`, then a new token) must not hold the
                # enrolment with it back by up to the longest backoff.
                self._auth_failures = 0
            # Failing over TLS, a new channel even at the same paths: the operator may have
            # copied the manager's new CA over the old file.
            self._reopen = self._reopen or moved or (fleet.ca is not None and unheard)
            self.fleet = fleet
        if unused and e is not None:
            event(
                log,
                "fleet.join_token_unused",
                logging.WARNING,
                appliance=e.appliance,
                site=e.site,
                reason=f"enrolled as {e.appliance} (site {e.site}): a join token is used only "
                "to enrol again if the fleet forgets this appliance",
                action=f"to move it to the new token's site, run `edgeflix fleet rm "
                f"{e.appliance}` first: it then enrols with this token",
            )
        self._wake.set()

    def _token_is_new(self, token: str, previous: str | None) -> bool:
        """Whether `token` is not the one the enrolment was made with (join.json; without
        it, not the one configured before)."""
        if not token:
            return False
        used = self.state_store.used_token()
        if used is not None:
            return token_digest(token) != used
        return previous is not None and token != previous

    def _unheard(self) -> bool:
        """The link is failing and has not been answered since this start, or for longer
        than a few beats."""
        failing = self.last_error is not None or self.refused is not None
        return failing and (self.beats == 0 or self.phase != "connected")

    def _forgotten(self) -> bool:
        """The fleet refused this enrolment (its beats, or enrolling again): a new token is
        what enrolls it again."""
        return self._reenrol or self.refused is not None

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
                "last_contact": self.last_contact,
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
            contact, last = self._contact_mono, self.last_contact
        return FleetLinkView(
            url=self.fleet.url or "",
            phase=self.phase,
            silent_s=None if contact is None else round(self._silent_s(), 1),
            last_contact=last,
            grace_period_s=self.fleet.grace_period_s,
            after_grace=self.fleet.after_grace,
            tokens_required=tokens_required,
            problem=problem,
        )

    def restore(self) -> None:
        st = self.state_store
        e = st.enrolment()
        if e is not None and e.appliance != self.name:
            # Renamed in the config: enrolling under the new name needs an unused token,
            # and the fleet lists the old name (steering to it) until it is removed.
            event(
                log,
                "fleet.renamed",
                logging.WARNING,
                enrolled_as=e.appliance,
                config_name=self.name,
                reason=f"enrolled as {e.appliance}, config now says {self.name}",
                action=f"enrolling as {self.name} with [fleet] join_token: run `edgeflix fleet "
                f"rm {e.appliance}` and give a new join token (`edgeflix fleet join-token "
                f"--site {e.site}`), or put the old name back",
            )
        if e is not None and e.appliance == self.name:
            self.enrolment = e
            self._interval_s = e.heartbeat_interval_ms / 1000 or self.fleet.heartbeat_s
            if e.fleet != self.fleet.url:
                # Most likely the same manager at a new address: its key stays enrolled
                # there, and the one-time join token may be spent (or gone from the
                # config). Only the fleet's "not enrolled" leads to enrolling again.
                self._rebase = True  # its versions are taken as they are, once
                event(
                    log,
                    "fleet.moved",
                    logging.WARNING,
                    previous=e.fleet,
                    fleet=self.fleet.url,
                    action="beating with the enrolment it has; enrolling again only if "
                    "the fleet there does not know this appliance",
                )
        self.plan, saved = st.plan(), st.saved_keys()
        if saved is not None:
            self.keys, self.keys_digest = saved.keys, saved.digest
            self.key_history = history = saved.history
            # Said again at each start while the fleet's set still carries a revoked key.
            back = {k.id for k in saved.keys.payload} & history.revoked.keys()
            self._say_keys(KeyUpdate(history, tuple(sorted(back))))
        self._new_token = self.enrolment is not None and self._token_is_new(
            self.fleet.join_token, None
        )
        self._problem_saved = st.saved_problem()
        now = self.clock()
        self._clock_offset = now - self.monotonic()
        # Neither a contact nor an enrolment saved while the clock was ahead, or before it
        # was set (1970), counts as earlier or later than now (wallclock.counted_since): the
        # grace period runs from then at the latest.
        contact = st.last_contact(now, settle=True)
        if contact is None and e is not None:
            contact = self._enrolled_since(e, now)
        with self._lock:
            self.last_contact = contact
            self._contact_mono = None if contact is None else self.monotonic() - (now - contact)
        self._update_phase()
        self._publish_keys()
        if self.plan is not None:
            self._submit(self.plan)
        event(
            log,
            "fleet.restored",
            enrolled=self.enrolment is not None,
            plan=self.plan.version if self.plan else 0,
            keys=self.keys.version if self.keys else 0,
        )

    def _enrolled_since(self, e: Enrolment, now: float) -> float:
        """No contact saved: the grace period counts from the enrolment (or from now, as
        LinkState.last_contact says why)."""
        since, why = wallclock.counted_since(e.enrolled_at, now)
        if why == "implausible":
            event(
                log,
                "fleet.contact_implausible",
                logging.WARNING,
                enrolled_at=e.enrolled_at,
                now=now,
                action=f"enrolled while the clock read {wallclock.iso(e.enrolled_at)}, not "
                "yet set (NTP), and no contact saved: the grace period counts from now",
            )
        return since

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
            self._follow_clock()
            if self._afresh_due:
                self._afresh_due = False
                self._enrol_afresh()
            if self._reopen:
                self._reopen = False
                self.rpc.fleet = self.fleet
                self.rpc.reopen()
                self._fleet_titles = b""
            enrol = self.enrolment is None or self._reenrol
            wait = self._try_enrol() if enrol else self._beat()
            self.check_grace()
            self._follow_fill_now()
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
            if problem is not None and self._contact_mono is not None:
                self.state_store.save_contact(self._contact_on_wall_clock())
            self.state_store.save_problem(problem)
            self._problem_saved = problem
        except LinkStateError as exc:
            event(log, "fleet.state_unwritable", logging.ERROR, reason=str(exc))

    def _note_error(self, why: str) -> None:
        dates = wallclock.certificate_dates_refused(why)
        tls = None if dates else tls_refusal(why, self.state_store.presents_client_cert())
        if dates is not None:
            why = self._certificate_skew(why, dates)
        elif tls is not None:
            why = self._tls_refused(why, tls)
        elif why != self.last_error:
            event(log, "fleet.call_failed", logging.WARNING, reason=why)
        with self._lock:
            self.last_error = why

    def _tls_refused(self, reason: str, kind: TlsRefusal) -> str:
        """The TLS handshake failed as it does after the manager's CA changed (a move, a
        restore without its CA files): said (once) as what to do, not as a raw gRPC error,
        which would otherwise repeat at every beat for ever. Returns the problem /status
        shows."""
        if kind == "untrusted":
            problem = (
                f"the fleet's certificate does not verify against [fleet] ca ({self.fleet.ca}): "
                "if the manager's CA changed, copy its fleet-ca.pem there"
            )
        else:
            problem = (
                "the fleet closed the TLS connection: if its CA changed, this box's client "
                "certificate is from the old one: give it a new join token (it then enrols "
                "again)"
            )
        if self._tls_said != kind:
            self._tls_said = kind
            event(log, f"fleet.tls_{kind}", logging.WARNING, reason=reason, action=problem)
        return problem

    def _certificate_skew(self, reason: str, dates: str) -> str:
        """TLS refused the fleet's certificate for its dates, checked on this box's clock:
        said (once) as the clock skew it most likely is, as a box behind the fleet by more
        than the certificate's backdating sees it, not as a raw handshake failure. Returns
        the problem /status shows."""
        now = self.clock()
        if not self._skewed:
            self._skewed = True
            event(
                log,
                "fleet.clock_skew",
                logging.ERROR,
                reason=reason,
                clock=now,
                action="set this box's clock right (NTP)",
            )
        return (
            f"the fleet's TLS certificate is {dates} on this box's clock (reads "
            f"{wallclock.iso(now)}): set this box's clock right (NTP)"
        )

    def _call(self, method: str, request: Any) -> Any | None:
        """A signed call; None (and the error noted for /status) when it failed."""
        try:
            return self.rpc.call(method, request)
        except CallFailed as exc:
            self._note_error(str(exc))
            return None

    def _contact(self) -> None:
        now, mono = self.clock(), self.monotonic()
        with self._lock:
            self.last_contact, self._contact_mono = now, mono
            self.last_error = None
        self._tls_said = None
        if self._contact_saved is None or mono - self._contact_saved >= CONTACT_SAVE_S:
            self.state_store.save_contact(now)
            self._contact_saved = mono

    def _silent_s(self) -> float:
        """Seconds since the fleet last answered, on the monotonic clock (0: never)."""
        if self._contact_mono is None:
            return 0.0
        return max(self.monotonic() - self._contact_mono, 0.0)

    def _contact_on_wall_clock(self) -> float:
        """The last contact on the wall clock as it reads now: after a step back, the
        reading taken at the contact lies ahead of it, and saved so it would stretch the
        grace period of the next start (which clamps it to its now, LinkState)."""
        return self.clock() - self._silent_s()

    # -- enrolment -------------------------------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        return max(self._interval_s, ENROL_BACKOFF_S[min(attempts, len(ENROL_BACKOFF_S) - 1)])

    def _try_enrol(self) -> float:
        # Enrolling again (the fleet refused a beat): the enrolment this box has stays, and
        # a refusal of the token is not final, as the fleet may still know the key.
        reenrolling = self.enrolment is not None
        if self.refused is not None and not reenrolling:
            return 3600.0  # final until the config changes (reconfigure wakes us)
        if reenrolling and not self.fleet.join_token:
            return self._keep_enrolment("no [fleet] join_token to enrol again with")
        req = fleet_pb2.EnrolRequest(
            name=self.name,
            join_token=self.fleet.join_token,
            public_key=auth.public_key(self.key),
            url=self.url,
            tls_public_key=self.state_store.tls_public_key() if self.fleet.ca else b"",
        )
        try:
            resp = self.rpc.enrol(req)
        except CallFailed as exc:
            if exc.final and reenrolling:
                return self._keep_enrolment(str(exc))
            if exc.final:
                with self._lock:
                    self.refused = str(exc)
                event(
                    log,
                    "fleet.enrolment_refused",
                    logging.ERROR,
                    reason=str(exc),
                    action="serving what it holds; not retrying until [fleet] join_token "
                    "changes (new token: `edgeflix fleet join-token --site S`, then SIGHUP)",
                )
                return 3600.0
            self._note_error(str(exc))
            backoff = ENROL_BACKOFF_S[min(self._enrol_attempts, len(ENROL_BACKOFF_S) - 1)]
            self._enrol_attempts += 1
            return backoff
        e = Enrolment(
            appliance=resp.appliance or self.name,
            site=resp.site,
            fleet=self.fleet.url or "",
            url=self.url,
            heartbeat_interval_ms=resp.heartbeat_interval_ms,
            enrolled_at=self.clock(),
        )
        if self.fleet.ca is not None:
            if not resp.client_cert_pem:
                self._note_error("enrolment: the fleet issued no client certificate (no TLS?)")
                return ENROL_BACKOFF_S[-1]
            self.state_store.save_client_cert(resp.client_cert_pem)
            self.state_store.withhold_client_cert = False
            self.rpc.reopen()
        self.state_store.save_enrolment(e)
        if self.fleet.join_token:
            self.state_store.save_used_token(self.fleet.join_token)
        self._new_token = False
        with self._lock:
            self.enrolment = e
            again, self._reenrol = self._reenrol, False
            self._rebase = True
        self._fleet_titles = b""  # a new registration: the fleet keeps no list of ours yet
        self._interval_s = e.heartbeat_interval_ms / 1000 or self.fleet.heartbeat_s
        if not again:
            # Enrolling again proves nothing about the beats (a clock too far off is also
            # UNAUTHENTICATED): only an answered beat holds off the grace period's end.
            self._contact()
        event(log, "fleet.enrolled", appliance=e.appliance, site=e.site, fleet=e.fleet)
        return 0.0  # first beat right away

    def _enrol_afresh(self) -> None:
        """A join token the enrolment was not made with, while the fleet cannot be reached
        or refuses this box: enrol again with it, over the enrolment listener (the CA alone:
        a manager whose CA changed closes connections presenting the old client
        certificate). That certificate is replaced only once the new enrolment succeeds;
        a refused token goes back to it (_keep_enrolment)."""
        self._new_token = False
        with self._lock:
            self._reenrol = True
            self.refused = None
        self._enrol_attempts = 0
        self._auth_failures = 0
        if self.fleet.ca is not None:
            self.state_store.withhold_client_cert = True
            self._reopen = True
        event(
            log,
            "fleet.enrolling_again",
            logging.WARNING,
            reason=f"a new [fleet] join_token, and the fleet unreachable or refusing this box "
            f"({self.last_error})",
            action="enrolling again with it; the enrolment and client certificate held stay "
            "until it succeeds",
        )

    def _keep_enrolment(self, why: str) -> float:
        """Enrolling again failed for good: beat on with the enrolment this box has (the
        fleet answers again once it knows the key, e.g. its database came back), with
        backoff; `refused` shows why on /status until a beat is answered."""
        with self._lock:
            self.refused = why
            self._reenrol = False
        if self.state_store.withhold_client_cert:  # enrolling afresh: back to the old one
            self.state_store.withhold_client_cert = False
            self._reopen = True
        event(
            log,
            "fleet.reenrolment_refused",
            logging.ERROR,
            reason=why,
            action="beating on with the enrolment it has; if the fleet has forgotten this "
            "appliance: `edgeflix fleet join-token --site S` into [fleet] join_token, SIGHUP",
        )
        self._auth_failures += 1
        return self._backoff(self._auth_failures)

    # -- heartbeats ------------------------------------------------------------------------

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
        lost = self._silent_s()
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
            keys_digest=self.keys_digest,
            plan_digest=self.plan.digest if self.plan else b"",
            fill_done=fill.done,
            fill_total=fill.total,
            fill_failed=tuple(fill.failed),
            fill_reasons=fill.failed,
        )

    def _beat(self) -> float:
        """One heartbeat and what its answer asks for; returns the wait before the next."""
        assert self.enrolment is not None
        if self._rebase and self._fetch_keys(rebase=True) and self._fetch_plan(rebase=True):
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
            if self._new_token and self._unheard():
                self._enrol_afresh()
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
        self._heard()
        if resp.heartbeat_interval_ms:
            self._interval_s = resp.heartbeat_interval_ms / 1000
        if resp.drained != self.drained:
            event(log, "fleet.drained" if resp.drained else "fleet.undrained")
            self.drained = resp.drained
        if self.keys is None or resp.keys_version > self.keys.version:
            self._fetch_keys()
        if resp.plan_version and (self.plan is None or resp.plan_version > self.plan.version):
            self._fetch_plan()
        if resp.fill_now:
            self._fill_now_pending = True
        if self._fill_now_pending and self.plan is not None:
            self._start_fill_now()
        return self._interval_s

    def _beat_refused(self, exc: CallFailed) -> float:
        """The fleet refused the beat's signature: only its saying it does not know this
        appliance (or knows another key for it) leads to enrolling again. A clock too far
        off is this box's to fix, and enrolling again would neither help nor, with the
        one-time token spent, succeed."""
        wait = self._backoff(self._auth_failures)
        self._auth_failures += 1
        if auth.refusal_of(exc.details) == "clock_skew":
            with self._lock:
                self.last_error = str(exc)
            if not self._skewed:
                self._skewed = True
                event(
                    log,
                    "fleet.clock_skew",
                    logging.ERROR,
                    reason=str(exc),
                    clock=self.clock(),
                    action="set this box's clock right (NTP): beats go on, with backoff, "
                    "and the enrolment stays",
                )
            return wait
        self._note_error(str(exc))
        if self._reenrol or self.refused is not None:
            return wait  # this token was refused already: beat on until it changes
        # Removed from the fleet (or its registry was reset): without enrolling again it
        # would beat unheard for ever, whatever token the operator gives.
        self._reenrol = True
        event(
            log,
            "fleet.not_enrolled",
            logging.ERROR,
            reason=str(exc),
            action="enrolling again with [fleet] join_token",
        )
        return wait

    def _heard(self) -> None:
        """A beat was answered: the enrolment works here, whatever failed before."""
        assert self.enrolment is not None
        self._auth_failures = 0
        if self._skewed:
            self._skewed = False
            event(log, "fleet.clock_skew_over", clock=self.clock())
        with self._lock:
            self.refused = None
        if self.fleet.url is not None and self.enrolment.fleet != self.fleet.url:
            moved = dataclasses.replace(self.enrolment, fleet=self.fleet.url)
            self.state_store.save_enrolment(moved)
            with self._lock:
                self.enrolment = moved

    # -- plans -----------------------------------------------------------------------------

    def _fetch_plan(self, rebase: bool = False) -> bool:
        """Fetch and apply the fleet's plan if newer; False when the fleet did not answer."""
        have = self.plan.version if self.plan and not rebase else 0
        req = fleet_pb2.GetPlanRequest(appliance=self.name, have_version=have)
        resp = self._call("GetPlan", req)
        if resp is None:
            return False
        if resp.unchanged or resp.version == 0:
            return True
        try:
            proto = unpack_plan(resp.plan_zstd)
        except CodecError as exc:
            event(log, "fleet.plan_rejected", logging.ERROR, version=resp.version, reason=str(exc))
            return True
        self.apply_plan(
            resp.version, plan_document(proto), plan_sizes(proto), rebase=rebase, digest=resp.digest
        )
        return True

    def apply_plan(
        self,
        version: int,
        document: dict[str, Any],
        sizes: dict[str, int],
        *,
        rebase: bool = False,
        digest: bytes = b"",
    ) -> str:
        """Whole or not at all, never backwards (but see `_rebase`); persisted before the
        scheduler sees it. `digest` (PlanResponse.digest) goes back to the fleet in beats."""
        running = Versioned("plan", self.plan.version, self.plan.document) if self.plan else None
        if rebase:
            running = None
        result = receive(running, Versioned("plan", version, document), check_plan)
        if result.action != "applied":
            level = logging.ERROR if result.action == "rejected" else logging.INFO
            event(log, f"fleet.plan_{result.action}", level, version=version, reason=result.reason)
            return result.action
        stored = StoredPlan(version, document, sizes, digest)
        self.state_store.save_plan(stored)
        with self._lock:
            self.plan = stored
        self._submit(stored)
        event(log, "fleet.plan_applied", version=version, titles=len(document["titles"]))
        return "applied"

    def _submit(self, stored: StoredPlan, *, window: bool = True) -> None:
        keys = self._verifying_keys()
        now = self._fleet_now()  # peers check the tokens at the fleet's time too
        doc = sign_peer_sources(stored.document, keys, now, PEER_TOKEN_TTL_S)
        key = signing_key(keys, now)
        self._peer_key = key.id if key else None
        if self.phase == "expired" and self.fleet.after_grace == "degrade":
            # A plan the fleet may have replaced long ago deletes nothing.
            doc["prune"] = False
        if not window:
            doc["window"] = None
        self.sinks.submit_plan(to_fill_plan(doc))

    def _start_fill_now(self) -> None:
        """`edgeflix fleet fill --now`: one run outside the window, then the window again."""
        assert self.plan is not None
        self._fill_now_pending = False
        self._fill_now_runs = int(self.sinks.fill_state().get("runs", 0))
        self._submit(self.plan, window=False)
        event(log, "fleet.fill_now", plan=self.plan.version)

    def _follow_fill_now(self) -> None:
        if self._fill_now_runs is None or self.plan is None:
            return
        st = self.sinks.fill_state()
        if int(st.get("runs", 0)) > self._fill_now_runs and not st.get("running"):
            self._fill_now_runs = None
            self._submit(self.plan)

    # -- keys ------------------------------------------------------------------------------

    def _fetch_keys(self, rebase: bool = False) -> bool:
        """Fetch and apply the fleet's key set if newer; False when the fleet did not answer."""
        have = self.keys.version if self.keys and not rebase else 0
        req = fleet_pb2.GetKeysRequest(appliance=self.name, have_version=have)
        resp = self._call("GetKeys", req)
        if resp is None:
            return False
        if not resp.unchanged:
            incoming = keys_from_proto(resp.keys)
            self.apply_keys(incoming, rebase=rebase, digest=resp.keys.digest,
                            rebased=resp.keys.rebased)  # fmt: skip
        return True

    def apply_keys(
        self,
        incoming: Versioned[tuple[FleetKey, ...]],
        *,
        rebase: bool = False,
        digest: bytes = b"",
        rebased: bool = False,
    ) -> str:
        """`rebased`: the fleet marked the set re-stamped after a restore (KeySet.rebased)."""
        result = receive(None if rebase else self.keys, incoming, check_keys)
        if result.action != "applied":
            level = logging.ERROR if result.action == "rejected" else logging.INFO
            event(
                log,
                f"fleet.keys_{result.action}",
                level,
                version=incoming.version,
                reason=result.reason,
            )
            return result.action
        running = self.keys
        # Enrolling again, a version not above ours is another database's (restored, new);
        # so is a set the fleet marks rebased: it restored a backup and moved past our set.
        other = rebased or (rebase and running is not None and incoming.version <= running.version)
        held = running.payload if running is not None else ()
        # At the fleet's time, as it retires keys: a box behind it would take a key dropped
        # at its end for one revoked before it, and refuse it after a restore.
        update = next_key_history(
            held, self.key_history, incoming.payload, self._fleet_now(), other_lineage=other
        )
        self.state_store.save_keys(incoming, digest, update.history)
        with self._lock:
            self.keys = incoming
            self.keys_digest = digest
            self.key_history = update.history
        self._say_keys(update)
        self._publish_keys()
        event(log, "fleet.keys_applied", version=incoming.version, keys=len(incoming.payload))
        return "applied"

    def _say_keys(self, update: KeyUpdate) -> None:
        for key_id in update.returned:
            until = update.history.revoked[key_id]
            event(
                log,
                "fleet.revoked_key_returned",
                logging.ERROR,
                key=key_id,
                reason=f"the fleet's key set carries key {key_id} again, which it revoked "
                f"before: refused here (until {wallclock.iso(until)} at least)",
                action="the fleet manager was restored from a backup older than the "
                f"revocation: revoke it again there (edgeflix fleet keys revoke {key_id})",
            )
        if update.revoked:
            event(log, "fleet.keys_revoked", keys=" ".join(update.revoked))
        if update.carried:
            carried = [k for k in update.history.carried if k.id in update.carried]
            until = max(k.verify_until for k in carried)
            event(
                log,
                "fleet.keys_carried",
                logging.WARNING,
                keys=" ".join(update.carried),
                until=wallclock.iso(until),
                reason="the fleet's key set lacks keys this box verified with, and is not "
                "their successor (a fleet manager restored from a backup, or a new one)",
                action="URLs signed with them before keep working until they expire; "
                "nothing is signed with them any more",
            )

    def _fleet_now(self) -> float:
        """The fleet's time, which key periods and token expiries are on."""
        return self.rpc.fleet_time()

    def _verifying_keys(self) -> tuple[FleetKey, ...]:
        """The keys tokens are checked (and peer URLs signed) with: fleetlink_core."""
        return effective_keys(self.keys.payload if self.keys else (), self.key_history)

    def _publish_keys(self) -> None:
        """Hand the workers the keys usable now, when that set changed (a key's verification
        period ended, a new set arrived, the grace period ran out), and the clock correction
        they check tokens with, when it changed."""
        keys = self._verifying_keys()
        usable = usable_keys(keys, self._fleet_now(), self.phase, self.fleet.after_grace)
        if usable != self._published_keys:
            self.sinks.set_keys(usable)
            self._published_keys = usable
        correction = self.rpc.correction
        if correction != self._published_correction:
            self.sinks.set_clock_correction(correction)
            self._published_correction = correction

    # -- the grace period ------------------------------------------------------------------

    def check_grace(self) -> None:
        """Where the control plane stands now; the keys the workers hold follow it, and so
        do the peer URLs of the plan."""
        self._follow_clock()
        self._update_phase()
        self._publish_keys()
        self._resign_peer_sources()

    def _follow_clock(self) -> None:
        """The wall clock was stepped (NTP syncing a box that booted at 1970, or setting
        one that ran ahead): the last contact, saved at the old reading, is saved again on
        the new one, as the next start and `appliance status` read it. Else a contact saved
        at 1970 outlives the clock's fix, and a power cut then reads as 56 years without
        the fleet. A correction learned of the fleet's time moves back by the step (the
        fleet's time did not move), and the workers get it with the next keys' check."""
        now, mono = self.clock(), self.monotonic()
        before, self._clock_offset = self._clock_offset, now - mono
        if before is None or not wallclock.stepped(before, now - mono):
            return
        event(log, "fleet.clock_stepped", by_s=round(now - mono - before, 1), clock=now)
        self.rpc.follow_step(now - mono - before)
        if self._contact_mono is None:
            return
        contact = now - max(mono - self._contact_mono, 0.0)
        with self._lock:
            self.last_contact = contact
        try:
            self.state_store.save_contact(contact)
        except LinkStateError as exc:
            event(log, "fleet.state_unwritable", logging.ERROR, reason=str(exc))

    def _resign_peer_sources(self) -> None:
        """Peer fill URLs are signed when the plan is handed to the fill; a key the fleet
        has retired verifies only for hours, so the plan is handed over again, signed anew,
        once the fleet signs with another key (daily): else tomorrow night's fill from a
        peer would be refused, and fall back to the origin."""
        if self.plan is None or self._fill_now_runs is not None:
            return
        key = signing_key(self._verifying_keys(), self._fleet_now())
        if (key.id if key else None) != self._peer_key:
            self._submit(self.plan)

    def _update_phase(self) -> None:
        new = phase(
            self.enrolment is not None,
            self._contact_mono,
            self.monotonic(),
            self._interval_s,
            self.fleet.grace_period_s,
        )
        if new == self.phase:
            return
        old, self.phase = self.phase, new
        if old == "connected" and self._contact_mono is not None:
            # Saved at most once a minute while connected: the fleet's last answer exactly,
            # now that it is lost, so the grace period read back (the next start,
            # `appliance status`) ends when this one does.
            try:
                self.state_store.save_contact(self._contact_on_wall_clock())
            except LinkStateError as exc:
                event(log, "fleet.state_unwritable", logging.ERROR, reason=str(exc))
        level = logging.ERROR if new == "expired" else logging.WARNING
        if new == "connected":
            level = logging.INFO
        event(
            log, "fleet.phase", level, phase=new, previous=old, after_grace=self.fleet.after_grace
        )
        if self.plan is not None and (new == "expired" or old == "expired"):
            self._submit(self.plan)  # prune off while expired, back on once resynced

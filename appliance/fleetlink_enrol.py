"""This box's enrolment with the fleet manager (I/O shell): enrolling once with `[fleet]
join_token` and the box's own key pair; again when the fleet no longer knows that key
(`edgeflix fleet rm`, a registry reset); and again, afresh, with a join token the enrolment
was not made with while the fleet cannot be reached or refuses this box (its CA changed,
say). The enrolment held stays until a new one succeeds: refused, the link beats on with it,
with backoff.

FleetLink (fleetlink.py) runs all of it on its thread and follows a new enrolment in its
round (Enrolled); /status reads `enrolment` and `refused` under the link's lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from appliance.config import FleetLinkConfig
from appliance.fleetlink_files import Enrolment, token_digest
from appliance.fleetlink_rpc import CallFailed, FleetRpc
from appliance.fleetlink_state import LinkState
from edgeflix.log import event
from edgeflix.proto import auth
from edgeflix.proto.gen import fleet_pb2

log = logging.getLogger("appliance.fleet")
ENROL_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


@dataclass(frozen=True)
class Enrolled:
    """An enrolment made, for the link's round to follow."""

    enrolment: Enrolment
    again: bool  # this box was enrolled before, and enrolled again


class Enrolling:
    """`fleet`: the link's `[fleet]` section now (a SIGHUP replaces it); `interval`: its
    beat interval now, the shortest backoff; `note_error`: a failure /status shows;
    `reopen`: a new channel before the next call."""

    def __init__(
        self,
        name: str,
        url: str,
        key: bytes,
        store: LinkState,
        rpc: FleetRpc,
        clock: Callable[[], float],
        lock: threading.Lock,
        *,
        fleet: Callable[[], FleetLinkConfig],
        interval: Callable[[], float],
        note_error: Callable[[str], None],
        reopen: Callable[[], None],
    ) -> None:
        self.name, self.url, self.key = name, url, key
        self.store, self.rpc, self.clock = store, rpc, clock
        self._lock = lock
        self._fleet, self._interval = fleet, interval
        self._note_error, self._reopen = note_error, reopen
        self.enrolment: Enrolment | None = None
        self.refused: str | None = None
        # Set when the fleet no longer knows this appliance's key (`edgeflix fleet rm`): the
        # next round enrols again with `[fleet] join_token`; cached keys and plan stay.
        self.reenrol = False
        self.attempts = 0
        self.auth_failures = 0  # beats refused in a row (UNAUTHENTICATED): the backoff
        # A join token this enrolment was not made with (a SIGHUP, or the config at start):
        # used to enrol again if the link cannot reach or authenticate with the fleet
        # (its CA changed, say); `afresh_due`: the SIGHUP asked for that now.
        self.new_token = False
        self.afresh_due = False

    @property
    def fleet(self) -> FleetLinkConfig:
        return self._fleet()

    @property
    def due(self) -> bool:
        """Whether the round enrols (first, or again) rather than beats."""
        return self.enrolment is None or self.reenrol

    def restore(self) -> Enrolment | None:
        """The saved enrolment, held when it is under this name (a renamed box enrols
        again); returned either way, as the grace period counts from it."""
        e = self.store.enrolment()
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
            if e.fleet != self.fleet.url:
                # Most likely the same manager at a new address: its key stays enrolled
                # there, and the one-time join token may be spent (or gone from the
                # config). Only the fleet's "not enrolled" leads to enrolling again.
                event(
                    log,
                    "fleet.moved",
                    logging.WARNING,
                    previous=e.fleet,
                    fleet=self.fleet.url,
                    action="beating with the enrolment it has; enrolling again only if "
                    "the fleet there does not know this appliance",
                )
        self.new_token = self.enrolment is not None and self.token_is_new(
            self.fleet.join_token, None
        )
        return e

    def reconfigure(
        self, old: FleetLinkConfig, new: FleetLinkConfig, *, moved: bool, unheard: bool
    ) -> Enrolment | None:
        """A SIGHUP's `[fleet]` section, under the link's lock (`moved`: to another address
        or CA; `unheard`: FleetLink._unheard): a refused token may be tried again, and a new
        one enrols afresh. Returns the enrolment a new token goes unused for (say_unused)."""
        new_token = new.join_token != old.join_token
        if new_token:
            self.new_token = self.token_is_new(new.join_token, old.join_token)
        e = self.enrolment
        # Enrolled but unheard since (the fleet's CA changed and this box's certificate
        # is from the old one, say): the new token is what enrols it again. Forgotten by
        # the fleet, the next refused beat enrols with it already.
        afresh = e is not None and self.new_token and unheard and not self.forgotten()
        self.afresh_due = self.afresh_due or afresh
        # Enrolled and heard: the fleet knows this key, so a token is only ever used to
        # enrol again if it forgets it. Said, as an operator moving the box to another
        # site expects the new token to take.
        unused = new_token and e is not None and not self.forgotten() and not afresh
        if new_token or moved:
            self.refused = None
            self.attempts = 0
            # Beats refused before (`fleet rm`, then a new token) must not hold the
            # enrolment with it back by up to the longest backoff.
            self.auth_failures = 0
        return e if unused else None

    def say_unused(self, e: Enrolment) -> None:
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

    def token_is_new(self, token: str, previous: str | None) -> bool:
        """Whether `token` is not the one the enrolment was made with (join.json; without
        it, not the one configured before)."""
        if not token:
            return False
        used = self.store.used_token()
        if used is not None:
            return token_digest(token) != used
        return previous is not None and token != previous

    def forgotten(self) -> bool:
        """The fleet refused this enrolment (its beats, or enrolling again): a new token is
        what enrolls it again."""
        return self.reenrol or self.refused is not None

    def backoff(self, attempts: int) -> float:
        return max(self._interval(), ENROL_BACKOFF_S[min(attempts, len(ENROL_BACKOFF_S) - 1)])

    # -- enrolling -------------------------------------------------------------------------

    def attempt(self) -> float | Enrolled:
        """One enrolment: the enrolment made, or the wait before the next round."""
        # Enrolling again (the fleet refused a beat): the enrolment this box has stays, and
        # a refusal of the token is not final, as the fleet may still know the key.
        reenrolling = self.enrolment is not None
        if self.refused is not None and not reenrolling:
            return 3600.0  # final until the config changes (reconfigure wakes the link)
        if reenrolling and not self.fleet.join_token:
            return self.keep("no [fleet] join_token to enrol again with")
        req = fleet_pb2.EnrolRequest(
            name=self.name,
            join_token=self.fleet.join_token,
            public_key=auth.public_key(self.key),
            url=self.url,
            tls_public_key=self.store.tls_public_key() if self.fleet.ca else b"",
        )
        try:
            resp = self.rpc.enrol(req)
        except CallFailed as exc:
            if exc.final and reenrolling:
                return self.keep(str(exc))
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
            backoff = ENROL_BACKOFF_S[min(self.attempts, len(ENROL_BACKOFF_S) - 1)]
            self.attempts += 1
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
            self.store.save_client_cert(resp.client_cert_pem)
            self.store.withhold_client_cert = False
            self.rpc.reopen()
        self.store.save_enrolment(e)
        if self.fleet.join_token:
            self.store.save_used_token(self.fleet.join_token)
        self.new_token = False
        with self._lock:
            self.enrolment = e
            again, self.reenrol = self.reenrol, False
        return Enrolled(e, again)

    def afresh(self, last_error: str | None) -> None:
        """A join token the enrolment was not made with, while the fleet cannot be reached
        or refuses this box (`last_error`): enrol again with it, over the enrolment listener
        (the CA alone: a manager whose CA changed closes connections presenting the old
        client certificate). That certificate is replaced only once the new enrolment
        succeeds; a refused token goes back to it (keep)."""
        self.new_token = False
        with self._lock:
            self.reenrol = True
            self.refused = None
        self.attempts = 0
        self.auth_failures = 0
        if self.fleet.ca is not None:
            self.store.withhold_client_cert = True
            self._reopen()
        event(
            log,
            "fleet.enrolling_again",
            logging.WARNING,
            reason=f"a new [fleet] join_token, and the fleet unreachable or refusing this box "
            f"({last_error})",
            action="enrolling again with it; the enrolment and client certificate held stay "
            "until it succeeds",
        )

    def keep(self, why: str) -> float:
        """Enrolling again failed for good: beat on with the enrolment this box has (the
        fleet answers again once it knows the key, e.g. its database came back), with
        backoff; `refused` shows why on /status until a beat is answered."""
        with self._lock:
            self.refused = why
            self.reenrol = False
        if self.store.withhold_client_cert:  # enrolling afresh: back to the old one
            self.store.withhold_client_cert = False
            self._reopen()
        event(
            log,
            "fleet.reenrolment_refused",
            logging.ERROR,
            reason=why,
            action="beating on with the enrolment it has; if the fleet has forgotten this "
            "appliance: `edgeflix fleet join-token --site S` into [fleet] join_token, SIGHUP",
        )
        self.auth_failures += 1
        return self.backoff(self.auth_failures)

    # -- what the beats say of the enrolment -----------------------------------------------

    def beat_refused(self) -> float:
        """A beat refused for its signature (UNAUTHENTICATED): the wait before the next, which
        grows with each refused in a row."""
        wait = self.backoff(self.auth_failures)
        self.auth_failures += 1
        return wait

    def unknown(self, reason: str) -> None:
        """The fleet says it does not know this appliance (or knows another key for it):
        enrol again, unless this token was refused already (then beat on until it
        changes)."""
        if self.forgotten():
            return
        # Removed from the fleet (or its registry was reset): without enrolling again it
        # would beat unheard for ever, whatever token the operator gives.
        self.reenrol = True
        event(
            log,
            "fleet.not_enrolled",
            logging.ERROR,
            reason=reason,
            action="enrolling again with [fleet] join_token",
        )

    def heard(self) -> None:
        """A beat was answered: the enrolment works here, whatever failed before."""
        assert self.enrolment is not None
        self.auth_failures = 0
        with self._lock:
            self.refused = None
        if self.fleet.url is not None and self.enrolment.fleet != self.fleet.url:
            moved = dataclasses.replace(self.enrolment, fleet=self.fleet.url)
            self.store.save_enrolment(moved)
            with self._lock:
                self.enrolment = moved

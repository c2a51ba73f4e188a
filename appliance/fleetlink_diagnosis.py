"""The link's failures an operator can act on, told apart by the text of a failed call: the
fleet's certificate refused for its dates on this box's clock (edgeflix.wallclock
.certificate_dates_refused: a clock off, most likely), refused by this box's CA, or the
fleet hanging up on this box's client certificate (both: the manager's CA changed). Each
becomes the problem /status shows, in words that say what to do (pure functions), and is
logged once until the fleet answers again, not at every beat for ever (Diagnosis).

appliance/fleetlink.py hands every failure here and shows what comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from appliance.fleetlink_state import LinkState
from edgeflix import wallclock
from edgeflix.log import event

log = logging.getLogger("appliance.fleet")

# What BoringSSL (grpc) and OpenSSL say of a peer certificate that does not verify against
# the CA given; refused for its dates: edgeflix.wallclock.certificate_dates_refused.
_UNTRUSTED = (
    "certificate_verify_failed",
    "certificate verify failed",
    "bad_signature",
    "certificate signature failure",
    "unable to get local issuer certificate",
    "self signed certificate",
    "self-signed certificate",
)
# gRPC's words for a connection the peer closed before it was up (the TLS handshake).
_NOT_CONNECTED = "failed to connect to all addresses"
_CLOSED = ("socket closed", "connection reset by peer")
TlsRefusal = Literal["untrusted", "closed"]


def tls_refusal(error: str, client_cert: bool) -> TlsRefusal | None:
    """What a failed call's text says of its TLS handshake: "untrusted", the fleet's
    certificate does not verify against this box's CA; "closed", the fleet hung up while
    this box presented a client certificate (`client_cert`), as one no longer trusts a
    certificate from an old CA does. None for anything else."""
    text = error.lower()
    if any(marker in text for marker in _UNTRUSTED):
        return "untrusted"
    if client_cert and _NOT_CONNECTED in text and any(c in text for c in _CLOSED):
        return "closed"
    return None


def tls_problem(kind: TlsRefusal, ca: Path | None) -> str:
    """What to do about a TLS refusal (`ca`: `[fleet] ca`)."""
    if kind == "untrusted":
        return (
            f"the fleet's certificate does not verify against [fleet] ca ({ca}): "
            "if the manager's CA changed, copy its fleet-ca.pem there"
        )
    return (
        "the fleet closed the TLS connection: if its CA changed, this box's client "
        "certificate is from the old one: give it a new join token (it then enrols "
        "again)"
    )


def certificate_problem(dates: str, now: float) -> str:
    """What to do about the fleet's certificate refused for its `dates` ("expired", "not yet
    valid") on this box's clock, reading `now`."""
    return (
        f"the fleet's TLS certificate is {dates} on this box's clock (reads "
        f"{wallclock.iso(now)}): set this box's clock right (NTP)"
    )


class Diagnosis:
    """What has been said: a clock skew, once until a beat is answered; a TLS refusal,
    once until the fleet answers (or the other kind comes)."""

    def __init__(self, store: LinkState, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self.skewed = False  # the fleet said this box's clock is off (logged once)
        self.tls_said: TlsRefusal | None = None  # a TLS refusal logged (once, until heard)

    def problem(self, why: str, ca: Path | None, shown: str | None) -> str:
        """The problem /status shows for a failed call's text `why` (`shown`: the one it
        shows now; another plain failure is logged)."""
        dates = wallclock.certificate_dates_refused(why)
        tls = None if dates else tls_refusal(why, self.store.presents_client_cert())
        if dates is not None:
            return self._certificate_skew(why, dates)
        if tls is not None:
            return self._tls_refused(why, tls, ca)
        if why != shown:
            event(log, "fleet.call_failed", logging.WARNING, reason=why)
        return why

    def _tls_refused(self, reason: str, kind: TlsRefusal, ca: Path | None) -> str:
        """The TLS handshake failed as it does after the manager's CA changed (a move, a
        restore without its CA files): said (once) as what to do, not as a raw gRPC error,
        which would otherwise repeat at every beat for ever."""
        problem = tls_problem(kind, ca)
        if self.tls_said != kind:
            self.tls_said = kind
            event(log, f"fleet.tls_{kind}", logging.WARNING, reason=reason, action=problem)
        return problem

    def _certificate_skew(self, reason: str, dates: str) -> str:
        """TLS refused the fleet's certificate for its dates, checked on this box's clock:
        said (once) as the clock skew it most likely is, as a box behind the fleet by more
        than the certificate's backdating sees it, not as a raw handshake failure."""
        now = self.clock()
        self._say_skew(reason, now, "set this box's clock right (NTP)")
        return certificate_problem(dates, now)

    def clock_refused(self, reason: str) -> None:
        """The fleet refused a beat for this box's clock: its to fix, and enrolling again
        would neither help nor, with the one-time token spent, succeed."""
        self._say_skew(
            reason,
            self.clock(),
            "set this box's clock right (NTP): the next calls go at the fleet's time if its "
            "answer said it, and the enrolment stays",
        )

    def _say_skew(self, reason: str, now: float, action: str) -> None:
        """`fleet.clock_skew`, once until a beat is answered again."""
        if not self.skewed:
            self.skewed = True
            event(log, "fleet.clock_skew", logging.ERROR, reason=reason, clock=now, action=action)

    def answered(self) -> None:
        """The fleet answered a call: a TLS refusal that comes back is said again."""
        self.tls_said = None

    def heard(self) -> None:
        """A beat was answered: this box's clock is right again, as far as the fleet goes."""
        if self.skewed:
            self.skewed = False
            event(log, "fleet.clock_skew_over", clock=self.clock())

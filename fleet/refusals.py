"""Calls the fleet manager refused: signed gRPC calls counted by reason (for /metrics), the
clock of an appliance refused for its time noted (fleet/clocks.py, for `fleet ls`/`show`),
and the names a refusal is about logged once in a while. FleetService (fleet/service.py)
hands every refusal here; fleet/grpc_api.py decides them.

The names come from callers nobody enrolled, so neither memory nor the log grows with how
many they make up (NameLog).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable

from edgeflix.log import event
from edgeflix.proto import auth
from fleet.clocks import LOG_EVERY_S, MAX_TRACKED, ApplianceClocks, log_due

log = logging.getLogger("fleet")
# Of the names a refusal is about (made up by anyone who reaches the port), this many are
# logged in LOG_EVERY_S at most; the rest are counted at /metrics only.
MAX_NAMES_LOGGED = 50
UNKNOWN_ACTION = (
    "not in this fleet's database (removed, or the database was lost or restored): give it a "
    "new join token (edgeflix fleet join-token --site S)"
)


class NameLog:
    """Which names a refusal is logged for now: each at most once in `every_s`, at most
    `per_window` names in `every_s` in all, `limit` names remembered (the least recently
    logged forgotten first), as fleet/clocks.py keeps its readings. `mono`: monotonic
    seconds."""

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
        if not log_due(self._logged.get(name), mono, self.every_s):
            return False
        start, count = self._window
        if log_due(start, mono, self.every_s):
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


class Refusals:
    """What the manager keeps of the calls it refused. `clock`: wall time (what an
    appliance's clock is compared with); `monotonic`: the intervals between log lines."""

    def __init__(self, clock: Callable[[], float], monotonic: Callable[[], float]) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self.by_reason: Counter[str] = Counter()  # signed calls refused
        self.clocks = ApplianceClocks()
        self._unknown_log = NameLog()
        self._enrolment_log = NameLog()

    def auth_refused(self, error: auth.AuthError, name: str = "", peer: str = "") -> None:
        """A signed call refused: counted by reason; one refused for its time (an appliance
        whose clock is off: no RTC, no NTP) is also noted for `fleet ls`/`show` and logged,
        once in a while per appliance. The manager answers it with its own time, which the
        appliance corrects the time it signs at with (appliance/fleetlink_rpc.py).

        One from a name not enrolled (`name`, as the call says; `peer`, where it came from)
        is logged once in a while per name: a box that calls in to a manager whose database
        was lost or restored, or after `fleet rm`, is otherwise refused in silence."""
        self.by_reason[error.reason] += 1
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

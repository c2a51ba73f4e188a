"""What the fleet manager knows of its appliances' clocks: how far off one was when its
signed calls were refused for their time (edgeflix/proto/auth.py MAX_SKEW_S), or the
correction it says it signs with since it learned ours. `fleet ls`/`fleet show` show it
(fleet/http.py); fleet/refusals.py logs it. Pure: the times come in.

Only enrolled appliances' own calls reach it (their signature is checked before their time),
and it holds at most `limit` of them, the least recently seen forgotten first. `log_due` is
the once-in-a-while rule it logs by, shared with fleet/refusals.py's NameLog.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

# A box refused beat after beat (one without the correction, or more than 30 days off) is
# logged once in this long, not once a beat.
LOG_EVERY_S = 300.0
MAX_TRACKED = 4096


def log_due(last: float | None, mono: float, every_s: float) -> bool:
    """Whether a thing last logged at `last` (monotonic seconds; None: never) is logged again
    at `mono`: once in `every_s`, and at once if the clock reads before `last`."""
    return last is None or not 0 <= mono - last < every_s


@dataclass(frozen=True)
class ClockReading:
    offset_s: float  # the appliance's clock less ours (positive: it is ahead)
    refused: bool  # its calls are refused for their time: none was accepted since
    at: float  # when seen, on our wall clock
    logged: float | None  # when last logged (monotonic), None: never


class ApplianceClocks:
    def __init__(self, limit: int = MAX_TRACKED, log_every_s: float = LOG_EVERY_S) -> None:
        if limit < 1:
            raise ValueError("ApplianceClocks needs room for one appliance at least")
        self.limit = limit
        self.log_every_s = log_every_s
        self._seen: OrderedDict[str, ClockReading] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, name: str) -> ClockReading | None:
        return self._seen.get(name)

    def refused(
        self, name: str, signed_at: float, correction: float, now: float, mono: float
    ) -> ClockReading | None:
        """A call of `name` signed at `signed_at` (its clock plus `correction`) refused at
        `now`. The reading when it is to be logged (the first, or the first in
        `log_every_s`), else None."""
        offset = signed_at - correction - now
        if not math.isfinite(offset):
            return None
        old = self._seen.pop(name, None)
        last = old.logged if old is not None else None
        due = log_due(last, mono, self.log_every_s)
        reading = ClockReading(offset, True, now, mono if due else last)
        self._keep(name, reading)
        return reading if due else None

    def accepted(self, name: str, correction: float, now: float) -> None:
        """A call of `name` accepted, signed at its clock plus `correction`: its clock is off
        by about minus that (0.0: it reads right, nothing to show)."""
        if not correction:
            self._seen.pop(name, None)
            return
        old = self._seen.get(name)
        if old is not None and not old.refused and old.offset_s == -correction:
            return  # beat after beat the same: nothing new (and no write per call)
        self._seen.pop(name, None)
        self._keep(name, ClockReading(-correction, False, now, old.logged if old else None))

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)

    def _keep(self, name: str, reading: ClockReading) -> None:
        self._seen[name] = reading
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)

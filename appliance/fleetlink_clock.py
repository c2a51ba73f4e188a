"""This box's clocks against the fleet's. The correction learned of the fleet's time (calls
are signed, tokens and key periods checked, at this box's clock plus it: fleetlink_rpc.py)
moves back by as much as a step of this box's clock (NTP, `date -s`), as the fleet's time
did not: pure rules, with what /status says of a correction held.

Contact keeps when the fleet last answered on both clocks, and saves it (contact.json,
through LinkState) on the wall clock as it reads after a step: the grace period of the next
start, and `appliance status`, count from it. FleetLink (fleetlink.py) runs it on its thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from appliance.fleetlink_core import CONTACT_SAVE_S
from appliance.fleetlink_files import Enrolment
from appliance.fleetlink_state import LinkState, LinkStateError
from edgeflix import wallclock
from edgeflix.log import event
from edgeflix.proto.auth import MAX_CORRECTION_S, MIN_CORRECTION_S

log = logging.getLogger("appliance.fleet")


def correction_after_step(correction: float, step_s: float) -> float:
    """The correction (fleet time less this box's clock, fleetlink_rpc) once this box's
    clock stepped by `step_s` (NTP, `date -s`): the fleet's time did not move, so it shrinks
    by the step. 0.0 (none) when none was held (the clock read right, or too far off to
    learn: nothing to go by), and when what is left is a round trip's noise or further than
    any correction learned (the next refusal says what it is)."""
    if not correction:
        return 0.0
    left = correction - step_s
    if not MIN_CORRECTION_S <= abs(left) <= MAX_CORRECTION_S:  # NaN too
        return 0.0
    return left


def clock_note(correction: float) -> str | None:
    """What /status says of a correction: how far off the box's clock is, and what it is
    used for (None: none held)."""
    if not correction:
        return None
    return (
        f"clock off by {-correction:+.0f} s from the fleet manager's: corrected for fleet "
        "calls, token checks and key periods (fill windows go by this box's clock): set it "
        "right (NTP)"
    )


class Contact:
    """When the fleet last answered: `at` on the wall clock (contact.json, /status), `mono`
    on `monotonic`, which silence within a run is measured on (a wall clock stepped back
    would read as "connected" while the fleet is away, one stepped ahead as a lost fleet).
    Both change under the link's `lock`, and its readers take them under it. `on_step`:
    the wall clock was stepped by so many seconds (FleetRpc.follow_step)."""

    def __init__(
        self,
        store: LinkState,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        lock: threading.Lock,
        on_step: Callable[[float], None],
    ) -> None:
        self.store, self.clock, self.monotonic = store, clock, monotonic
        self._lock, self._on_step = lock, on_step
        self.at: float | None = None
        self.mono: float | None = None
        self._saved: float | None = None  # `monotonic` at the last save
        # `clock` - `monotonic` at the last look: a change is the wall clock stepped (NTP).
        self._offset: float | None = None

    def restore(self, enrolment: Enrolment | None) -> None:
        """The contact the last run saved; without one, the enrolment's time (`enrolment`:
        the one saved, under any name)."""
        now = self.clock()
        self._offset = now - self.monotonic()
        # Neither a contact nor an enrolment saved while the clock was ahead, or before it
        # was set (1970), counts as earlier or later than now (wallclock.counted_since): the
        # grace period runs from then at the latest.
        contact = self.store.last_contact(now, settle=True)
        if contact is None and enrolment is not None:
            contact = self._enrolled_since(enrolment, now)
        with self._lock:
            self.at = contact
            self.mono = None if contact is None else self.monotonic() - (now - contact)

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

    def save_now_and_then(self, now: float, mono: float) -> None:
        """A contact the link just took (`at`, `mono`): saved at most once a minute
        (CONTACT_SAVE_S, which `appliance status` allows for)."""
        if self._saved is None or mono - self._saved >= CONTACT_SAVE_S:
            self.store.save_contact(now)
            self._saved = mono

    def save(self) -> None:
        """The contact saved exactly (the fleet is lost, the daemon stops), on the wall clock
        as it reads now; a failure is logged."""
        try:
            self.store.save_contact(self.on_wall_clock())
        except LinkStateError as exc:
            event(log, "fleet.state_unwritable", logging.ERROR, reason=str(exc))

    def silent_s(self) -> float:
        """Seconds since the fleet last answered, on the monotonic clock (0: never)."""
        if self.mono is None:
            return 0.0
        return max(self.monotonic() - self.mono, 0.0)

    def on_wall_clock(self) -> float:
        """The last contact on the wall clock as it reads now: after a step back, the
        reading taken at the contact lies ahead of it, and saved so it would stretch the
        grace period of the next start (which clamps it to its now, LinkState)."""
        return self.clock() - self.silent_s()

    def follow(self) -> None:
        """The wall clock was stepped (NTP syncing a box that booted at 1970, or setting
        one that ran ahead): the last contact, saved at the old reading, is saved again on
        the new one, as the next start and `appliance status` read it. Else a contact saved
        at 1970 outlives the clock's fix, and a power cut then reads as 56 years without
        the fleet. A correction learned of the fleet's time moves back by the step (the
        fleet's time did not move: `on_step`)."""
        now, mono = self.clock(), self.monotonic()
        before, self._offset = self._offset, now - mono
        if before is None or not wallclock.stepped(before, now - mono):
            return
        event(log, "fleet.clock_stepped", by_s=round(now - mono - before, 1), clock=now)
        self._on_step(now - mono - before)
        if self.mono is None:
            return
        contact = now - max(mono - self.mono, 0.0)
        with self._lock:
            self.at = contact
        try:
            self.store.save_contact(contact)
        except LinkStateError as exc:
            event(log, "fleet.state_unwritable", logging.ERROR, reason=str(exc))

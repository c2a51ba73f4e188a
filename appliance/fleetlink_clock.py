"""This box's clocks against the fleet's. The correction learned of the fleet's time (calls
are signed, tokens and key periods checked, at this box's clock plus it: fleetlink_rpc.py)
moves back by as much as a step of this box's clock (NTP, `date -s`), as the fleet's time
did not: pure rules, with what /status says of a correction held.

Contact keeps when the fleet last answered on both clocks, and saves it (contact.json,
through LinkState) on the wall clock as it reads after a step: the grace period of the next
start, and `appliance status`, count from it. KeptCorrection saves the correction
(clock.json), so that the next start signs its first call, and its workers check tokens, at
the fleet's time; what is read back is believed only as `restored_correction` says. FleetLink
(fleetlink.py) runs both on its thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from appliance.fleetlink_core import CONTACT_SAVE_S
from appliance.fleetlink_files import Enrolment, SavedCorrection
from appliance.fleetlink_state import LinkState, LinkStateError
from edgeflix import wallclock
from edgeflix.log import event
from edgeflix.proto.auth import MAX_CORRECTION_S, MIN_CORRECTION_S

log = logging.getLogger("appliance.fleet")
# How long a saved correction is believed after the fleet last took a call signed with it (or
# it was learned). Past a day, a clock may have been set since in ways no reading here shows
# (across a reboot); within it, a bad RTC (100 ppm) drifts 9 s, far inside auth.MAX_SKEW_S.
CORRECTION_KEEP_S = 86_400.0
# A held correction is saved again, as taken by the fleet, this often (not with every beat:
# SD cards); its age at the next start is that much older than it is, at most.
CORRECTION_SAVE_S = 3600.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


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


Restored = Literal["none", "as_saved", "stepped", "other_fleet", "old", "clock_back"]


def restored_correction(
    saved: SavedCorrection, now: float, mono: float, boot: str, fleet: str
) -> tuple[float, float, Restored]:
    """The correction a start takes from what the last run saved (`now`, `mono`, `boot`:
    this start's readings; `fleet`: the address it calls), its age in seconds, and why.
    0.0 (none: the first call refused for the clock learns it again) unless believed:

    - "other_fleet": learned of another fleet manager's time;
    - "old": older than CORRECTION_KEEP_S (on the monotonic clock within one boot);
    - "clock_back": another boot (or an unknown one), and the wall clock reads before it
      was saved: set back since (a box without an RTC at 1970, a fake-hwclock's reading);
    - "stepped": in the same boot the wall clock was stepped since (NTP, `date -s`): it
      moves back by as much, as within a run (`correction_after_step`: none once NTP set
      the clock right);
    - "as_saved": believed. Across a reboot a step cannot be told from the wall clock alone:
      within CORRECTION_KEEP_S, and no earlier than saved, the first call says if it is off."""
    held = correction_after_step(saved.correction, 0.0)  # none, or no correction learned
    if not held:
        return 0.0, 0.0, "none"
    if saved.fleet != fleet:
        return 0.0, 0.0, "other_fleet"
    if boot and boot == saved.boot:
        age = mono - saved.mono
        if not 0.0 <= age <= CORRECTION_KEEP_S:
            return 0.0, age, "old"
        before, after = saved.at - saved.mono, now - mono
        if wallclock.stepped(before, after):
            return correction_after_step(held, after - before), age, "stepped"
        return held, age, "as_saved"
    age = now - saved.at
    if age < 0 or not wallclock.comparable(saved.at, now):
        return 0.0, age, "clock_back"
    if age > CORRECTION_KEEP_S:
        return 0.0, age, "old"
    return held, age, "as_saved"


def clock_note(correction: float) -> str | None:
    """What /status says of a correction: how far off the box's clock is, and what it is
    used for (None: none held)."""
    if not correction:
        return None
    return (
        f"clock off by {-correction:+.0f} s from the fleet manager's: corrected for fleet "
        "calls, token checks, key periods and fill windows: set it right (NTP)"
    )


def boot_id(path: Path = BOOT_ID) -> str:
    """The kernel's id of this boot ("": none to read, not Linux): a monotonic reading is
    compared only with one of the same boot."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


class KeptCorrection:
    """The correction as clock.json keeps it for the next start: saved when it changes
    (learned, moved by a step, dropped), and again at most once in CORRECTION_SAVE_S while
    the fleet takes calls signed with it; read back at the start as `restored_correction`
    says. Saved with when it was learned or last taken (its age; a step carries that over)
    on the clocks as they read at the save. A failed write is logged: the next start learns
    the correction again, as before it was kept."""

    def __init__(
        self,
        store: LinkState,
        fleet: Callable[[], str],
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        boot: str,
    ) -> None:
        self.store, self.fleet, self.clock, self.monotonic = store, fleet, clock, monotonic
        self.boot = boot
        self._basis: float | None = None  # `monotonic` when learned or last taken
        self._saved: float | None = None  # `monotonic` at the last save

    def restore(self) -> float:
        """The correction this start signs and checks tokens at (0.0: none); said when one
        was saved, taken or not, and saved again on this start's clocks (a correction
        dropped stays dropped; one kept keeps its age)."""
        saved = self.store.saved_correction()
        if saved is None:
            return 0.0
        now, mono = self.clock(), self.monotonic()
        correction, age, why = restored_correction(saved, now, mono, self.boot, self.fleet())
        if why == "none":
            return 0.0
        said = (
            "calls signed, and URL tokens, key periods and fill windows judged, at this "
            "box's clock plus offset_s until the fleet says otherwise"
            if correction
            else "this box's clock is taken as it reads until the fleet refuses a call for it"
        )
        event(
            log,
            "fleet.clock_restored" if correction else "fleet.clock_forgotten",
            logging.WARNING if correction else logging.INFO,
            offset_s=round(correction, 3),
            saved_offset_s=round(saved.correction, 3),
            age_s=round(age, 1),
            why=why,
            action=said,
        )
        self._basis = mono - age if correction else None
        self._write(correction)
        self._saved = None  # the first call the fleet takes saves its age anew
        return correction

    def changed(self, correction: float, stepped: bool = False) -> None:
        """The link's correction changed (FleetRpc): learned of the fleet's time now, or
        moved by a step of this box's clock (`stepped`: as old as the one it replaces)."""
        if not stepped or self._basis is None:
            self._basis = self.monotonic()
        self._write(correction)

    def taken(self, correction: float) -> None:
        """The fleet answered a call signed at `correction`: its age counts from now, saved
        once in CORRECTION_SAVE_S."""
        if not correction:
            return
        self._basis = mono = self.monotonic()
        if self._saved is None or mono - self._saved >= CORRECTION_SAVE_S:
            self._write(correction)

    def _write(self, correction: float) -> None:
        """clock.json: `correction`, learned or last taken at `_basis`, on the clocks now."""
        now, mono = self.clock(), self.monotonic()
        basis = mono if self._basis is None else self._basis
        saved = SavedCorrection(correction, now - (mono - basis), basis, self.boot, self.fleet())
        try:
            self.store.save_correction(saved)
            self._saved = mono
        except LinkStateError as exc:
            event(log, "fleet.state_unwritable", logging.ERROR, reason=str(exc))


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

"""Whether a wall-clock reading can be believed. A box without a real-time clock (a Raspberry
Pi) boots at 1970 and runs on it until NTP syncs; times read then and saved (the fleet's
last contact, a replaced version's deadline) must not be compared, as they are, with a
clock set right since. Pure: callers pass the readings in.

Used by the appliance's fleet link (appliance/fleetlink*.py), its health and its store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

# Like systemd's TIME_EPOCH: no correct clock reads earlier than this, as no copy of this
# code ran before it (2026-01-01T00:00:00Z, before its first release). A reading below it
# comes from a clock not yet set (1970 after a boot without an RTC), never from the past.
FLOOR = 1_767_225_600.0
# How far the wall clock may move against the monotonic one between two looks before it
# counts as stepped (NTP syncing, an operator's `date -s`): slewing moves it by at most
# 0.5 ms a second, and the looks are seconds apart.
STEP_S = 5.0


def plausible(t: float) -> bool:
    """`t` (seconds since the epoch) could be read off a clock that is set."""
    return t >= FLOOR


def comparable(saved: float, now: float) -> bool:
    """A reading saved earlier can be compared with `now`: not read off a clock not yet set
    while `now`'s is. Both below the floor are on the same unset clock (a box still waiting
    for NTP), and compared as they are."""
    return plausible(saved) or not plausible(now)


Counted = Literal["as_saved", "ahead", "implausible"]


def counted_since(saved: float, now: float) -> tuple[float, Counted]:
    """A reading saved earlier (when the fleet last answered) as a silence counts from it at
    `now`, and why it changed. Where it cannot be believed, `now`: a silence counted too
    short ends at the next answer, one counted as 56 years ends a grace period at once.

    - "ahead": later than `now` (that clock ahead then, or this one behind now);
    - "implausible": read off a clock not yet set, now set (comparable): unknown."""
    if not comparable(saved, now):
        return now, "implausible"
    if saved > now:
        return now, "ahead"
    return saved, "as_saved"


def stepped(offset_before: float, offset_now: float) -> bool:
    """The wall clock was stepped, by the change of its offset to the monotonic clock
    (`wall - monotonic`) between two looks."""
    return abs(offset_now - offset_before) > STEP_S


def iso(t: float) -> str:
    """`t` as an operator reads it in a log line or a reason: 1970-01-02T00:00:01Z."""
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t:.0f} s since the epoch"


# What OpenSSL and BoringSSL say of a certificate refused for its dates alone.
_DATES = (("certificate is not yet valid", "not yet valid"), ("certificate has expired", "expired"))


def certificate_dates_refused(error: str) -> str | None:
    """ "not yet valid" or "expired" when `error` (a failed TLS call's text) says the peer's
    certificate was refused for its dates, checked on this box's clock: most likely that
    clock is off. None for any other failure."""
    text = error.lower()
    if "certificate_verify_failed" not in text and "certificate verify failed" not in text:
        return None
    return next((what for words, what in _DATES if words in text), None)

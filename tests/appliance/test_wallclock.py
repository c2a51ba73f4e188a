"""The wall clock's plausibility floor (edgeflix/wallclock.py), like systemd's TIME_EPOCH: a
reading below it comes off a clock not yet set (a Raspberry Pi without an RTC boots at 1970
until NTP syncs). What counts against it: a saved reading, a step, a TLS refusal for a
certificate's dates, a replaced version's deadline (appliance/replaced.py). Pure rules; the
faults they fix are driven in test_clock_faults.py and test_clock_restart.py."""

from __future__ import annotations

import time

import pytest

from appliance import replaced
from edgeflix import wallclock

# A second after the epoch's first day, as contact.json held it in the field report.
AT_1970 = 86_401.59
NOW = wallclock.FLOOR + 300 * 86_400.0  # a clock set right


# -- the floor ------------------------------------------------------------------------------


def test_the_floor_is_before_any_real_reading_and_after_1970() -> None:
    assert wallclock.iso(wallclock.FLOOR) == "2026-01-01T00:00:00Z"
    assert wallclock.plausible(time.time()) and wallclock.plausible(wallclock.FLOOR)
    assert not wallclock.plausible(AT_1970) and not wallclock.plausible(0.0)
    assert wallclock.iso(AT_1970) == "1970-01-02T00:00:01Z"
    assert "since the epoch" in wallclock.iso(1e300)  # no traceback on nonsense


@pytest.mark.parametrize(
    ("saved", "now", "counted"),
    [
        (NOW - 60, NOW, (NOW - 60, "as_saved")),
        (NOW + 86_400, NOW, (NOW, "ahead")),
        (AT_1970, NOW, (NOW, "implausible")),  # 1970, read on a set clock: unknown
        (AT_1970, AT_1970 + 60, (AT_1970, "as_saved")),  # both on the unset clock
        (NOW, AT_1970, (AT_1970, "ahead")),  # saved on a set clock, read at 1970
    ],
)
def test_a_saved_reading_counts_from_now_where_it_cannot_be_believed(
    saved: float, now: float, counted: tuple[float, str]
) -> None:
    assert wallclock.counted_since(saved, now) == counted


def test_a_step_is_the_offset_to_the_monotonic_clock_moving() -> None:
    assert not wallclock.stepped(100.0, 100.0 + wallclock.STEP_S)
    assert wallclock.stepped(100.0, NOW)
    assert wallclock.stepped(NOW, 100.0)


@pytest.mark.parametrize(
    ("error", "dates"),
    [
        ("heartbeat: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1"
         ":1: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
         "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: certificate is not yet valid",
         "not yet valid"),
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired",
         "expired"),
        ("CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate", None),
        ("heartbeat: failed to connect to all addresses; Connection refused", None),
        ("certificate is not yet valid", None),  # the fleet's own words, not a TLS refusal
    ],
)  # fmt: skip
def test_a_tls_refusal_for_the_certificates_dates_is_told_apart(
    error: str, dates: str | None
) -> None:
    assert wallclock.certificate_dates_refused(error) == dates


# -- a replaced version's deadline ------------------------------------------------------------


@pytest.mark.parametrize(
    ("until", "now", "due"),
    [
        (NOW + 60, NOW, NOW + 60),  # as recorded
        (NOW + 5 * 365 * 86_400, NOW, NOW + 3600),  # recorded years ahead: keep_s from now
        (AT_1970 + 3600, NOW, NOW + 3600),  # recorded at 1970, read on a set clock
        (AT_1970 + 3600, AT_1970 + 60, AT_1970 + 3600),  # both at 1970: as recorded
        (NOW - 1, NOW, NOW - 1),  # due: goes
    ],
)
def test_a_kept_versions_deadline_is_bounded_by_now(until: float, now: float, due: float) -> None:
    assert replaced.due(until, now, 3600.0) == due

"""The "local" fill-window zone follows TZ as `date` does (containers set their zone with TZ,
not /etc/localtime): IANA names, ":name", zone files, POSIX rules; an unusable TZ falls back
to the system's zone with one warning event."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from appliance.fill.window import parse_window, zone_from_env

# Stands in for /etc/localtime: a zone no test TZ names, so a fallback is visible.
SYSTEM = timezone(timedelta(hours=3, minutes=17), "system")
NEW_YORK = ZoneInfo("America/New_York")
SUMMER = datetime(2027, 7, 1, 12, 0, tzinfo=UTC)
WINTER = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)


def zone(tz: str | None) -> tuple[tzinfo, str | None]:
    return zone_from_env({} if tz is None else {"TZ": tz}, lambda: SYSTEM)


def offsets(z: tzinfo) -> tuple[timedelta | None, timedelta | None]:
    return SUMMER.astimezone(z).utcoffset(), WINTER.astimezone(z).utcoffset()


@pytest.mark.parametrize("tz", ["America/New_York", ":America/New_York"])
def test_tz_naming_an_iana_zone_is_that_zone(tz: str) -> None:
    z, problem = zone(tz)
    assert problem is None
    assert offsets(z) == offsets(NEW_YORK)


def test_no_tz_is_the_system_zone_and_empty_tz_is_utc() -> None:
    assert zone(None) == (SYSTEM, None)
    assert zone(":") == (SYSTEM, None)  # glibc: ":" alone is the default zone file
    z, problem = zone("")
    assert problem is None and offsets(z) == (timedelta(0), timedelta(0))


@pytest.mark.parametrize(
    ("tz", "summer_h", "winter_h"),
    [
        ("UTC0", 0, 0),
        ("JST-9", 9, 9),
        ("<+0530>-5:30", 5.5, 5.5),
        ("EST5EDT,M3.2.0,M11.1.0", -4, -5),
        ("CET-1CEST,M3.5.0,M10.5.0/3", 2, 1),
    ],
)
def test_tz_as_a_posix_rule(tz: str, summer_h: float, winter_h: float) -> None:
    z, problem = zone(tz)
    assert problem is None
    assert offsets(z) == (timedelta(hours=summer_h), timedelta(hours=winter_h))


def test_tz_as_a_zone_file_path(tmp_path: Path) -> None:
    source = Path("/usr/share/zoneinfo/America/New_York")
    if not source.is_file():
        pytest.skip("no system zoneinfo to copy a zone file from")
    path = tmp_path / "ny"
    path.write_bytes(source.read_bytes())
    for tz in (str(path), f":{path}"):
        z, problem = zone(tz)
        assert problem is None and offsets(z) == offsets(NEW_YORK)


@pytest.mark.parametrize(
    "tz", ["Mars/Olympus", "Europe", "garbage", ":UTC0", "a" * 300, "/nonexistent/zone"]
)
def test_unusable_tz_falls_back_to_the_system_zone_with_a_reason(tz: str) -> None:
    z, problem = zone(tz)
    assert z is SYSTEM
    assert problem is not None and problem.startswith("TZ=") and len(problem) < 160


def test_a_local_window_opens_on_tz_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's case: TZ=America/New_York on a UTC host, window 08:00-09:00, at
    08:24 New York time the window is open (it waited 18.6 hours instead)."""
    monkeypatch.setenv("TZ", "America/New_York")
    w = parse_window("08:00-09:00", "local")
    now = datetime(2027, 11, 26, 8, 24, tzinfo=NEW_YORK)
    assert w.is_open(now)
    assert w.next_close(now) == datetime(2027, 11, 26, 9, 0, tzinfo=NEW_YORK)
    later = datetime(2027, 11, 26, 10, 0, tzinfo=NEW_YORK)
    assert w.seconds_until_open(later) == 22 * 3600


def test_an_unusable_tz_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TZ", "Nowhere/Special-Test-Zone")
    with caplog.at_level(logging.WARNING, logger="appliance.fill.window"):
        for _ in range(3):  # the scheduler re-reads the plan every tick
            parse_window("02:00-06:00", "local")
    warnings = [r for r in caplog.records if r.getMessage() == "fill.timezone_fallback"]
    assert len(warnings) == 1

"""Fill windows: open/closed, next open/close, across midnight, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.fill.window import parse_window
from edgeflix.fillwindow import WindowError

BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc,arg-type]


def test_simple_window() -> None:
    w = parse_window("02:00-06:00", "Europe/Berlin")
    assert not w.is_open(at(2024, 5, 1, 1, 59))
    assert w.is_open(at(2024, 5, 1, 2, 0))
    assert w.is_open(at(2024, 5, 1, 5, 59, 59))
    assert not w.is_open(at(2024, 5, 1, 6, 0))
    assert w.next_open(at(2024, 5, 1, 7, 0)) == at(2024, 5, 2, 2, 0)
    assert w.next_open(at(2024, 5, 1, 3, 0)) == at(2024, 5, 1, 3, 0)
    assert w.next_close(at(2024, 5, 1, 3, 0)) == at(2024, 5, 1, 6, 0)
    assert w.next_close(at(2024, 5, 1, 7, 0)) == at(2024, 5, 2, 6, 0)
    assert w.seconds_until_open(at(2024, 5, 1, 1, 0)) == 3600


def test_window_across_midnight() -> None:
    w = parse_window("22:30-04:00", "Europe/Berlin")
    assert w.is_open(at(2024, 5, 1, 23, 0))
    assert w.is_open(at(2024, 5, 2, 3, 0))
    assert not w.is_open(at(2024, 5, 2, 12, 0))
    assert w.next_close(at(2024, 5, 1, 23, 0)) == at(2024, 5, 2, 4, 0)
    assert w.next_close(at(2024, 5, 2, 1, 0)) == at(2024, 5, 2, 4, 0)
    assert w.next_open(at(2024, 5, 2, 12, 0)) == at(2024, 5, 2, 22, 30)


def test_spring_forward_gap_shortens_the_window() -> None:
    # 2024-03-31 in Berlin: 02:00 jumps to 03:00. The 02:00-06:00 window opens at 03:00 CEST
    # and lasts three real hours.
    w = parse_window("02:00-06:00", "Europe/Berlin")
    opened = w.next_open(at(2024, 3, 31, 0, 30))
    closed = w.next_close(opened)
    assert opened.astimezone(UTC) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert closed - opened == timedelta(hours=3)


def test_fall_back_lengthens_the_window() -> None:
    # 2024-10-27 in Berlin: 03:00 happens twice; 01:00-05:00 lasts five real hours.
    w = parse_window("01:00-05:00", "Europe/Berlin")
    opened = w.next_open(at(2024, 10, 27, 0, 0))
    assert opened == at(2024, 10, 27, 1, 0)
    assert w.next_close(opened) - opened == timedelta(hours=5)
    assert w.is_open(at(2024, 10, 27, 2, 30, fold=1))


def test_window_in_utc_and_24() -> None:
    w = parse_window("22:00-24:00", "UTC")
    assert w.is_open(datetime(2024, 1, 1, 23, 59, tzinfo=UTC))
    assert not w.is_open(datetime(2024, 1, 2, 0, 0, tzinfo=UTC))


def test_the_whole_day_is_always_open_and_never_closes() -> None:
    """00:00-24:00 was refused as empty; it is the whole day, DST days included."""
    w = parse_window("00:00-24:00", "Europe/Berlin")
    assert w.always_open
    for moment in (
        at(2024, 5, 1, 0, 0),
        at(2024, 5, 1, 23, 59, 59),
        at(2024, 3, 31, 2, 30),  # the spring-forward night
        at(2024, 10, 27, 2, 30, fold=1),  # the fall-back night's second 02:30
    ):
        # In UTC: a time in a DST gap or fold never equals one in another zone (PEP 495).
        assert w.is_open(moment) and w.next_open(moment) == moment.astimezone(UTC)
        assert w.next_close(moment) is None  # a fill running at midnight goes on
        assert w.seconds_until_open(moment) == 0.0
    assert parse_window(" 0:00 - 24:00 ", "UTC").always_open
    assert not parse_window("02:00-06:00", "UTC").always_open


@pytest.mark.parametrize(
    "spec",
    ["", "2-6", "02:00", "25:00-06:00", "02:60-03:00", "03:00-03:00", "00:00-00:00", "24:00-24:00"],
)
def test_bad_specs(spec: str) -> None:
    with pytest.raises(WindowError):
        parse_window(spec, "UTC")


def test_bad_zone_and_naive_now() -> None:
    with pytest.raises(WindowError, match="time zone"):
        parse_window("02:00-06:00", "Mars/Olympus")
    with pytest.raises(WindowError, match="aware"):
        parse_window("02:00-06:00", "UTC").is_open(datetime(2024, 1, 1))


def test_local_zone_works() -> None:
    w = parse_window("02:00-06:00", "local")
    now = datetime.now(UTC)
    assert w.next_open(now) >= now


zones = st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"])
moments = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


@given(
    zone=zones,
    now=moments,
    h1=st.integers(0, 23),
    m1=st.sampled_from([0, 15, 30]),
    h2=st.integers(0, 23),
    m2=st.sampled_from([0, 45]),
)
def test_open_close_are_consistent(
    zone: str, now: datetime, h1: int, m1: int, h2: int, m2: int
) -> None:
    if (h1, m1) == (h2, m2):
        return
    w = parse_window(f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}", zone)
    opened = w.next_open(now)
    assert opened >= now
    assert w.is_open(opened)
    closed = w.next_close(opened)
    assert closed > opened
    assert not w.is_open(closed)
    assert closed - opened <= timedelta(hours=25)
    if not w.is_open(now):
        assert w.is_open(opened) and not w.is_open(opened - timedelta(microseconds=1))

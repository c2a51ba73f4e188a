"""Fill windows on DST nights: a wall time inside a spring-forward gap means the gap's end
(never an hour late), a window wholly inside the gap opens at the gap's end for its usual
length, a time that happens twice means its first occurrence."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from appliance.fill.window import parse_window
from edgeflix.fillwindow import FillWindow

BERLIN = ZoneInfo("Europe/Berlin")
SPRING = (2027, 3, 28)  # Berlin: 02:00 CET jumps to 03:00 CEST (01:00 UTC)
FALL = (2027, 10, 31)  # Berlin: 03:00 CEST goes back to 02:00 CET (01:00 UTC)


def berlin(day: tuple[int, int, int], hour: int, minute: int = 0, fold: int = 0) -> datetime:
    return datetime(*day, hour, minute, tzinfo=BERLIN, fold=fold)


def span(spec: str, since: datetime) -> tuple[datetime, datetime]:
    w = parse_window(spec, "Europe/Berlin")
    opened = w.next_open(since)
    return opened, w.next_close(opened)


@pytest.mark.parametrize(
    ("spec", "opens", "closes"),
    [
        ("02:30-03:30", (3, 0), (3, 30)),  # start in the gap: opens when it ends
        ("02:30-06:00", (3, 0), (6, 0)),
        ("01:30-02:30", (1, 30), (3, 0)),  # end in the gap: closes when it ends
        ("22:00-02:30", (3, 0), (3, 0)),  # (opened the evening before; checked below)
        ("02:00-02:30", (3, 0), (3, 30)),  # wholly in the gap: its usual length at 03:00
        ("02:00-03:00", (3, 0), (4, 0)),
    ],
)
def test_spring_forward_gap(spec: str, opens: tuple[int, int], closes: tuple[int, int]) -> None:
    if spec.startswith("22:"):
        opened, closed = span(spec, berlin((2027, 3, 27), 21))
        assert opened == berlin((2027, 3, 27), 22)
        assert closed == berlin(SPRING, *closes)  # 4 real hours, not 4.5
        return
    opened, closed = span(spec, berlin(SPRING, 0, 0))
    assert opened == berlin(SPRING, *opens)
    assert closed == berlin(SPRING, *closes)


def test_gap_night_window_is_the_same_on_ordinary_nights() -> None:
    opened, closed = span("02:30-03:30", berlin((2027, 3, 29), 0))
    assert (opened, closed) == (berlin((2027, 3, 29), 2, 30), berlin((2027, 3, 29), 3, 30))


def test_fall_back_night_uses_the_first_occurrence() -> None:
    opened, closed = span("02:30-03:30", berlin(FALL, 0))
    # the first 02:30 (CEST); an ambiguous wall time never compares equal across zones
    assert opened == datetime(2027, 10, 31, 0, 30, tzinfo=UTC)
    assert closed - opened == timedelta(hours=2)  # until 03:30 CET
    w = parse_window("02:15-02:45", "Europe/Berlin")
    assert w.is_open(berlin(FALL, 2, 20))
    assert not w.is_open(berlin(FALL, 2, 20, fold=1))  # never twice a night


def test_a_window_closing_as_it_reopens_stays_open() -> None:
    """03:00-02:30 on the gap night: the previous evening's span ends at the gap's end, 03:00,
    just as the night's span opens; it is one span, closing at 02:30 the next night."""
    w = parse_window("03:00-02:30", "Europe/Berlin")
    now = berlin(SPRING, 1, 0)
    assert w.is_open(now)
    closed = w.next_close(now)
    assert closed == berlin((2027, 3, 29), 2, 30)
    assert not w.is_open(closed)


# -- any window, any moment near a DST change ---------------------------------------------

ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]


@cache
def changes(name: str) -> tuple[datetime, ...]:
    """UTC instants (to the minute) where `name` changes offset, 2025-2029."""
    zone = ZoneInfo(name)
    found = []
    t = datetime(2025, 1, 1, tzinfo=UTC)
    while t.year < 2030:
        step = t + timedelta(hours=6)
        if t.astimezone(zone).utcoffset() != step.astimezone(zone).utcoffset():
            lo, hi = t, step
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(zone).utcoffset() == lo.astimezone(zone).utcoffset():
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
        t = step
    return tuple(found)


def in_wall_interval(w: FillWindow, at: time) -> bool:
    if w.start < w.end:
        return w.start <= at < w.end
    return at >= w.start or at < w.end


def just_after_a_gap(w: FillWindow, instant: datetime) -> bool:
    before = (instant - timedelta(seconds=1)).astimezone(w.zone).utcoffset()
    after = instant.astimezone(w.zone).utcoffset()
    assert before is not None and after is not None
    return after > before


@settings(max_examples=300, deadline=None)
# Found by hypothesis: Santiago's clocks jump at midnight, swallowing 00:00-00:15's pause.
@example(zone="America/Santiago", which=1, shift_min=-121, h1=0, m1=15, h2=0, m2=0)
@given(
    zone=st.sampled_from(ZONES),
    which=st.integers(0, 9),
    shift_min=st.integers(-36 * 60, 36 * 60),
    h1=st.integers(0, 23),
    m1=st.sampled_from([0, 15, 30, 45]),
    h2=st.integers(0, 23),
    m2=st.sampled_from([0, 15, 30, 45]),
)
def test_openings_near_dst_changes(
    zone: str, which: int, shift_min: int, h1: int, m1: int, h2: int, m2: int
) -> None:
    if (h1, m1) == (h2, m2):
        return
    w = parse_window(f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}", zone)
    moments = changes(zone)
    now = moments[which % len(moments)] + timedelta(minutes=shift_min)
    opened = w.next_open(now)
    assert now <= opened <= now + timedelta(hours=25)
    assert w.is_open(opened)
    closed = w.next_close(opened)
    # A pause that lies wholly in a spring-forward gap does not happen that night, and the
    # spans either side are one (test_a_window_closing_as_it_reopens_stays_open): up to two
    # days open when the pause is no longer than the gap.
    pause = timedelta(days=1) - (
        datetime.combine(date.min, w.end) - datetime.combine(date.min, w.start)
    ) % timedelta(days=1)
    longest = timedelta(hours=49) if pause <= timedelta(hours=1) else timedelta(hours=25)
    assert opened < closed <= opened + longest
    assert not w.is_open(closed)
    if opened > now:
        wall = opened.astimezone(w.zone).time()
        assert in_wall_interval(w, wall) or just_after_a_gap(w, opened), (opened, wall)
        assert not w.is_open(opened - timedelta(seconds=1))

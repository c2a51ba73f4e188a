"""`fleet sites` "filling now" agrees with when appliances fill (appliance/fill/window.py)
across DST changes: a spring-forward gap's times mean its end, a repeated hour its first."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.fill.window import parse_window
from fleet.model import Site

UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_a_window_inside_the_spring_forward_gap_opens_at_its_end() -> None:
    # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    site = Site.build("s", [], "02:00-02:30", "Europe/Berlin")
    assert site.in_fill_window(at(2026, 3, 29, 1, 10))  # 03:10 CEST
    assert not site.in_fill_window(at(2026, 3, 29, 1, 40))


def test_a_repeated_fall_back_hour_fills_once() -> None:
    # Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET (01:00 UTC).
    site = Site.build("s", [], "02:00-02:30", "Europe/Berlin")
    assert site.in_fill_window(at(2026, 10, 25, 0, 10))  # 02:10 CEST, the first time
    assert not site.in_fill_window(at(2026, 10, 25, 1, 10))  # 02:10 CET, the second


_TRANSITIONS = {
    "Europe/Berlin": [at(2026, 3, 29, 1), at(2026, 10, 25, 1)],
    "America/New_York": [at(2026, 3, 8, 7), at(2026, 11, 1, 6)],
    "Australia/Lord_Howe": [at(2026, 4, 4, 15), at(2026, 10, 3, 15, 30)],  # 30-minute shift
    "UTC": [at(2026, 6, 1, 0)],
}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(_TRANSITIONS)),
    st.integers(0, 1),
    st.integers(-36 * 60, 36 * 60),
    st.integers(0, 23),
    st.sampled_from([0, 15, 30, 45]),
    st.integers(0, 23),
    st.sampled_from([0, 15, 30, 45]),
)
def test_filling_now_agrees_with_the_appliance_near_dst_changes(
    zone: str, which: int, minutes: int, h1: int, m1: int, h2: int, m2: int
) -> None:
    if (h1, m1) == (h2, m2):
        return
    spec = f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}"
    changes = _TRANSITIONS[zone]
    now = changes[which % len(changes)] + dt.timedelta(minutes=minutes)
    site = Site.build("s", [], spec, zone)
    assert site.in_fill_window(now) == parse_window(spec, zone).is_open(now), (spec, zone, now)

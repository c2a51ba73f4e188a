"""Daily fill windows such as "02:00-06:00" in a time zone, shared by the appliance (which
fills inside them) and the fleet manager (which shows whether a site is filling now): is it
open, when does it next open or close. Pure: `now` is always passed in (an aware datetime).

A window is a daily interval of wall-clock time, across midnight when end < start. Each
day's interval is turned into UTC instants through zoneinfo, so DST days are simply shorter
or longer windows, never skipped or doubled: a time inside a spring-forward gap means the
gap's end, a time that happens twice its first. "00:00-24:00" (start == end) is the whole
day: open at every instant, never closing.

A window is the site's, kept on the fleet manager's clock: an appliance whose clock is off
judges it at `fleet_now` (its clock plus the correction its fleet link learned).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edgeflix.errors import EdgeflixError

_SPEC = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class WindowError(EdgeflixError):
    """A fill window or time zone that cannot be understood."""


@dataclass(frozen=True)
class FillWindow:
    start: time
    end: time  # == start: the whole day ("00:00-24:00", see parse_times)
    zone: tzinfo

    @property
    def always_open(self) -> bool:
        return self.start == self.end

    def intervals(self, around: datetime) -> list[tuple[datetime, datetime]]:
        """The window's [open, close) instants for the local days near `around`, in order;
        spans that touch (a window closing as it reopens) are one span."""
        local_day = around.astimezone(self.zone).date()
        spans: list[tuple[datetime, datetime]] = []
        for offset in range(-2, 3):
            day = local_day + timedelta(days=offset)
            opens = self._instant(day, self.start)
            closes = self._instant(self._end_day(day), self.end)
            if closes <= opens:
                # The whole window lies in a spring-forward gap ("02:00-02:30" the night 02:00
                # jumps to 03:00): rather than skip that night's fill, it opens when the gap
                # ends, for its usual length (03:00-03:30).
                closes = opens + self._length()
            if spans and opens <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(closes, spans[-1][1]))
            else:
                spans.append((opens, closes))
        return spans

    def _end_day(self, day: date) -> date:
        return day + timedelta(days=1) if self.end <= self.start else day

    def _length(self) -> timedelta:
        minutes = (self.end.hour - self.start.hour) * 60 + self.end.minute - self.start.minute
        return timedelta(minutes=minutes % (24 * 60))

    def _instant(self, day: date, at: time) -> datetime:
        """The UTC instant of wall time `at` on `day`. A time that happens twice (fall back) is
        its first occurrence, so a window never opens twice in a night. A time that does not
        happen (spring forward) is the end of the gap: zoneinfo's fold=0 reading would apply
        the old offset and push it an hour late ("02:30-03:30" opening at 03:30, empty).
        Everything is compared in UTC: Python compares and subtracts datetimes sharing one
        tzinfo by wall time, which is wrong across a DST change."""
        wall = datetime.combine(day, at)
        first = wall.replace(tzinfo=self.zone).astimezone(UTC)
        if first.astimezone(self.zone).replace(tzinfo=None) == wall:
            return first
        return _gap_end(self.zone, wall, first)

    def is_open(self, now: datetime) -> bool:
        now = _utc(now)
        return self.always_open or any(a <= now < b for a, b in self.intervals(now))

    def next_open(self, now: datetime) -> datetime:
        """`now` itself when open, else the next opening instant (UTC)."""
        now = _utc(now)
        if self.is_open(now):
            return now
        return min(a for a, _ in self.intervals(now) if a > now)

    def next_close(self, now: datetime) -> datetime | None:
        """The end of the interval holding `now`, or of the next one when closed; None for a
        window that never closes (always open): its days' spans join at each midnight, and a
        fill must not take one of those for a close."""
        now = _utc(now)
        if self.always_open:
            return None
        return min(b for _, b in self.intervals(now) if b > now)

    def seconds_until_open(self, now: datetime) -> float:
        return max((self.next_open(now) - _utc(now)).total_seconds(), 0.0)


def fleet_now(now: datetime, correction_s: float) -> datetime:
    """`now`, read off a box's clock, as the fleet manager's clock reads it: plus the
    correction the box's fleet link learned (appliance/fleetlink_rpc.py; 0.0: none, or the
    clock reads right). A window judged at the box's clock alone opens and closes as far off
    as that clock is, hours into the sites' peak."""
    return now + timedelta(seconds=correction_s) if correction_s else now


def _gap_end(zone: tzinfo, wall: datetime, after: datetime) -> datetime:
    """The instant a spring-forward gap holding naive `wall` ends: the first second whose wall
    time is past `wall`. It lies between the readings of `wall` with the new offset (fold=1,
    before the gap) and the old one (`after`); zone changes fall on whole seconds."""
    lo = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    hi = int(after.timestamp())
    for _ in range(64):  # about 17 halvings for an hour's gap; bounded all the same
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise WindowError("fill window needs an aware datetime (with a time zone)")
    return now.astimezone(UTC)


def parse_times(spec: str) -> tuple[time, time]:
    """`"02:00-06:00"` → (02:00, 06:00); "24:00" as an end means midnight. "00:00-24:00" is
    the whole day, (00:00, 00:00): a window that is always open (`FillWindow.always_open`);
    any other window starting as it ends is empty, and refused."""
    match = _SPEC.match(spec)
    if not match:
        raise WindowError(f"fill window {spec!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    whole_day = (h1, m1, h2, m2) == (0, 0, 24, 0)
    if h2 == 24 and m2 == 0:
        h2 = 0  # "22:00-24:00" means until midnight
    if not (0 <= h1 < 24 and 0 <= h2 < 24 and m1 < 60 and m2 < 60):
        raise WindowError(f"fill window {spec!r}: hours 00-23, minutes 00-59")
    if (h1, m1) == (h2, m2) and not whole_day:
        raise WindowError(
            f"fill window {spec!r} is empty (it starts as it ends); 00:00-24:00 is always open"
        )
    return time(h1, m1), time(h2, m2)


def format_times(start: time, end: time) -> str:
    """The spec parse_times reads back as (start, end): "00:00-24:00" for the whole day."""
    if start == end:
        return "00:00-24:00"
    return f"{start:%H:%M}-{end:%H:%M}"


def iana_zone(name: str) -> ZoneInfo:
    """The IANA zone `name` ("Europe/Berlin"), or WindowError naming it."""
    try:
        return ZoneInfo(name)
    # OSError too: a folder of zones ("Europe") is IsADirectoryError, a 300-character name
    # "File name too long"; both are a wrong name, not an I/O failure to report as one.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise WindowError(
            f"unknown time zone {shown!r} (use an IANA name like Europe/Berlin)"
        ) from None

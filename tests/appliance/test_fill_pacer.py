"""The pacer: fill window gating and the bandwidth cap, with an injected clock and sleep."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from appliance.fill.downloader import Pacer, WindowClosed
from appliance.fill.window import parse_window


class FakeTime:
    def __init__(self, start: datetime) -> None:
        self.now = start
        self.slept: list[float] = []

    def wall(self) -> datetime:
        return self.now

    def mono(self) -> float:
        return (self.now - datetime(2024, 1, 1, tzinfo=UTC)).total_seconds()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


def test_window_pauses_at_close_and_resumes_at_next_open() -> None:
    t = FakeTime(datetime(2024, 5, 1, 5, 59, 0, tzinfo=UTC))
    pacer = Pacer(None, parse_window("02:00-06:00", "UTC"), clock=t.mono, now=t.wall, sleep=t.sleep)

    async def scenario() -> None:
        await pacer.wait_open()
        assert t.slept == []
        await pacer.spend(1000)
        t.now += timedelta(minutes=1)  # 06:00: the window has closed
        with pytest.raises(WindowClosed):
            await pacer.spend(1000)
        await pacer.wait_open()
        assert t.now == datetime(2024, 5, 2, 2, 0, tzinfo=UTC)
        assert sum(t.slept) == 20 * 3600
        await pacer.spend(1000)

    asyncio.run(scenario())


def test_a_window_closing_as_it_is_checked_is_not_taken_for_open_until_tomorrow() -> None:
    """The clock passes the close while wait_open looks (stream threads read it too): the
    streams are stopped at today's close, not let run until tomorrow's."""
    readings = iter([datetime(2024, 5, 1, 5, 59, 59, tzinfo=UTC)])
    late = datetime(2024, 5, 1, 6, 0, 1, tzinfo=UTC)
    pacer = Pacer(None, parse_window("02:00-06:00", "UTC"), now=lambda: next(readings, late))

    async def scenario() -> None:
        await pacer.wait_open()  # open at its one reading
        with pytest.raises(WindowClosed):
            pacer.charge(1000)

    asyncio.run(scenario())


def test_cap_makes_streams_wait() -> None:
    t = FakeTime(datetime(2024, 5, 1, tzinfo=UTC))
    pacer = Pacer(8000, None, clock=t.mono, now=t.wall, sleep=t.sleep)  # 1000 bytes/s

    async def scenario() -> None:
        await pacer.spend(250)  # the initial burst: a quarter second of line rate
        assert t.slept == []
        await pacer.spend(1000)
        assert t.slept == [1.0]
        for _ in range(10):
            await pacer.spend(500)
        # 5000 more bytes at 1000 B/s: 5 more seconds of waiting in all
        assert sum(t.slept) == pytest.approx(6.0)

    asyncio.run(scenario())


def test_no_window_no_cap_never_waits() -> None:
    t = FakeTime(datetime(2024, 5, 1, tzinfo=UTC))
    pacer = Pacer(None, None, clock=t.mono, now=t.wall, sleep=t.sleep)

    async def scenario() -> None:
        await pacer.wait_open()
        for _ in range(100):
            await pacer.spend(1 << 20)

    asyncio.run(scenario())
    assert t.slept == []


def test_a_clock_stepped_back_stops_the_streams_until_the_window_is_open_again() -> None:
    """NTP steps the clock back while a fill runs: the close kept from before the step must
    not let the streams run outside the window for as long as the step (a month here)."""
    t = FakeTime(datetime(2024, 5, 1, 3, 0, tzinfo=UTC))
    pacer = Pacer(None, parse_window("02:00-06:00", "UTC"), clock=t.mono, now=t.wall, sleep=t.sleep)

    async def scenario() -> None:
        await pacer.wait_open()
        await pacer.spend(1000)
        t.now = datetime(2024, 4, 1, 1, 0, tzinfo=UTC)  # a month back, before the opening
        with pytest.raises(WindowClosed):
            await pacer.spend(1000)
        await pacer.wait_open()
        assert t.now == datetime(2024, 4, 1, 2, 0, tzinfo=UTC)  # waited for the window
        await pacer.spend(1000)
        t.now = datetime(2024, 4, 1, 6, 0, tzinfo=UTC)  # and it closes at that day's close
        with pytest.raises(WindowClosed):
            await pacer.spend(1000)
        t.now = datetime(2024, 3, 1, 3, 0, tzinfo=UTC)  # back again, into an open window
        assert pacer.closed()
        await pacer.wait_open()
        await pacer.spend(1000)  # on at once, until this day's close
        t.now = datetime(2024, 3, 1, 5, 59, tzinfo=UTC)
        assert not pacer.closed()

    asyncio.run(scenario())


def test_an_always_open_window_never_stops_a_running_fill() -> None:
    """00:00-24:00: open at every instant; a fill running through midnight goes on."""
    t = FakeTime(datetime(2024, 5, 1, 23, 59, tzinfo=UTC))
    window = parse_window("00:00-24:00", "Europe/Berlin")
    pacer = Pacer(None, window, clock=t.mono, now=t.wall, sleep=t.sleep)

    async def scenario() -> None:
        await pacer.wait_open()
        for _ in range(4 * 24):  # four days, a reading every hour
            t.now += timedelta(hours=1)
            await pacer.spend(1000)

    asyncio.run(scenario())
    assert t.slept == []

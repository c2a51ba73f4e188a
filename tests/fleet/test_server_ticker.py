"""The manager's background ticker under a wall clock stepped back: origin polls and
soft-state saves go on (intervals are timed on the monotonic clock, not the wall clock).
A loopback origin listing (tests/integration/catalogue_origin.py), a real SQLite store
and a real planner process."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from fleet import ticker
from fleet.config import FleetConfig, SiteConfig
from fleet.planning import Planning
from fleet.service import FleetService
from fleet.softstate import POPULARITY_META
from fleet.store import Store
from tests.integration.catalogue_origin import origin


class SteppingClock:
    def __init__(self) -> None:
        self.now = 1.78e9

    def __call__(self) -> float:
        return self.now


def test_a_wall_clock_stepped_back_stops_no_poll_and_no_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ticker, "TICK_S", 0.05)
    monkeypatch.setattr(ticker, "SOFT_STATE_SAVE_S", 0.3)
    clock = SteppingClock()
    with origin("film") as (url, handler):
        cfg = FleetConfig.model_validate(
            {
                "server": {"db": str(tmp_path / "fleet.sqlite")},
                "sites": [SiteConfig(name="home", prefixes=("192.168.1.0/24",)).model_dump()],
                "origin": {"url": url, "poll_s": 0.2},
            }
        )
        store = Store(cfg.server.db)
        svc = FleetService(cfg, store, clock)

        async def run() -> tuple[int, bool]:
            planning = Planning(svc)
            task = asyncio.create_task(ticker.ticker(svc, cfg, planning))
            try:
                for _ in range(100):  # the first poll, in at most 10 s
                    if handler.reads:
                        break
                    await asyncio.sleep(0.1)
                assert handler.reads, "the ticker never read the origin"
                clock.now -= 30 * 86_400.0  # NTP steps the wall clock back a month
                store.set_meta(POPULARITY_META, "")
                before = handler.reads
                await asyncio.sleep(1.5)  # several poll and save intervals
                return handler.reads - before, bool(store.meta(POPULARITY_META))
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                planning.close()

        polls, saved = asyncio.run(run())
        store.close()
    assert polls >= 2, "origin polls stopped when the wall clock went back"
    assert saved, "soft-state saves stopped when the wall clock went back"


def test_an_origin_url_httpx_cannot_use_is_an_unreadable_origin_not_a_failed_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx.InvalidURL is no httpx.HTTPError: it failed the whole tick, every tick, so no
    plan and no soft-state save ran while the origin's URL was one httpx refuses."""
    monkeypatch.setattr(ticker, "TICK_S", 0.05)
    monkeypatch.setattr(ticker, "SOFT_STATE_SAVE_S", 0.3)
    cfg = FleetConfig.model_validate(
        {
            "server": {"db": str(tmp_path / "fleet.sqlite")},
            # A well-formed URL whose name is no IDNA name: httpx refuses it per request.
            "origin": {"url": "http://ü..de:1", "poll_s": 0.1},
        }
    )
    store = Store(cfg.server.db)
    svc = FleetService(cfg, store)

    async def run() -> bool:
        planning = Planning(svc)
        task = asyncio.create_task(ticker.ticker(svc, cfg, planning))
        try:
            store.set_meta(POPULARITY_META, "")
            for _ in range(100):  # several polls, and a save in at most 10 s
                await asyncio.sleep(0.1)
                if store.meta(POPULARITY_META):
                    return True
            return False
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            planning.close()

    with caplog.at_level("WARNING", logger="fleet"):
        saved = asyncio.run(run())
    store.close()
    events = [r.getMessage() for r in caplog.records]
    assert "fleet.tick_failed" not in events
    assert "fleet.origin_unreadable" in events
    assert saved, "the soft-state save stopped behind a failing origin poll"

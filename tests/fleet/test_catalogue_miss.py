"""A /steer for a title the catalogue does not list reads the catalogue at once, once:
`miss_read` (pure) says join, read or refuse; `CatalogueReads` (fleet/ticker.py) shares one
read in flight among every miss and the ticker's polls, starts none sooner than
`miss_refresh_s` after the last, and waits for it at most `wait_s`. A real loopback origin
that counts its reads, and a real SQLite store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.catalogue import miss_read
from fleet.config import FleetConfig
from fleet.errors import UnknownNameError
from fleet.service import FleetService
from fleet.steering import UnlistedTitleError
from fleet.store import Store
from fleet.ticker import CatalogueReads
from tests.integration.catalogue_origin import CatalogueOrigin, origin


@pytest.mark.parametrize(
    ("now", "last", "in_flight", "want"),
    [
        (100.0, 50.0, True, "join"),
        (100.0, 99.9, True, "join"),  # joining costs the origin nothing
        (100.0, 95.0, False, "read"),  # exactly every_s since the last read
        (100.0, float("-inf"), False, "read"),  # never read
        (100.0, 95.1, False, "refuse"),
        (100.0, 100.0, False, "refuse"),
    ],
)
def test_miss_read(now: float, last: float, in_flight: bool, want: str) -> None:
    assert miss_read(now, last, in_flight, every_s=5.0) == want


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Fleet = tuple[FleetService, type[CatalogueOrigin], Clock, CatalogueReads]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with origin("film") as (url, handler):
        cfg = FleetConfig.model_validate(
            {"server": {"db": str(tmp_path / "fleet.sqlite")}, "origin": {"url": url}}
        )
        store = Store(cfg.server.db)
        svc = FleetService(cfg, store)
        clock = Clock()
        try:
            yield svc, handler, clock, CatalogueReads(svc, cfg.origin, clock)
        finally:
            store.close()


def _steers(svc: FleetService, title: str) -> bool:
    try:
        svc.steer("10.0.0.1", title, count=False)
    except UnknownNameError:
        return False
    return True


def test_a_new_title_is_found_by_one_read_shared_by_every_miss(
    fleet: Fleet,
) -> None:
    svc, handler, clock, reads = fleet

    async def run() -> None:
        try:
            assert await reads.poll() is None  # the ticker's first poll
            assert handler.reads == 1 and _steers(svc, "film")
            with pytest.raises(UnlistedTitleError):
                svc.steer("10.0.0.1", "new-film")
            handler.titles.append("new-film")  # published since that poll
            clock.now += 5.0
            handler.delay_s = 0.2  # the misses below all arrive while the read is out
            assert reads.may_help()
            answers = await asyncio.gather(*(reads.after_miss() for _ in range(200)))
            assert all(answers) and handler.reads == 2
            assert _steers(svc, "new-film")
            # Right after: more misses (made-up names) neither read nor wait.
            assert not reads.may_help()
            started = time.monotonic()
            answers = await asyncio.gather(*(reads.after_miss() for _ in range(200)))
            assert not any(answers) and handler.reads == 2
            assert time.monotonic() - started < 0.5
            clock.now += 4.9
            assert not await reads.after_miss() and handler.reads == 2
            clock.now += 0.1  # miss_refresh_s (5 s by default) since the last read
            assert await reads.after_miss() and handler.reads == 3
        finally:
            await reads.aclose()

    asyncio.run(run())


def test_a_miss_waits_for_a_slow_origin_at_most_wait_s(
    fleet: Fleet,
) -> None:
    svc, handler, clock, reads = fleet

    async def run() -> None:
        try:
            assert await reads.poll() is None
            handler.titles.append("new-film")
            handler.delay_s = 1.5
            clock.now += 60
            started = time.monotonic()
            assert not await reads.after_miss(wait_s=0.3)
            assert time.monotonic() - started < 1.0
            # The read goes on; the next miss joins it, and it lands.
            assert reads.may_help()
            assert await reads.after_miss(wait_s=5.0)
            assert handler.reads == 2 and _steers(svc, "new-film")
        finally:
            await reads.aclose()

    asyncio.run(run())


def test_an_unreadable_origin_is_a_miss_that_stays_a_404(tmp_path: Path) -> None:
    cfg = FleetConfig.model_validate(
        {"server": {"db": str(tmp_path / "f.sqlite")}, "origin": {"url": "http://127.0.0.1:9"}}
    )
    store = Store(cfg.server.db)
    reads = CatalogueReads(FleetService(cfg, store), cfg.origin)

    async def run() -> None:
        try:
            assert await reads.after_miss() is False
            assert not reads.may_help()  # and no second read for a while
        finally:
            await reads.aclose()

    asyncio.run(run())
    store.close()


def test_refresh_on_miss_false_never_reads(tmp_path: Path) -> None:
    cfg = FleetConfig.model_validate(
        {
            "server": {"db": str(tmp_path / "f.sqlite")},
            "origin": {"url": "http://127.0.0.1:9", "refresh_on_miss": False},
        }
    )
    store = Store(cfg.server.db)
    reads = CatalogueReads(FleetService(cfg, store), cfg.origin)
    assert not reads.may_help()
    assert asyncio.run(reads.after_miss()) is False and reads.reads == 0
    store.close()

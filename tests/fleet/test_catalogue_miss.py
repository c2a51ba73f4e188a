"""A /steer for a title the catalogue does not list reads the catalogue at once, once:
`miss_read` (pure) says join, read, start or refuse; `CatalogueReads` (fleet/ticker.py)
shares one read in flight among every miss and the ticker's polls, starts none sooner than
`miss_refresh_s` after the last, and waits for it at most `wait_s`, only with the origin
healthy, only for a read just started, at most 32 misses at once. An origin's answer it
cannot parse is a 404, never an exception. A real loopback origin that counts its reads,
and a real SQLite store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.catalogue import MISS_WAITERS_MAX, OriginTitle, miss_read
from fleet.config import FleetConfig
from fleet.errors import UnknownNameError
from fleet.service import FleetService
from fleet.steering import UnlistedTitleError
from fleet.store import Store
from fleet.ticker import MISS_WAIT_S, CatalogueReads, catalog_from_json
from tests.integration.catalogue_origin import CatalogueOrigin, origin


@pytest.mark.parametrize(
    ("now", "last", "in_flight", "ok", "waiting", "want"),
    [
        (100.0, 99.9, True, True, 0, "join"),  # joining costs the origin nothing
        (100.0, 99.81, True, True, 31, "join"),
        (100.0, 95.0, False, True, 0, "read"),  # exactly every_s since the last read
        (100.0, float("-inf"), False, True, 0, "read"),  # never read
        (100.0, 95.1, False, True, 0, "refuse"),
        (100.0, 100.0, False, True, 0, "refuse"),
        # A read out for longer is a slow or hung origin's: no miss waits on it.
        (100.0, 99.8, True, True, 0, "refuse"),
        (100.0, 50.0, True, True, 0, "refuse"),
        # 32 waiting already: the rest are 404 at once.
        (100.0, 99.9, True, True, 32, "refuse"),
        (100.0, 95.0, False, True, 32, "start"),
        # The origin's last read was slow (hung, or slower than a miss waits): a read may
        # start, so its recovery is seen, but no miss waits for it.
        (100.0, 99.9, True, False, 0, "refuse"),
        (100.0, 95.0, False, False, 0, "start"),
        (100.0, 95.1, False, False, 0, "refuse"),
    ],
)
def test_miss_read(
    now: float, last: float, in_flight: bool, ok: bool, waiting: int, want: str
) -> None:
    assert miss_read(now, last, in_flight, 5.0, origin_ok=ok, waiting=waiting) == want


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
            # 32 wait for the read (the one that started it too), the rest are 404 at once.
            assert sum(answers) == MISS_WAITERS_MAX and handler.reads == 2
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


def test_a_hung_origin_holds_no_miss_past_the_first(fleet: Fleet) -> None:
    """The origin stops answering: the miss that starts a read waits for it (at most
    wait_s); once it is out longer than a healthy origin takes, misses are 404 at once."""
    _, handler, clock, reads = fleet

    async def run() -> None:
        try:
            assert await reads.poll() is None
            handler.delay_s = 60.0  # hung (released when the origin stops)
            clock.now += 5.0
            assert not await reads.after_miss(wait_s=0.3) and handler.reads == 2
            clock.now += 0.2  # the read is out past MISS_JOIN_S
            assert not reads.may_help()
            started = time.monotonic()
            answers = await asyncio.gather(*(reads.after_miss() for _ in range(200)))
            assert not any(answers) and time.monotonic() - started < 0.2
            assert handler.reads == 2
        finally:
            await reads.aclose()

    asyncio.run(run())


def test_after_a_slow_read_a_miss_starts_the_next_but_waits_for_none(fleet: Fleet) -> None:
    """An origin whose last read took longer than a miss waits (hung, slow) holds no
    connection: a miss still starts a read, so its recovery is seen, and is answered at
    once."""
    svc, handler, clock, reads = fleet

    async def run() -> None:
        try:
            assert await reads.poll() is None
            handler.body, handler.delay_s = b"not json", 0.3
            clock.now += 5.0
            slow = asyncio.ensure_future(reads.poll())
            await asyncio.sleep(0.1)
            clock.now += MISS_WAIT_S  # the read is out that long on the manager's clock
            assert isinstance(await slow, ValueError)
            handler.body, handler.delay_s = None, 0.5
            handler.titles.append("new-film")
            clock.now += 5.0
            started = time.monotonic()
            assert reads.may_help() and not await reads.after_miss()
            assert time.monotonic() - started < 0.2 and reads.reads == 3
            assert await reads.poll() is None  # joins that read, which lands
            assert handler.reads == 3 and _steers(svc, "new-film")
        finally:
            await reads.aclose()

    asyncio.run(run())


def test_after_a_prompt_failure_a_miss_waits_for_the_next_read(fleet: Fleet) -> None:
    """A failure that came at once (an unparseable listing; a down origin refuses the same
    way) says nothing of a hang: the first miss after it waits for the read it starts, and
    a title published meanwhile is found by that miss, not only by a retry."""
    svc, handler, clock, reads = fleet

    async def run() -> None:
        try:
            assert await reads.poll() is None
            handler.body = b"not json"
            clock.now += 5.0
            assert isinstance(await reads.poll(), ValueError)
            handler.body = None
            handler.titles.append("new-film")
            clock.now += 5.0
            assert await reads.after_miss() and reads.reads == 3
            assert _steers(svc, "new-film")
        finally:
            await reads.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(
    "body",
    [
        b'{"titles": [{"id": "bad", "total_bytes": 1e400}]}',  # infinity: no int
        b'{"titles": [{"id": "bad", "total_bytes": 1' + b"0" * 400 + b"}]}",  # no int64
        b"[" * 100_000 + b"]" * 100_000,  # past the JSON parser's recursion limit
        b"\xff\xfe not json",
    ],
)
def test_a_catalogue_no_manager_can_parse_is_a_miss_not_an_exception(
    fleet: Fleet, body: bytes
) -> None:
    svc, handler, clock, reads = fleet

    async def run() -> None:
        try:
            assert await reads.poll() is None
            handler.body = body
            clock.now += 5.0
            assert await reads.after_miss() is False
            assert not reads.may_help()  # no second read for a while
            clock.now += 5.0
            assert isinstance(await reads.poll(), Exception)  # logged, not raised
            assert _steers(svc, "film")  # the last listing stands
        finally:
            await reads.aclose()

    asyncio.run(run())


def test_catalogue_entries_with_sizes_no_int64_holds_are_left_out() -> None:
    doc = {
        "titles": [
            {"id": "film", "digest": "d", "total_bytes": 5},
            {"id": "inf", "total_bytes": float("inf")},
            {"id": "nan", "total_bytes": float("nan")},
            {"id": "huge", "total_bytes": 10**400},
            {"id": "below", "total_bytes": -1},
            {"id": "max", "total_bytes": 2**63 - 1},
        ]
    }
    assert catalog_from_json(doc) == [
        OriginTitle("film", "d", 5),
        OriginTitle("max", "", 2**63 - 1),
    ]

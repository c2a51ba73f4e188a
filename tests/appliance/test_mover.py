from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytest

from appliance.config import DiskConfig, StorageConfig
from appliance.index import IndexReader
from appliance.mover import HitRecorder, MoverThread, RateBook, Tiering, hits_path
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title


def two_tier_config(tmp_path: Path, **storage: float) -> StorageConfig:
    disks = []
    for tier in ("ssd", "hdd"):
        path = tmp_path / tier
        path.mkdir()
        disks.append(DiskConfig(path=path, tier=tier))  # type: ignore[arg-type]
    return StorageConfig(disks=tuple(disks), index=tmp_path / "var" / "index.sqlite", **storage)  # type: ignore[arg-type]


def test_worker_counts_reach_the_rate_book(tmp_path: Path) -> None:
    index = tmp_path / "index.sqlite"
    now = [0.0]
    recorder = HitRecorder(index, flush_every_s=5.0, clock=lambda: now[0])
    book = RateBook(index, half_life_s=60.0, clock=lambda: 1000.0)
    for _ in range(30):
        recorder.hit("a")
    recorder.hit("b", 6)
    assert not recorder.due()
    now[0] = 5.0
    assert recorder.due()
    assert recorder.flush() == 36
    assert recorder.flush() == 0  # nothing pending any more
    second = HitRecorder(index)  # another worker process writes to the same table
    second.hit("a", 10)
    second.close()
    assert book.drain() == {"a": 40, "b": 6}
    assert book.drain() == {}  # drained: counted exactly once
    assert book.rate("a") == pytest.approx(40 * math.log(2) / 60.0)
    assert book.rate("nobody") == 0.0
    assert hits_path(index).exists()


def test_busy_hits_file_keeps_counts_for_later(tmp_path: Path) -> None:
    index = tmp_path / "index.sqlite"
    recorder = HitRecorder(index)
    book = RateBook(index, half_life_s=60.0)
    recorder.hit("a", 3)
    book._conn.execute("BEGIN IMMEDIATE")  # the main process holds the write lock
    assert recorder.flush() == 0
    book._conn.execute("COMMIT")
    assert recorder.flush() == 3
    assert book.drain() == {"a": 3}


def test_tick_promotes_hot_and_demotes_cold_titles(tmp_path: Path) -> None:
    config = two_tier_config(tmp_path, hot_rate=1.0, decay_half_life_s=60.0)
    store = Store(config)
    src = tmp_path / "src"
    store.load("hot", make_title(src, "hot"))
    store.load("cold", make_title(src, "cold"), rate=50.0)
    assert (store.title("hot").tier, store.title("cold").tier) == ("hdd", "ssd")
    clock = [10_000.0]
    book = RateBook(config.index, 60.0, clock=lambda: clock[0])
    recorder = HitRecorder(config.index)
    recorder.hit("hot", 200)  # 200 * ln2/60 ≈ 2.3 requests/s
    recorder.flush()
    slept: list[float] = []
    tiering = Tiering(store, book, clock=lambda: clock[0], sleep=slept.append, grace_s=0.0)
    moves = tiering.tick()
    assert [(m.title_id, m.to_tier) for m in moves] == [("hot", "ssd"), ("cold", "hdd")]
    assert (store.title("hot").tier, store.title("cold").tier) == ("ssd", "hdd")
    assert slept  # the throttle paced the copies on the injected clock
    reader = IndexReader(config.index)
    located = reader.locate("hot", "master.m3u8")
    assert located and located.tier == "ssd" and located.path.is_file()
    clock[0] += 600  # ten half-lives later the hot title has cooled down
    assert [(m.title_id, m.to_tier) for m in tiering.tick()] == [("hot", "hdd")]


def test_mover_thread_moves_in_the_background(tmp_path: Path) -> None:
    config = two_tier_config(tmp_path, hot_rate=0.001, decay_half_life_s=600.0)
    store = Store(config)
    store.load("t", make_title(tmp_path / "src", "t"))
    assert store.title("t").tier == "hdd"
    recorder = HitRecorder(config.index)
    recorder.hit("t", 5)
    recorder.flush()
    mover = MoverThread(config, interval_s=0.05)
    mover.start()
    try:
        deadline = time.monotonic() + 20
        while store.title("t").tier != "ssd" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        mover.stop()
    assert store.title("t").tier == "ssd" and not mover.is_alive()


def test_a_promotion_waiting_for_room_is_said_once_and_done_once_there_is_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disks = []
    for tier, size in (("ssd", 300_000), ("hdd", None)):
        (tmp_path / tier).mkdir()
        disks.append(DiskConfig(path=tmp_path / tier, tier=tier, max_bytes=size))  # type: ignore[arg-type]
    config = StorageConfig(disks=tuple(disks), index=tmp_path / "var" / "index.sqlite")
    store = Store(config, grace_s=0)
    src = tmp_path / "src"
    store.load("filler", make_title(src, "filler"), rate=50.0)  # ~180 kB of 240 kB (low)
    store.load("hot", make_title(src, "hot"))
    clock = [10_000.0]
    book = RateBook(config.index, 60.0, clock=lambda: clock[0])
    tiering = Tiering(store, book, clock=lambda: clock[0], sleep=lambda _: None, grace_s=0.0)
    recorder = HitRecorder(config.index)
    with caplog.at_level(logging.INFO, logger="appliance"):
        for _ in range(3):
            recorder.hit("hot", 200)
            recorder.hit("filler", 200)
            recorder.flush()
            assert tiering.tick() == []
    said = [r for r in caplog.records if "move_" in r.getMessage()]
    assert len(said) == 1 and "move_waits_for_room" in said[0].getMessage()
    assert said[0].levelno == logging.INFO
    store.remove("filler")
    recorder.hit("hot", 200)
    recorder.flush()
    assert [(m.title_id, m.to_tier) for m in tiering.tick()] == [("hot", "ssd")]
    store.close()


def test_a_rate_kept_while_the_clock_was_ahead_decays_once_it_is_set_right(
    tmp_path: Path,
) -> None:
    """A box booted with its clock a month fast counts a burst; NTP steps the clock back.
    The burst's rate must decay from then on (in the file too, across reads and restarts),
    not hold the fast tier for the month until the clock reaches its stamp."""
    index = tmp_path / "index.sqlite"
    clock = [1_800_000_000.0 + 30 * 86_400]
    book = RateBook(index, 600.0, clock=lambda: clock[0])
    recorder = HitRecorder(index)
    recorder.hit("burst", 5000)
    recorder.close()
    book.drain()
    peak = book.rate("burst")
    clock[0] = 1_800_000_000.0  # stepped back a month
    assert book.rate("burst") == pytest.approx(peak)  # not grown
    clock[0] += 600.0
    assert book.rate("burst") == pytest.approx(peak / 2)
    book.close()
    clock[0] += 600.0
    reopened = RateBook(index, 600.0, clock=lambda: clock[0])
    assert reopened.rate("burst") == pytest.approx(peak / 4)
    reopened.close()

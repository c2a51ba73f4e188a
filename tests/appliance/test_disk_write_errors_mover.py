"""A tier move whose copy fails (EIO on the destination disk) is not tried again every
round: its title backs off, a minute doubling up to an hour, and moves once the disk
writes again; the failed write is reported against the destination disk, and a disk the
health monitor holds back takes no moves at all. The copy fails through a seam on the
move's own copy function (tiermove.copy_verified), no FUSE needed."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance import tiermove
from appliance.config import ApplianceConfig, DiskConfig, StorageConfig
from appliance.mover import HitRecorder, MoverThread, RateBook, Tiering
from appliance.store import Store
from appliance.tiering import (
    MOVE_RETRY_MAX_S,
    MOVE_RETRY_S,
    Backoff,
    Move,
    backoff_after,
    due,
)
from tests.appliance.storage_fixtures import make_title


def test_backoff_doubles_from_a_minute_up_to_an_hour() -> None:
    waits, prev = [], None
    for _ in range(9):
        prev = backoff_after(prev, 100.0)
        waits.append(prev.until - 100.0)
    assert waits[:4] == [MOVE_RETRY_S, 2 * MOVE_RETRY_S, 4 * MOVE_RETRY_S, 8 * MOVE_RETRY_S]
    assert max(waits) == waits[-1] == MOVE_RETRY_MAX_S
    assert prev is not None and prev.failures == 9


def test_only_moves_past_their_backoff_are_due() -> None:
    moves = [Move("a", "ssd", 3.0), Move("b", "ssd", 2.0), Move("c", "hdd", 0.0)]
    backoffs = {"a": Backoff(1, 160.0), "c": Backoff(3, 100.0)}
    assert [m.title_id for m in due(moves, backoffs, 150.0)] == ["b", "c"]
    assert [m.title_id for m in due(moves, backoffs, 160.0)] == ["a", "b", "c"]


def _two_tiers(tmp_path: Path, **storage: Any) -> StorageConfig:
    disks = []
    for tier in ("ssd", "hdd"):
        (tmp_path / tier).mkdir()
        disks.append(DiskConfig(path=tmp_path / tier, tier=tier))  # type: ignore[arg-type]
    return StorageConfig(disks=tuple(disks), index=tmp_path / "var" / "index.sqlite", **storage)


class FailingCopy:
    """Copies onto `disk` fail with EIO (named, as a rename onto a failing disk does)."""

    def __init__(self, disk: Path, real: Callable[..., None]) -> None:
        self.disk, self.real, self.tries = disk.resolve(), real, 0
        self.failing = True

    def __call__(self, src: Path, dst: Path, *args: Any, **kwargs: Any) -> None:
        if self.failing and dst.is_relative_to(self.disk):
            self.tries += 1
            raise OSError(errno.EIO, "Input/output error", str(dst))
        self.real(src, dst, *args, **kwargs)


def _hot(config: StorageConfig, title: str, hits: int = 200) -> None:
    recorder = HitRecorder(config.index)
    recorder.hit(title, hits)
    recorder.close()


def test_a_failing_move_backs_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _two_tiers(tmp_path, hot_rate=0.01, decay_half_life_s=3600.0)
    store = Store(config, grace_s=0)
    store.load("hot", make_title(tmp_path / "src", "hot"))  # cold at load: on hdd
    copy = FailingCopy(tmp_path / "ssd", tiermove.copy_verified)
    monkeypatch.setattr(tiermove, "copy_verified", copy)
    clock = [10_000.0]
    book = RateBook(config.index, 3600.0, clock=lambda: clock[0])
    tiering = Tiering(store, book, clock=lambda: clock[0], sleep=lambda _: None, grace_s=0.0)
    _hot(config, "hot")
    try:
        assert tiering.tick() == [] and copy.tries == 1
        for _ in range(5):  # every round of the next minute: not tried again
            clock[0] += 10
            assert tiering.tick() == []
        assert copy.tries == 1
        clock[0] += MOVE_RETRY_S
        assert tiering.tick() == [] and copy.tries == 2
        clock[0] += MOVE_RETRY_S  # the second wait is twice as long
        assert tiering.tick() == [] and copy.tries == 2
        copy.failing = False
        clock[0] += MOVE_RETRY_S
        assert [(m.title_id, m.to_tier) for m in tiering.tick()] == [("hot", "ssd")]
        assert store.title("hot").tier == "ssd" and tiering.backoffs == {}
    finally:
        book.close()
        store.close()


def test_a_failed_move_is_reported_against_the_disk_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _two_tiers(tmp_path, hot_rate=0.01, decay_half_life_s=3600.0)
    store = Store(config, grace_s=0)
    store.load("hot", make_title(tmp_path / "src", "hot"))
    monkeypatch.setattr(
        tiermove, "copy_verified", FailingCopy(tmp_path / "ssd", tiermove.copy_verified)
    )
    book = RateBook(config.index, 3600.0)
    reported: list[tuple[str, int | None]] = []
    tiering = Tiering(
        store, book, sleep=lambda _: None, grace_s=0.0,
        on_write_error=lambda disk, exc: reported.append((disk, exc.errno)),
    )  # fmt: skip
    _hot(config, "hot")
    try:
        assert tiering.tick() == []
        assert reported == [(str((tmp_path / "ssd").resolve()), errno.EIO)]
    finally:
        book.close()
        store.close()


def _mover_rounds(config: StorageConfig, seconds: float, **kwargs: Any) -> None:
    mover = MoverThread(config, interval_s=0.05, **kwargs)
    mover.start()
    try:
        time.sleep(seconds)  # some 20 rounds
    finally:
        mover.stop()
    assert not mover.is_alive()


def _hot_title_with_failing_ssd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[ApplianceConfig, Store, FailingCopy]:
    """Title `t` on the hdd, hot enough to move, with every copy to the ssd failing."""
    config = _two_tiers(tmp_path, hot_rate=0.001, decay_half_life_s=600.0)
    store = Store(config)
    store.load("t", make_title(tmp_path / "src", "t"))
    copy = FailingCopy(tmp_path / "ssd", tiermove.copy_verified)
    monkeypatch.setattr(tiermove, "copy_verified", copy)
    _hot(config, "t", 5)
    return config, store, copy


def test_the_mover_thread_keeps_the_backoff_from_round_to_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, store, copy = _hot_title_with_failing_ssd(tmp_path, monkeypatch)
    reported: list[str] = []
    try:
        _mover_rounds(config, 1.0, on_write_error=lambda disk, _exc: reported.append(disk))
        assert copy.tries == 1 and store.title("t").tier == "hdd"
        assert reported == [str((tmp_path / "ssd").resolve())]
    finally:
        store.close()


def test_a_disk_held_back_by_the_health_monitor_takes_no_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, store, copy = _hot_title_with_failing_ssd(tmp_path, monkeypatch)
    ssd = str((tmp_path / "ssd").resolve())
    try:
        _mover_rounds(config, 0.5, not_writable=lambda: {ssd})
        assert copy.tries == 0 and store.title("t").tier == "hdd"
    finally:
        store.close()

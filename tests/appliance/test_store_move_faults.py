"""Tier moves when something goes wrong under them: the source disk taken out of service
mid-copy (the daemon's take-out, from another connection) and a damaged source file. An
intact title is never left unserved, and a damaged file is dropped, not served on and not
copied again every round."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appliance.config import DiskConfig, StorageConfig
from appliance.disks import StorageError
from appliance.fill.storage import mark_disk_missing
from appliance.index import INCOMPLETE, MISSING, OK, READY, IndexReader, title_files
from appliance.mover import HitRecorder, RateBook, Tiering
from appliance.store import Store
from edgeflix import titlefiles
from tests.appliance.storage_fixtures import make_title


def two_tiers(tmp_path: Path) -> StorageConfig:
    disks = []
    for tier in ("ssd", "hdd"):
        path = tmp_path / tier
        path.mkdir()
        disks.append(DiskConfig(path=path, tier=tier))  # type: ignore[arg-type]
    return StorageConfig(disks=tuple(disks), index=tmp_path / "var" / "index.sqlite")


def test_source_taken_out_mid_move_leaves_the_moved_title_served(tmp_path: Path) -> None:
    config = two_tiers(tmp_path)
    src = make_title(tmp_path / "src", "film")
    store = Store(config)
    store.load("film", src)
    hdd = store.disks_of("hdd")[0].id
    taken: list[list[str]] = []

    def take_out_once() -> bool:
        # The health thread's take-out runs on its own connection while the copy goes on.
        if not taken:
            daemon_side = Store(config, out_of_service=[hdd])
            try:
                taken.append(mark_disk_missing(daemon_side, hdd))
            finally:
                daemon_side.close()
        return False

    try:
        assert store.move("film", "ssd", should_stop=take_out_once, grace_s=0)
        assert taken == [["film"]]  # it did mark the title while the copy went on
        row = store.title("film")
        assert (row.state, row.tier) == (READY, "ssd")
        files = title_files(store.conn, "film")
        assert {(f.disk, f.state) for f in files} == {(store.disks_of("ssd")[0].id, OK)}
        model, _ = titlefiles.read(src)
        assert titlefiles.verify(store.disks_of("ssd")[0].titles_dir / "film", model) == []
        located = IndexReader(config.index).locate("film", "v1/seg0001.m4s")
        assert located is not None and located.tier == "ssd"
    finally:
        store.close()


def test_a_move_whose_source_rows_changed_mid_copy_aborts_cleanly(tmp_path: Path) -> None:
    """A row that no longer describes the file copied (here: a load replaced the title, from
    a process that does not honour the lock) is never flipped onto the copy."""
    config = two_tiers(tmp_path)
    store = Store(config)
    store.load("film", make_title(tmp_path / "src", "film"))

    def rewrite_once() -> bool:
        store.conn.execute("UPDATE files SET sha256 = 'other' WHERE path = 'master.m3u8'")
        return False

    try:
        with pytest.raises(StorageError, match="changed while it was copied"):
            store.move("film", "ssd", should_stop=rewrite_once, grace_s=0)
        assert store.title("film").tier == "hdd"
        assert {f.disk for f in title_files(store.conn, "film")} == {store.disks_of("hdd")[0].id}
        ssd = store.disks_of("ssd")[0].titles_dir
        assert not [p for p in ssd.rglob("*") if p.is_file()]  # the copies are gone
    finally:
        store.close()


def _hot(config: StorageConfig) -> RateBook:
    book = RateBook(config.index, 60.0)
    recorder = HitRecorder(config.index)
    recorder.hit("film", 1000)
    recorder.close()
    return book


def test_mover_drops_a_damaged_file_and_does_not_retry_the_move(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = two_tiers(tmp_path)
    store = Store(config)
    store.load("film", make_title(tmp_path / "src", "film"))
    damaged = next(f for f in title_files(store.conn, "film") if f.path == "v0/seg0000.m4s")
    with damaged.location.open("r+b") as fh:  # same size, other bytes: only a hash sees it
        fh.seek(100)
        fh.write(b"\xff\xff\xff\xff")
    book = _hot(config)
    tiering = Tiering(store, book, sleep=lambda _s: None, grace_s=0.0)
    try:
        with caplog.at_level(logging.INFO):
            assert tiering.tick() == []
            assert tiering.tick() == []  # an incomplete title is not moved again
        failed = [r for r in caplog.records if "title.move_failed" in r.getMessage()]
        assert len(failed) == 1, [r.getMessage() for r in failed]
        row = store.title("film")
        assert (row.state, row.tier) == (INCOMPLETE, "hdd")  # no longer served
        states = {f.path: f.state for f in title_files(store.conn, "film")}
        assert states.pop(damaged.path) == MISSING and set(states.values()) == {OK}
        assert not damaged.location.exists()  # dropped like verify and the scrub drop it
        assert IndexReader(config.index).locate("film", damaged.path) is None
        ssd = store.disks_of("ssd")[0].titles_dir
        assert not [p for p in ssd.rglob("*") if p.is_file()]  # no copy left half-way
    finally:
        book.close()
        store.close()

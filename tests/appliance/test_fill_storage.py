"""The fill's storage adapter on a real Store: held titles, a disk taken out of service
(its titles stop serving, the fill fetches them again), and a returned disk re-verified."""

from __future__ import annotations

from pathlib import Path

from appliance import config as appliance_config
from appliance.fill.storage import StoreStorage, mark_disk_missing, restore_disk
from appliance.index import IndexReader
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title, storage_toml

SIZES = tuple(20_000 + i * 1000 for i in range(16))


def _setup(tmp_path: Path) -> tuple[Store, StoreStorage, Path]:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    adapter = StoreStorage(cfg.storage)
    folder = make_title(tmp_path / "src", "bunny", SIZES)
    adapter.load("bunny", folder)
    return adapter.store, adapter, folder


def _disk_with_files(store: Store) -> str:
    return next(
        d.id for d in store.disks if any(p.is_file() for p in (d.titles_dir / "bunny").rglob("*"))
    )


def test_held_and_disk_out_then_back(tmp_path: Path) -> None:
    store, adapter, _ = _setup(tmp_path)
    try:
        digest = adapter.held()["bunny"]
        disk = _disk_with_files(store)
        assert mark_disk_missing(store, disk) == ["bunny"]
        assert adapter.held() == {}  # incomplete: the fill will fetch it again
        reader = IndexReader(store.config.index)
        try:
            assert reader.locate("bunny", "master.m3u8") is None  # not served: 404, fail over
        finally:
            reader.close()
        ready, still_missing = restore_disk(store, disk)
        assert ready == ["bunny"] and still_missing == []
        assert adapter.held() == {"bunny": digest}
    finally:
        adapter.close()


def test_returned_disk_with_a_damaged_file_stays_out(tmp_path: Path) -> None:
    store, adapter, folder = _setup(tmp_path)
    try:
        disk = _disk_with_files(store)
        mark_disk_missing(store, disk)
        victim = next(p for p in (Path(disk) / "titles" / "bunny").rglob("*.m4s"))
        victim.write_bytes(b"x" * victim.stat().st_size)
        ready, still_missing = restore_disk(store, disk)
        assert ready == [] and len(still_missing) == 1
        assert adapter.held() == {}
        adapter.load("bunny", folder)  # what the next fill does: a full reload
        assert "bunny" in adapter.held()
    finally:
        adapter.close()

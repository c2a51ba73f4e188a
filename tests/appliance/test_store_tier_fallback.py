"""A title goes to the tier its request rate asks for, unless that tier cannot take it and
another can (Store.choose_tier): a hot title waits on the slow tier for room or for a
writable fast disk rather than being refused (the mover promotes it later); a cold one
takes the fast tier when the slow one is full. Refused only when no tier can hold it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance.config import DiskConfig, StorageConfig
from appliance.disks import CapacityError
from appliance.fill.storage import StoreStorage
from appliance.index import title_files
from appliance.store import Store
from edgeflix import titlefiles
from tests.appliance.storage_fixtures import make_title

SIZES = [40_000 + i * 1000 for i in range(10)]  # ~0.5 MB a title
HOT = 5.0


def make_store(tmp_path: Path, ssd_bytes: int, hdd_bytes: int) -> Store:
    disks = []
    for tier, size in (("ssd", ssd_bytes), ("hdd", hdd_bytes)):
        path = tmp_path / tier
        path.mkdir(parents=True, exist_ok=True)
        disks.append(DiskConfig(path=path, tier=tier, max_bytes=size))
    config = StorageConfig(disks=tuple(disks), index=tmp_path / "var" / "index.sqlite")
    return Store(config, grace_s=0)


def title(tmp_path: Path, title_id: str, seed: int = 0) -> Path:
    return make_title(tmp_path / f"src{seed}", title_id, sizes=SIZES, seed=seed)


def test_a_hot_title_without_room_on_the_fast_tier_goes_to_the_slow_one(tmp_path: Path) -> None:
    store = make_store(tmp_path, ssd_bytes=300_000, hdd_bytes=10_000_000)
    try:
        assert store.load("film", title(tmp_path, "film"), rate=HOT).tier == "hdd"
        # An update of it too (the case that could never get its new version in).
        row = store.load("film", title(tmp_path, "film", seed=1), rate=HOT, replace=True)
        assert row.tier == "hdd"
        # With room on the fast tier, a hot title goes there as before.
        roomy = make_store(tmp_path / "roomy", ssd_bytes=10_000_000, hdd_bytes=10_000_000)
        assert roomy.load("film", title(tmp_path, "film"), rate=HOT).tier == "ssd"
        roomy.close()
    finally:
        store.close()


def test_a_cold_title_takes_the_fast_tier_when_the_slow_one_is_full(tmp_path: Path) -> None:
    store = make_store(tmp_path, ssd_bytes=10_000_000, hdd_bytes=300_000)
    try:
        assert store.load("film", title(tmp_path, "film"), rate=0.0).tier == "ssd"
    finally:
        store.close()


def test_refused_only_when_no_tier_can_hold_it(tmp_path: Path) -> None:
    store = make_store(tmp_path, ssd_bytes=300_000, hdd_bytes=300_000)
    try:
        with pytest.raises(CapacityError, match="does not fit on the ssd tier"):
            store.load("film", title(tmp_path, "film"), rate=HOT)
        assert store.listing() == []
    finally:
        store.close()


def test_a_read_only_fast_disk_sends_a_hot_title_to_the_slow_tier(tmp_path: Path) -> None:
    store = make_store(tmp_path, ssd_bytes=10_000_000, hdd_bytes=10_000_000)
    try:
        store.disks = tuple(
            dataclasses.replace(d, writable=False) if d.tier == "ssd" else d for d in store.disks
        )
        assert store.load("film", title(tmp_path, "film"), rate=HOT).tier == "hdd"
        placed = store.placer("other", HOT)
        assert {placed(f"v0/seg{i:04d}.m4s") for i in range(10)} <= {
            d.id for d in store.disks if d.tier == "hdd"
        }
    finally:
        store.close()


def test_the_fills_room_check_names_the_disks_of_the_tier_with_room(tmp_path: Path) -> None:
    store = make_store(tmp_path, ssd_bytes=300_000, hdd_bytes=10_000_000)
    try:
        sizes = {f"v0/seg{i:04d}.m4s": size for i, size in enumerate(SIZES)}
        before = store.placer("film", HOT)  # sizes unknown: the tier the rate asks for
        after = store.check_room("film", sizes, HOT)
        ssd, hdd = ({d.id for d in store.disks if d.tier == t} for t in ("ssd", "hdd"))
        assert {before(p) for p in sizes} <= ssd
        assert {after(p) for p in sizes} <= hdd
    finally:
        store.close()


def test_the_fill_stages_a_hot_title_on_the_tier_that_will_hold_it(tmp_path: Path) -> None:
    """Staging is laid out before files.json is known (the tier the rate asks for); once
    the room check knows the sizes, staging follows the tier with room, so the download
    does not fill the fast disk and the hand-off renames the files in."""
    config = tmp_path / "appliance.toml"
    ssd, hdd = tmp_path / "ssd", tmp_path / "hdd"
    ssd.mkdir()
    hdd.mkdir()
    config.write_text(
        f'[storage]\nindex = "{tmp_path / "var" / "index.sqlite"}"\nhot_rate = 0\ndisks = [\n'
        f'  {{ path = "{ssd}", tier = "ssd", max_bytes = 300000 }},\n'
        f'  {{ path = "{hdd}", tier = "hdd", max_bytes = 10000000 }},\n]\n'
    )
    adapter = StoreStorage(appliance_config.load(config).storage)
    try:
        source = title(tmp_path, "film")
        model = titlefiles.read(source)[0]
        layout = adapter.staging("film", tmp_path / "staging" / "film")
        assert all(ssd in layout.file(e.path).parents for e in model.files)  # rate: hot
        adapter.check_room("film", model, layout)
        layout.folder.mkdir(parents=True)
        shutil.copy(source / titlefiles.FILES_JSON, layout.folder / titlefiles.FILES_JSON)
        inodes = {}
        for entry in model.files:
            staged = layout.file(entry.path)
            assert hdd in staged.parents
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / entry.path, staged)
            inodes[entry.path] = staged.stat().st_ino
        adapter.load("film", layout)
        (row,) = adapter.store.listing()
        assert row.tier == "hdd"
        stored = {f.path: f.location for f in title_files(adapter.store.conn, "film")}
        assert {p: stored[p].stat().st_ino for p in inodes} == inodes  # renamed, not copied
    finally:
        adapter.close()

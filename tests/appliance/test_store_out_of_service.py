"""A Store opened with a disk out of service (the daemon's DiskWatch took it out): the dead
disk is never touched, and a re-load after the loss places every file on the disks left."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance.disks import DiskError
from appliance.fill.storage import mark_disk_missing
from appliance.index import READY, title_files
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title, storage_toml

SIZES = tuple(20_000 + i * 1000 for i in range(24))


def test_reload_after_a_disk_loss_lands_on_the_remaining_disk(tmp_path: Path) -> None:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    folder = make_title(tmp_path / "src", "bunny", SIZES)
    store = Store(cfg.storage)
    store.load("bunny", folder)
    disks = {f.disk for f in title_files(store.conn, "bunny")}
    assert len(disks) == 2  # spread over both disks of the tier
    dead = sorted(disks)[0]
    mark_disk_missing(store, dead)
    store.close()
    shutil.rmtree(dead)  # the disk is gone: opening it normally fails

    with pytest.raises(DiskError):
        Store(cfg.storage)
    store = Store(cfg.storage, out_of_service=[dead])
    try:
        assert store.out_of_service == (dead,)
        assert [d.id for d in store.disks] != [] and dead not in {d.id for d in store.disks}
        row = store.load("bunny", folder, replace=True)
        assert row.state == READY
        files = title_files(store.conn, "bunny")
        assert {f.disk for f in files} == {d.id for d in store.disks}
        assert all(f.location.is_file() for f in files)
    finally:
        store.close()


def test_a_tier_with_every_disk_out_refuses_loads(tmp_path: Path) -> None:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd",)))
    folder = make_title(tmp_path / "src", "bunny", SIZES[:3])
    only = str(cfg.storage.disks[0].path.resolve())
    store = Store(cfg.storage, out_of_service=[only])
    try:
        with pytest.raises(DiskError, match="in service"):
            store.load("bunny", folder)
    finally:
        store.close()

"""A Store opened with a disk out of service (the daemon's DiskWatch took it out): the dead
disk is never touched, and a re-load after the loss places every file on the disks left."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance.disks import DiskError
from appliance.fill.storage import mark_disk_missing
from appliance.index import READY, REMOVING, get_title, title_files
from appliance.repair import reconcile
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


def test_removing_a_title_with_files_on_a_disk_out_finishes_when_it_is_back(
    tmp_path: Path,
) -> None:
    """`rm` cannot delete files on a dead or unmounted disk: it must not forget them there
    (the disk would never free, and a whole title there would be adopted back). The title
    stays, removing and with those files' rows only, until a reconcile sees the disk again."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    folder = make_title(tmp_path / "src", "bunny", SIZES)
    store = Store(cfg.storage)
    store.load("bunny", folder)
    files = title_files(store.conn, "bunny")
    dead = sorted({f.disk for f in files})[0]
    left = sum(1 for f in files if f.disk == dead)
    mark_disk_missing(store, dead)
    store.close()

    store = Store(cfg.storage, out_of_service=[dead])
    try:
        assert store.remove("bunny") == {dead: left}
        assert store.title("bunny").state == REMOVING
        rows = title_files(store.conn, "bunny")
        assert {f.disk for f in rows} == {dead} and len(rows) == left
        for disk in store.disks:  # the disk in service is cleared at once
            assert not (disk.titles_dir / "bunny").exists()
        assert (Path(dead) / "titles" / "bunny").is_dir()
        # A reconcile while the disk is still out changes nothing and reports nothing.
        assert reconcile(store).findings == []
        assert store.title("bunny").state == REMOVING
        assert store.remove("bunny") == {dead: left}  # asked again: said again
    finally:
        store.close()

    store = Store(cfg.storage)  # the disk is back
    try:
        report = reconcile(store)
        assert [(f.title, f.problem) for f in report.findings] == [
            ("bunny", "removed an interrupted removal")
        ]
        assert get_title(store.conn, "bunny") is None
        assert title_files(store.conn, "bunny") == []
        assert not (Path(dead) / "titles" / "bunny").exists()
    finally:
        store.close()


def test_a_removal_with_every_disk_in_service_leaves_nothing(tmp_path: Path) -> None:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    folder = make_title(tmp_path / "src", "bunny", SIZES[:6])
    store = Store(cfg.storage)
    try:
        store.load("bunny", folder)
        assert store.remove("bunny") == {}
        assert get_title(store.conn, "bunny") is None
        assert all(not (d.titles_dir / "bunny").exists() for d in store.disks)
    finally:
        store.close()


def test_a_disk_whose_titles_folder_vanished_is_left_alone(tmp_path: Path) -> None:
    """A disk unmounted under a running daemon leaves its bare mount point: every background
    round opens a store before the health monitor has noticed. That store must not make a
    titles folder there (the monitor would then find the disk "back", never take it out,
    and a reconcile would drop its files as lost) nor check what it cannot see."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    folder = make_title(tmp_path / "src", "bunny", SIZES)
    store = Store(cfg.storage)
    store.load("bunny", folder)
    gone = sorted({f.disk for f in title_files(store.conn, "bunny")})[0]
    store.close()
    titles = Path(gone) / "titles"
    titles.rename(Path(gone) / "elsewhere")  # unmounted: the mount point stays, empty

    store = Store(cfg.storage)  # told nothing: the monitor has not seen it yet
    try:
        assert store.out_of_service == (gone,) and gone not in {d.id for d in store.disks}
        assert not titles.exists()
        reconcile(store)
        assert all(f.state == "ok" for f in title_files(store.conn, "bunny"))
    finally:
        store.close()
    (Path(gone) / "elsewhere").rename(titles)  # mounted again: served as before
    store = Store(cfg.storage)
    try:
        assert store.out_of_service == () and get_title(store.conn, "bunny").state == READY  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_title_removed_while_a_disk_is_out_can_be_loaded_again(tmp_path: Path) -> None:
    """`rm` keeps the title's row (removing) for the files on the disk that is out; loading
    it again is not "already loaded": the new version replaces what waits, and the old
    files on that disk are swept once it is back."""
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "ssd")))
    folder = make_title(tmp_path / "src", "bunny", SIZES)
    store = Store(cfg.storage)
    store.load("bunny", folder)
    dead = sorted({f.disk for f in title_files(store.conn, "bunny")})[0]
    mark_disk_missing(store, dead)
    store.close()

    store = Store(cfg.storage, out_of_service=[dead])
    try:
        store.remove("bunny")
        assert store.title("bunny").state == REMOVING
        row = store.load("bunny", folder)
        assert row.state == READY
        assert {f.disk for f in title_files(store.conn, "bunny")} == {d.id for d in store.disks}
    finally:
        store.close()

    # The disk is back, a while later (a folder retired in the last minute is left to the
    # process that retired it): the old version's files go from it.
    old = time.time() - 120
    os.utime(Path(dead) / "titles" / "bunny", (old, old))
    store = Store(cfg.storage)
    try:
        reconcile(store)
        assert get_title(store.conn, "bunny").state == READY  # type: ignore[union-attr]
        files = title_files(store.conn, "bunny")
        assert all(f.location.is_file() for f in files)
        kept = {str(f.location) for f in files}
        assert all(str(p) in kept for p in (Path(dead) / "titles").rglob("*") if p.is_file())
    finally:
        store.close()

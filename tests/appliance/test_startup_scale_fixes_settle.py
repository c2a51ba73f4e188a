"""repair.settle, what the daemon does before it serves: what the index alone says must change
(an interrupted load or removal, files on a disk gone from the config), and nothing that needs
a look at every stored file, which the background start-up check's reconcile does."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.config import DiskConfig, StorageConfig
from appliance.index import INCOMPLETE, MISSING, READY, get_title, title_files, transaction
from appliance.repair import reconcile, settle
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title

SPREAD = [9_000] * 16  # enough files that rendezvous hashing puts some on every disk


def _config(tmp_path: Path, *names: str) -> StorageConfig:
    for name in names:
        (tmp_path / name).mkdir(exist_ok=True)
    return StorageConfig(
        disks=tuple(DiskConfig(path=tmp_path / name, tier="ssd") for name in names),
        index=tmp_path / "var" / "index.sqlite",
    )


def test_settle_finishes_interrupted_work_and_leaves_the_walk_to_reconcile(
    tmp_path: Path,
) -> None:
    store = Store(_config(tmp_path, "d0"))
    try:
        for title_id in ("cut", "half", "whole"):
            store.load(title_id, make_title(tmp_path / "src", title_id))
        half = [f.location for f in title_files(store.conn, "half")]
        with transaction(store.conn) as conn:  # a load killed before it was ready
            conn.execute("UPDATE titles SET state = 'loading' WHERE id = 'half'")
        cut = title_files(store.conn, "cut")[0]
        os.truncate(cut.location, 10)
        stray = store.disks[0].titles_dir / "whole" / "left-behind.m4s"
        stray.write_bytes(b"x")

        assert store.unsettled() == {"half"}  # found in the index, not on the disks
        report = settle(store)
        assert [str(f) for f in report.findings] == ["half: removed an interrupted load"]
        assert get_title(store.conn, "half") is None and not any(p.exists() for p in half)
        # A file cut short and a stray are the walk's: the server 404s the one meanwhile.
        assert get_title(store.conn, "cut").state == READY  # type: ignore[union-attr]
        assert stray.exists()
        assert settle(store).findings == [] and store.unsettled() == set()

        found = {str(f).split(";")[0] for f in reconcile(store).findings}
        assert found == {
            f"cut/{cut.path}: size 10 != {cut.size} in the index",
            f"whole/left-behind.m4s: removed file not in the index on {store.disks[0].id}",
        }
        assert get_title(store.conn, "cut").state == INCOMPLETE  # type: ignore[union-attr]
    finally:
        store.close()


def test_settle_stops_serving_files_of_a_disk_gone_from_the_config(tmp_path: Path) -> None:
    store = Store(_config(tmp_path, "d0", "d1"))
    try:
        store.load("movie", make_title(tmp_path / "src", "movie", sizes=SPREAD))
        store.load("other", make_title(tmp_path / "src", "other"))
    finally:
        store.close()
    d1 = str((tmp_path / "d1").resolve())
    store = Store(_config(tmp_path, "d0"))
    try:
        held = {f.title for t in ("movie", "other") for f in title_files(store.conn, t)
                if f.disk == d1}  # fmt: skip
        assert "movie" in held
        assert store.unsettled() == held
        report = settle(store)
        assert [(f.disk, f.damage) for f in report.findings] == [(d1, True)]
        assert "is not in [storage] disks" in report.findings[0].problem
        for title_id in held:
            assert get_title(store.conn, title_id).state == INCOMPLETE  # type: ignore[union-attr]
            on_d1 = [f for f in title_files(store.conn, title_id) if f.disk == d1]
            assert on_d1 and all(f.state == MISSING and f.location.is_file() for f in on_d1)
        assert reconcile(store).findings == []  # said once, before serving
    finally:
        store.close()


def test_settle_adopts_what_a_lost_index_held_and_leaves_partial_folders(tmp_path: Path) -> None:
    """A new index (the old one damaged and moved aside): the box must serve what its disks
    hold from its first request, so adoption is settle's; a folder that is no whole title
    waits for the walk's sweep."""
    config = _config(tmp_path, "d0")
    store = Store(config)
    try:
        store.load("movie", make_title(tmp_path / "src", "movie"))
    finally:
        store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{config.index}{suffix}").unlink(missing_ok=True)
    partial = tmp_path / "d0" / "titles" / "partial" / "v0" / "seg.m4s"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x")
    store = Store(config)
    try:
        report = settle(store)
        assert [str(f) for f in report.findings] == [
            "movie: adopted from its files on the ssd tier (not in the index)"
        ]
        assert get_title(store.conn, "movie").state == READY  # type: ignore[union-attr]
        assert partial.exists()
        assert settle(store).findings == []
        found = [str(f) for f in reconcile(store).findings]
        assert found == ["partial: removed 1 stray files of a title not in the index"]
    finally:
        store.close()

"""The disks of [storage] changed between two starts: a disk's tier relabelled (or two disks'
tiers swapped), a disk taken out of the config. Real Stores on real folders, reopened with
the new config as the daemon's next start opens them."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.cli_inspect import _files_cell
from appliance.config import DiskConfig, StorageConfig
from appliance.fill.storage import restore_disk
from appliance.index import INCOMPLETE, MISSING, OK, READY, IndexReader, get_title, title_files
from appliance.repair import reconcile, verify
from appliance.store import Store
from appliance.tiering import plan_moves
from tests.appliance.storage_fixtures import make_title

SPREAD = [9_000] * 16  # enough files that rendezvous hashing puts some on every disk


def config(tmp_path: Path, disks: Sequence[tuple[str, str]]) -> StorageConfig:
    """Disk folders `tmp_path/NAME` with their tiers, over one index."""
    for name, _ in disks:
        (tmp_path / name).mkdir(exist_ok=True)
    return StorageConfig(
        disks=tuple(DiskConfig(path=tmp_path / name, tier=tier) for name, tier in disks),  # type: ignore[arg-type]
        index=tmp_path / "var" / "index.sqlite",
    )


def loaded(tmp_path: Path, disks: Sequence[tuple[str, str]], *titles: str) -> None:
    store = Store(config(tmp_path, disks))
    try:
        for title_id in titles:
            store.load(title_id, make_title(tmp_path / "src", title_id, sizes=SPREAD))
    finally:
        store.close()


def stored(tmp_path: Path, name: str, title_id: str) -> dict[str, bytes]:
    top = tmp_path / name / "titles" / title_id
    return {p.relative_to(top).as_posix(): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def sources(tmp_path: Path, title_id: str) -> dict[str, bytes]:
    top = tmp_path / "src" / title_id
    return {p.relative_to(top).as_posix(): p.read_bytes() for p in top.rglob("*") if p.is_file()}


# -- a disk's tier relabelled ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "to_tier"),
    [
        # ssd → hdd, a new ssd beside it: the cold title "moves" to hdd, i.e. to where it is.
        ([("d0", "ssd")], [("d0", "hdd"), ("d1", "ssd")], "hdd"),
        # hdd → ssd, a new hdd beside it: the hot title "moves" to ssd.
        ([("d0", "hdd")], [("d0", "ssd"), ("d1", "hdd")], "ssd"),
        # The two disks' tiers swapped: a title on the old hdd "moves" to ssd.
        ([("d0", "ssd"), ("d1", "hdd")], [("d0", "hdd"), ("d1", "ssd")], "ssd"),
    ],
)
def test_a_move_to_where_the_files_already_are_keeps_them(
    tmp_path: Path,
    before: list[tuple[str, str]],
    after: list[tuple[str, str]],
    to_tier: str,
) -> None:
    # The move used to copy each file onto itself, flip the rows, then drop the "old copies":
    # the only ones. Every title on the disk was lost while the index said ready.
    loaded(tmp_path, before, "movie", "other")
    store = Store(config(tmp_path, after))
    try:
        holder = {f.disk for f in title_files(store.conn, "movie")}
        assert len(holder) == 1
        inodes = {f.path: f.location.stat().st_ino for f in title_files(store.conn, "movie")}
        assert store.move("movie", to_tier, grace_s=0, sleep=lambda _: None)  # type: ignore[arg-type]
        row = store.title("movie")
        assert (row.state, row.tier) == (READY, to_tier)
        files = title_files(store.conn, "movie")
        assert {f.disk for f in files} == holder
        assert {f.path: f.location.stat().st_ino for f in files} == inodes  # not rewritten
        name = Path(holder.pop()).name
        assert stored(tmp_path, name, "movie") == sources(tmp_path, "movie")
        assert verify(store).findings == []
    finally:
        store.close()


def test_a_move_partly_onto_a_relabelled_disk_copies_only_what_changes_disk(
    tmp_path: Path,
) -> None:
    # Two ssd disks, one relabelled hdd beside a new hdd: of the files the move puts on the
    # relabelled disk, those already there stay; the rest are copied and their old copies go.
    loaded(tmp_path, [("d0", "ssd"), ("d1", "ssd")], "movie")
    store = Store(config(tmp_path, [("d0", "ssd"), ("d1", "hdd"), ("d2", "hdd")]))
    try:
        d1 = str((tmp_path / "d1").resolve())
        before = {f.path: f for f in title_files(store.conn, "movie")}
        store.conn.execute("UPDATE titles SET tier = 'ssd'")  # as loaded
        assert store.move("movie", "hdd", grace_s=0, sleep=lambda _: None)  # type: ignore[arg-type]
        after = {f.path: f for f in title_files(store.conn, "movie")}
        stayed = [p for p in after if before[p].disk == d1 and after[p].disk == d1]
        assert stayed, "no file of the title was placed where it was: the case is not covered"
        assert all(after[p].location.stat().st_ino == before[p].location.stat().st_ino
                   for p in stayed)  # fmt: skip
        assert not (tmp_path / "d0" / "titles" / "movie").exists()  # the old copies went
        assert {p: after[p].location.read_bytes() for p in after} == sources(tmp_path, "movie")
        assert store.title("movie").tier == "hdd" and verify(store).findings == []
    finally:
        store.close()


def test_reconcile_gives_titles_the_tier_of_the_disks_holding_them(tmp_path: Path) -> None:
    loaded(tmp_path, [("d0", "ssd"), ("d1", "hdd")], "cold", "hot")
    store = Store(config(tmp_path, [("d0", "ssd"), ("d1", "hdd")]))
    try:
        assert store.move("hot", "ssd", grace_s=0, sleep=lambda _: None)
        assert {t.id: t.tier for t in store.listing()} == {"cold": "hdd", "hot": "ssd"}
    finally:
        store.close()

    store = Store(config(tmp_path, [("d0", "hdd"), ("d1", "ssd")]))  # the tiers swapped
    try:
        report = reconcile(store)
        assert sorted(str(f) for f in report.findings) == [
            "1 title (cold) relabelled from the hdd tier to ssd: the disks holding their "
            "files are configured ssd now (nothing moved)",
            "1 title (hot) relabelled from the ssd tier to hdd: the disks holding their "
            "files are configured hdd now (nothing moved)",
        ]
        placed = {t.id: t.tier for t in store.listing()}
        assert placed == {"cold": "ssd", "hot": "hdd"}
        # The mover asks for no move that rates would not ask for anyway.
        rates = {"cold": 0.0, "hot": 0.0}
        assert [m.title_id for m in plan_moves(placed, rates, 1.0, store.tiers)] == ["cold"]
        assert reconcile(store).findings == []  # said once
        assert verify(store).findings == []
    finally:
        store.close()


# -- a disk taken out of the config ------------------------------------------------------------


def test_files_on_a_disk_no_longer_configured_are_not_served_until_it_is_back(
    tmp_path: Path,
) -> None:
    both = [("d0", "ssd"), ("d1", "ssd")]
    loaded(tmp_path, both, "movie", "other")
    d1 = str((tmp_path / "d1").resolve())
    store = Store(config(tmp_path, [("d0", "ssd")]))
    try:
        on_d1 = [f for f in title_files(store.conn, "movie") if f.disk == d1]
        on_d0 = [f for f in title_files(store.conn, "movie") if f.disk != d1]
        assert on_d1 and on_d0
        listing = {t.id: t for t in store.listing()}
        assert listing["movie"].unconfigured == len(on_d1)
        # `appliance ls` says so before a reconcile has marked them missing.
        assert f"{len(on_d1)} on disks not in [storage] disks" in str(_files_cell(listing["movie"]))
        assert d1 not in listing["movie"].disks
        report = reconcile(store)
        held = sum(1 for t in ("movie", "other") for f in title_files(store.conn, t)
                   if f.disk == d1)  # fmt: skip
        assert [(f.title, f.disk, f.damage) for f in report.findings] == [("", d1, True)]
        assert str(report.findings[0]).startswith(
            f"disk {d1} is not in [storage] disks: its {held} files of 2 titles (movie, other) "
            "are no longer served"
        )
        reader = IndexReader(store.index_path)
        assert reader.locate("movie", on_d1[0].path) is None
        assert reader.locate("movie", on_d0[0].path) is not None  # the rest still serves
        reader.close()
        assert {t.id: t.state for t in store.listing()} == {"movie": INCOMPLETE,
                                                            "other": INCOMPLETE}  # fmt: skip
        assert all(f.location.is_file() for f in on_d1)  # left where they are
        assert reconcile(store).findings == []  # said once
    finally:
        store.close()

    # Back in the config: the daemon's start re-verifies them (startup.StartupCheck).
    store = Store(config(tmp_path, both))
    try:
        assert reconcile(store).findings == []  # not swept: they wait for the re-verification
        ready, bad = restore_disk(store, d1)
        assert sorted(ready) == ["movie", "other"] and bad == []
        assert all(f.state == OK for f in title_files(store.conn, "movie"))
        assert get_title(store.conn, "movie").state == READY  # type: ignore[union-attr]
        assert verify(store).findings == []
    finally:
        store.close()


def test_a_renamed_disk_is_still_followed_not_set_aside(tmp_path: Path) -> None:
    loaded(tmp_path, [("d0", "ssd")], "movie")
    (tmp_path / "d0").rename(tmp_path / "renamed")
    store = Store(config(tmp_path, [("renamed", "ssd")]))
    try:
        report = reconcile(store)
        assert [f.problem.split(" found on ")[0] for f in report.findings] == [
            f"18 files of {(tmp_path / 'd0').resolve()}"
        ]
        assert store.title("movie").state == READY
    finally:
        store.close()


# -- what is said, and how often ---------------------------------------------------------------


def test_a_title_with_every_file_lost_is_not_said_to_serve_the_others(tmp_path: Path) -> None:
    loaded(tmp_path, [("d0", "ssd")], "movie", "other")
    store = Store(config(tmp_path, [("d0", "ssd")]))
    try:
        for f in title_files(store.conn, "movie"):
            f.location.unlink()
        os.truncate(title_files(store.conn, "other")[0].location, 10)
        report = reconcile(store)
        movie = [f.problem for f in report.findings if f.title == "movie"]
        assert len(movie) == 18
        assert all("its other files still serve" not in p for p in movie)
        assert all(p.endswith("dropped: title incomplete, none of its files serve until a "
                              "fill or reload") for p in movie)  # fmt: skip
        (other,) = [f.problem for f in report.findings if f.title == "other"]
        assert "(its other files still serve)" in other
    finally:
        store.close()


def test_findings_are_logged_once_per_title_and_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A disk wiped behind the appliance's back: one line for each title, with a count and
    # the first few paths, not one per file.
    loaded(tmp_path, [("d0", "ssd")], "movie", "other")
    store = Store(config(tmp_path, [("d0", "ssd")]))
    try:
        for title_id in ("movie", "other"):
            for f in title_files(store.conn, title_id):
                f.location.unlink()
        with caplog.at_level(logging.WARNING, logger="appliance.repair"):
            report = reconcile(store)
        assert len(report.findings) == 36
        lines = [r for r in caplog.records if r.name == "appliance.repair"]
        assert len(lines) == 2
        for record, title_id in zip(lines, ("movie", "other"), strict=True):
            fields = record.edgeflix_fields  # type: ignore[attr-defined]
            assert fields["title"] == title_id and fields["files"] == 18
            assert fields["paths"].endswith(" and 15 more")
            assert fields["disk"] == str((tmp_path / "d0").resolve())
        assert all(f.state == MISSING for f in title_files(store.conn, "movie"))
    finally:
        store.close()

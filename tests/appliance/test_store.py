from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from appliance.config import DiskConfig, StorageConfig
from appliance.disks import CapacityError, LoadError, UnknownTitle
from appliance.index import INCOMPLETE, READY, IndexReader, transaction
from appliance.repair import reconcile, verify
from appliance.store import Store
from edgeflix import titlefiles
from edgeflix.titlefiles import TitleFilesError
from tests.appliance.storage_fixtures import fake_throttle, make_title, title_bytes


def make_store(
    tmp_path: Path,
    tiers: tuple[str, ...] = ("ssd", "hdd", "hdd"),
    max_bytes: int | None = None,
    hot_rate: float = 1.0,
) -> Store:
    disks = []
    for i, tier in enumerate(tiers):
        path = tmp_path / f"disk{i}-{tier}"
        path.mkdir(parents=True, exist_ok=True)
        disks.append(DiskConfig(path=path, tier=tier, max_bytes=max_bytes))  # type: ignore[arg-type]
    config = StorageConfig(
        disks=tuple(disks), index=tmp_path / "var" / "index.sqlite", hot_rate=hot_rate
    )
    return Store(config, grace_s=0)  # an update deletes the old version at once


def stored_files(store: Store) -> list[Path]:
    return sorted(p for d in store.disks for p in d.titles_dir.rglob("*") if p.is_file())


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_title(tmp_path / "src", "bunny", sizes=[40_000 + i * 1000 for i in range(24)])


def test_load_spreads_a_cold_title_over_the_hdd_tier(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path)
    row = store.load("bunny", src)
    assert row.state == READY and row.tier == "hdd" and row.bytes == title_bytes(src)
    reader = IndexReader(store.index_path)
    model, digest = titlefiles.read(src)
    assert row.digest == digest
    used_disks = set()
    for entry in [*model.files, titlefiles.FileEntry(path="files.json", size=1, sha256="0" * 64)]:
        found = reader.locate("bunny", entry.path)
        assert found is not None and found.tier == "hdd"
        assert found.path.read_bytes() == (src / entry.path).read_bytes()
        assert found.mtime_ns == (src / entry.path).stat().st_mtime_ns
        used_disks.add(found.disk)
    hdds = {d.id for d in store.disks if d.tier == "hdd"}
    assert used_disks == hdds  # 26 files over two disks: both get some
    assert reader.locate("bunny", "nope.m4s") is None
    assert reader.locate("other", "master.m3u8") is None
    (listing,) = store.listing()
    assert listing.files == 26 and listing.missing == 0 and set(listing.disks) == hdds


def test_hot_title_loads_onto_ssd_and_single_tier_takes_all(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path)
    assert store.load("bunny", src, rate=5.0).tier == "ssd"
    only_ssd = make_store(tmp_path / "b", tiers=("ssd",))
    assert only_ssd.load("bunny", src, rate=0.0).tier == "ssd"


def test_content_mismatch_is_refused_and_leaves_nothing(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path)
    victim = src / "v1" / "seg0011.m4s"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: found only by hashing while copying
    victim.write_bytes(bytes(data))
    with pytest.raises(LoadError, match=r"seg0011.m4s: SHA-256 mismatch"):
        store.load("bunny", src)
    assert stored_files(store) == []
    assert store.listing() == []
    assert IndexReader(store.index_path).locate("bunny", "master.m3u8") is None


def test_bad_sources_are_refused_before_writing(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(LoadError, match=r"files.json is for title 'bunny'"):
        store.load("other", src)
    with pytest.raises(LoadError, match="not a folder"):
        store.load("bunny", tmp_path / "nowhere")
    with pytest.raises(TitleFilesError, match=r"no files\.json"):
        store.load("bunny", tmp_path)
    with pytest.raises(TitleFilesError, match="invalid title id"):
        store.load("../etc", src)
    (src / "v0" / "seg0002.m4s").unlink()
    with pytest.raises(LoadError, match=r"seg0002.m4s is listed in files.json but missing"):
        store.load("bunny", src)
    (src / "v1" / "seg0003.m4s").write_bytes(b"short")
    assert stored_files(store) == [] and store.listing() == []


def test_title_too_big_is_refused_with_numbers(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path, tiers=("hdd", "hdd"), max_bytes=600_000)
    with pytest.raises(CapacityError) as info:
        store.load("bunny", src)
    message = str(info.value)
    assert "title bunny does not fit on the hdd tier" in message
    assert (
        f"needs {title_bytes(src)} bytes" in message and "free below its high watermark" in message
    )
    assert stored_files(store) == [] and store.listing() == []
    roomy = make_store(tmp_path / "roomy", tiers=("hdd", "hdd"), max_bytes=2_000_000)
    assert roomy.load("bunny", src).state == READY


def test_replace_and_remove(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path)
    first = store.load("bunny", src)
    with pytest.raises(LoadError, match="already loaded"):
        store.load("bunny", src)
    reader = IndexReader(store.index_path)
    assert reader.locate("bunny", "master.m3u8") is not None
    newer = make_title(tmp_path / "src2", "bunny", sizes=[5_000, 6_000], seed=2)
    second = store.load("bunny", newer, replace=True)
    assert second.digest != first.digest and second.bytes == title_bytes(newer)
    assert len(stored_files(store)) == 4
    assert reader.locate("bunny", "v1/seg0011.m4s") is None  # the cache saw the change
    store.remove("bunny")
    assert stored_files(store) == [] and store.listing() == []
    assert reader.locate("bunny", "master.m3u8") is None
    with pytest.raises(UnknownTitle, match="no title 'bunny'"):
        store.remove("bunny")


def test_reconcile_drops_truncated_and_missing_files(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path)
    store.load("bunny", src)
    reader = IndexReader(store.index_path)
    truncated = reader.locate("bunny", "v0/seg0000.m4s")
    removed = reader.locate("bunny", "v1/seg0001.m4s")
    assert truncated and removed
    os.truncate(truncated.path, 100)
    removed.path.unlink()
    report = reconcile(store)
    problems = {(f.path, f.problem.split(";")[0]) for f in report.findings}
    assert problems == {
        ("v0/seg0000.m4s", "size 100 != 40000 in the index"),
        ("v1/seg0001.m4s", "missing from its disk"),
    }
    assert store.title("bunny").state == INCOMPLETE
    assert not truncated.path.exists()
    assert reader.locate("bunny", "v0/seg0000.m4s") is None  # dropped files are not served
    assert reader.locate("bunny", "master.m3u8") is not None  # verified ones keep serving
    (listing,) = store.listing()
    assert listing.missing == 2 and listing.state == INCOMPLETE
    assert reconcile(store).findings == []  # settled: nothing new to report


def test_reconcile_cleans_up_after_crashes(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path)
    store.load("bunny", src)
    located = IndexReader(store.index_path).locate("bunny", "master.m3u8")
    assert located
    temp = located.path.parent / ".seg.abcd1234.tmp"
    temp.write_bytes(b"half")
    stray = store.disks[0].titles_dir / "ghost" / "v0" / "seg.m4s"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    # A load that died half-way: its title row says 'loading' and one file made it to disk.
    with transaction(store.conn) as conn:
        conn.execute(
            "INSERT INTO titles VALUES ('dead', 'x', 'loading', 'hdd', 10, 0, NULL)",
        )
    partial = store.disks[1].titles_dir / "dead" / "v0" / "seg0000.m4s"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"y")
    report = reconcile(store)
    text = sorted(str(f) for f in report.findings)
    assert any(t.startswith("bunny/.seg.abcd1234.tmp: removed partial file") for t in text)
    assert "dead: removed an interrupted load" in text
    assert "ghost: removed 1 stray files of a title not in the index" in text
    assert not temp.exists() and not stray.exists() and not partial.exists()
    assert [t.id for t in store.listing()] == ["bunny"]
    assert store.title("bunny").state == READY


def test_reconcile_leaves_titles_another_process_holds(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path)
    with transaction(store.conn) as conn:
        conn.execute("INSERT INTO titles VALUES ('busy', 'x', 'loading', 'hdd', 10, 0, NULL)")
    with store.locks.hold("busy"):
        report = reconcile(store)
    assert report.busy == ["busy"] and store.title("busy").state == "loading"


def test_verify_finds_flipped_bytes(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path)
    store.load("bunny", src)
    found = IndexReader(store.index_path).locate("bunny", "v0/seg0004.m4s")
    assert found
    data = bytearray(found.path.read_bytes())
    data[100] ^= 1
    found.path.write_bytes(bytes(data))
    assert reconcile(store).findings == []  # same size: only hashing can tell
    seen: list[int] = []
    report = verify(store, on_bytes=seen.append)
    assert [str(f).split(";")[0] for f in report.findings] == [
        "bunny/v0/seg0004.m4s: SHA-256 does not match the index"
    ]
    assert report.checked_files == 26 and sum(seen) == title_bytes(src)
    assert store.title("bunny").state == INCOMPLETE and not found.path.exists()


def test_move_flips_tier_and_keeps_metadata(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path)
    store.load("bunny", src)
    reader = IndexReader(store.index_path)
    before = reader.locate("bunny", "v1/seg0007.m4s")
    assert before and before.tier == "hdd"
    assert store.move("bunny", "ssd", grace_s=0)
    after = reader.locate("bunny", "v1/seg0007.m4s")
    assert after and after.tier == "ssd" and after.disk == store.disks[0].id
    assert (after.sha256, after.size, after.mtime_ns) == (
        before.sha256,
        before.size,
        before.mtime_ns,
    )
    assert (
        not before.path.exists()
        and after.path.read_bytes() == (src / "v1/seg0007.m4s").read_bytes()
    )
    assert all(store.disks[0].titles_dir in p.parents for p in stored_files(store))
    assert not store.move("bunny", "ssd", grace_s=0)  # already there
    assert reconcile(store).findings == []


def test_move_under_concurrent_reads_never_fails_a_read(tmp_path: Path, src: Path) -> None:
    store = make_store(tmp_path, tiers=("ssd", "hdd"))
    store.load("bunny", src)
    model, _ = titlefiles.read(src)
    expected = {e.path: e.sha256 for e in model.files}
    stop = threading.Event()
    failures: list[str] = []
    reads = [0]

    def reader_loop() -> None:
        reader = IndexReader(store.index_path)
        deadline = time.monotonic() + 30
        for i in range(200_000):
            if stop.is_set() or time.monotonic() > deadline:
                break
            path = sorted(expected)[i % len(expected)]
            found = reader.locate("bunny", path)
            if found is None:
                failures.append(f"{path}: not located")
                continue
            try:
                with found.path.open("rb") as fh:
                    data = fh.read()
            except OSError as exc:
                failures.append(f"{path}: {exc}")
                continue
            if hashlib.sha256(data).hexdigest() != expected[path]:
                failures.append(f"{path}: wrong bytes")
            reads[0] += 1

    threads = [threading.Thread(target=reader_loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for to_tier in ("ssd", "hdd", "ssd", "hdd"):
            assert store.move("bunny", to_tier, grace_s=0.3)  # type: ignore[arg-type]
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == [] and reads[0] > 0
    assert store.title("bunny").tier == "hdd"


def test_throttle_paces_bytes() -> None:
    throttle, slept = fake_throttle(1000.0)
    for _ in range(5):
        throttle.consume(500)
    assert sum(slept) == pytest.approx(2.5)
    assert slept[0] == pytest.approx(0.5)


def test_moves_fill_a_tier_only_to_its_low_watermark(tmp_path: Path) -> None:
    src = make_title(tmp_path / "src", "t")  # ~181 kB: under 90% of 215 kB, over 80%
    store = make_store(tmp_path, tiers=("ssd", "hdd"), max_bytes=215_000)
    store.load("t", src)
    with pytest.raises(CapacityError, match="free below its low watermark"):
        store.move("t", "ssd", grace_s=0)
    assert store.title("t").tier == "hdd"
    assert stored_files(store) == sorted(
        p for p in store.disks[1].titles_dir.rglob("*") if p.is_file()
    )
    assert store.load("u", make_title(tmp_path / "src", "u"), rate=9.0).tier == "ssd"

"""The background scrub's core on a real store: damage that keeps a file's size is found and
dropped, the walk resumes from its cursor, wraps into a new pass, skips what another process
holds, and reads no faster than its throttle."""

from __future__ import annotations

from pathlib import Path

from appliance.config import DiskConfig, StorageConfig
from appliance.index import INCOMPLETE, MISSING, READY, IndexReader, get_title, title_files
from appliance.scrub import ScrubState, load_state, save_state, scrub_step, status
from appliance.store import Store
from tests.appliance.storage_fixtures import fake_throttle, make_title

SIZES = [20_000 + i * 1000 for i in range(8)]


def make_store(tmp_path: Path) -> Store:
    disks = []
    for i in range(2):
        path = tmp_path / f"disk{i}"
        path.mkdir(parents=True, exist_ok=True)
        disks.append(DiskConfig(path=path, tier="hdd"))
    config = StorageConfig(disks=tuple(disks), index=tmp_path / "var" / "index.sqlite")
    return Store(config, grace_s=0)


def loaded(tmp_path: Path, *titles: str) -> Store:
    store = make_store(tmp_path)
    for title in titles:
        store.load(title, make_title(tmp_path / "src", title, sizes=SIZES))
    return store


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_damage_of_the_same_size_is_found_and_dropped(tmp_path: Path) -> None:
    store = loaded(tmp_path, "bunny", "intact")
    victim = next(f for f in title_files(store.conn, "bunny") if f.path == "v1/seg0003.m4s")
    flip_a_byte(victim.location)
    reader = IndexReader(store.index_path)
    assert reader.locate("bunny", "v1/seg0003.m4s") is not None  # served until found

    state, report = scrub_step(store, ScrubState(), budget_bytes=10**9)
    assert [str(f) for f in report.findings] == [
        "bunny/v1/seg0003.m4s: SHA-256 does not match the index; dropped: title incomplete "
        "(its other files still serve) until a fill or reload"
    ]
    assert report.checked_files == 2 * 10 and state == ScrubState(passes=1, bad=1)
    assert reader.locate("bunny", "v1/seg0003.m4s") is None and not victim.location.exists()
    rows = {f.path: f.state for f in title_files(store.conn, "bunny")}
    assert rows["v1/seg0003.m4s"] == MISSING
    assert [get_title(store.conn, t).state for t in ("bunny", "intact")] == [INCOMPLETE, READY]  # type: ignore[union-attr]
    # The dropped file is not read again; the next pass finds nothing new.
    again, report = scrub_step(store, state, budget_bytes=10**9)
    assert report.findings == [] and report.checked_files == 19
    assert again == ScrubState(passes=2, bad=1)


def test_the_walk_resumes_from_its_cursor_and_wraps(tmp_path: Path) -> None:
    store = loaded(tmp_path, "a", "b")
    files = sorted(
        (f.title, f.path, f.size) for t in ("a", "b") for f in title_files(store.conn, t)
    )
    # A budget of three files' bytes: it stops on the third, where the next step goes on.
    budget = sum(size for _, _, size in files[:3])
    state, report = scrub_step(store, ScrubState(), budget)
    assert report.checked_files == 3 and (state.title, state.path) == files[2][:2]
    save_state(store.conn, state)
    assert load_state(store.conn) == state
    state, report = scrub_step(store, load_state(store.conn) or ScrubState(), 10**9)
    # The rest of the pass; the cursor goes back to the start.
    assert report.checked_files == len(files) - 3 and state == ScrubState(passes=1)
    assert status(store.config) == {
        "bytes_per_s": store.config.scrub_bytes_per_s,
        "passes": 0,  # saved before this step
        "position": f"{files[2][0]}/{files[2][1]}",
        "bad_files": 0,
    }


def test_an_empty_store_and_a_held_title_are_skipped(tmp_path: Path) -> None:
    empty = make_store(tmp_path / "empty")
    state, report = scrub_step(empty, ScrubState(), 10**9)
    assert state == ScrubState() and report.checked_files == 0
    store = loaded(tmp_path, "busy", "free")
    with store.locks.hold("busy"):  # a load or a move in progress
        state, report = scrub_step(store, ScrubState(), 10**9)
    assert report.checked_files == 10 and report.busy == ["busy"]
    assert {f.title for f in title_files(store.conn, "free")} == {"free"}


def test_reads_go_no_faster_than_the_throttle(tmp_path: Path) -> None:
    store = loaded(tmp_path, "bunny")
    throttle, slept = fake_throttle(100_000)
    _, report = scrub_step(store, ScrubState(), 10**9, throttle)
    # Every byte read was paid for at 100 kB/s (the first chunk starts the clock).
    assert report.checked_bytes > 150_000
    assert sum(slept) >= (report.checked_bytes - 30_000) / 100_000

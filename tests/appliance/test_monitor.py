"""The daemon's health pieces that decide: the 5xx share between two counter snapshots, and
the key file that carries a SIGHUP reload to the workers."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance import config, index
from appliance.keyfile import KeyFile, KeySet, read_keys, write_keys
from appliance.monitor import DiskService, HealthMonitor, error_rate, status_totals
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title, storage_toml

counts = st.dictionaries(
    st.sampled_from([200, 206, 304, 404, 500, 501, 503, 505]), st.integers(0, 10**6)
)


def test_error_rate_counts_only_the_interval() -> None:
    assert error_rate({200: 90, 500: 10}, {200: 180, 500: 10}) == 0.0
    assert error_rate({200: 90}, {200: 123, 503: 7}) == 7 / 40
    assert error_rate({}, {}) == 0.0
    assert error_rate({200: 50, 500: 5}, {200: 10}) == 0.0  # a restart reset the counters


def test_error_rate_ignores_what_a_client_provokes() -> None:
    # An HTTP/2 request line (505) or an unknown transfer coding (501) is the client's doing.
    assert error_rate({}, {200: 2, 505: 1}) == 0.0
    assert error_rate({}, {200: 100, 501: 50, 500: 50}) == 0.25


def test_error_rate_dilutes_a_handful_of_responses() -> None:
    # One 500 among three answers is a hint (degraded), not a third of the traffic failing;
    # a disk failing every request still reads as failing once there is traffic.
    assert error_rate({}, {200: 2, 500: 1}) == 1 / 20
    assert error_rate({}, {500: 40}) == 1.0


@given(counts, counts)
def test_error_rate_is_a_share(prev: dict[int, int], cur: dict[int, int]) -> None:
    assert 0.0 <= error_rate(prev, cur) <= 1.0


def test_status_totals_sums_titles() -> None:
    requests = {(200, "a"): [3, 100], (200, "b"): [4, 50], (404, "-"): [2, 0]}
    assert status_totals(requests) == {200: 7, 404: 2}


class _Site:
    def __init__(self) -> None:
        self.required = False
        self.keys: dict[str, bytes] = {}
        self.keys_generation = 0


def test_key_file_reaches_the_site_once_per_change(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    write_keys(path, KeySet(1, True, {"k1": b"a" * 16}))
    assert os.stat(path).st_mode & 0o777 == 0o600
    site, keyfile = _Site(), KeyFile(path)
    assert keyfile.refresh(site) and site.keys == {"k1": b"a" * 16} and site.required
    assert not keyfile.refresh(site)  # unchanged: one stat, nothing re-read
    write_keys(path, KeySet(2, True, {"k1": b"a" * 16, "k2": b"b" * 16}))
    assert keyfile.refresh(site) and site.keys_generation == 2 and set(site.keys) == {"k1", "k2"}
    assert read_keys(path).generation == 2


def test_damaged_key_file_keeps_the_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    write_keys(path, KeySet(1, True, {"k1": b"a" * 16}))
    site, keyfile = _Site(), KeyFile(path)
    keyfile.refresh(site)
    path.write_text("{half")
    assert not keyfile.refresh(site)
    assert site.keys == {"k1": b"a" * 16} and site.keys_generation == 1


def test_a_take_out_the_index_refused_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk dies while another process holds the index's write lock: marking its files
    missing fails; the watch reports the disk out only once, so the monitor keeps the
    take-out pending and completes it on a later cycle."""
    monkeypatch.setattr(index, "_BUSY_TIMEOUT_MS", 100)
    cfg = config.load(storage_toml(tmp_path, tiers=("hdd",)))
    store = Store(cfg.storage)
    store.load("film", make_title(tmp_path / "src", "film"))
    store.close()
    monitor = HealthMonitor(cfg, lambda: 0.0, probe_timeout_s=1.0)
    cfg.storage.disks[0].path.rename(tmp_path / "pulled")
    locker = sqlite3.connect(cfg.storage.index, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        monitor.first_sample()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    reader = sqlite3.connect(cfg.storage.index)
    assert reader.execute("SELECT state FROM titles").fetchall() == [("ready",)]
    monitor.first_sample()
    assert reader.execute("SELECT state FROM titles").fetchall() == [("incomplete",)]
    reader.close()


class _SlowRehash(DiskService):
    """Re-verification that takes as long as the test says: a multi-TB disk re-hashing."""

    def __init__(self, cfg: config.ApplianceConfig, release: threading.Event) -> None:
        super().__init__(cfg)
        self.release = release
        self.started = threading.Event()

    def bring_back(self, disk: str, out: set[str]) -> tuple[list[str], list[str]]:
        self.started.set()
        self.release.wait(30)
        return super().bring_back(disk, out)


def _until(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_a_long_re_verify_does_not_stall_health(tmp_path: Path) -> None:
    """While a returned disk re-hashes, the health thread keeps beating (or the watchdog
    restarts the daemon mid-way, every time) and keeps probing the other disks (a second
    dying disk is taken out meanwhile), and the first serves once its re-verify is done."""
    cfg = config.load(storage_toml(tmp_path, tiers=("hdd", "hdd")))
    store = Store(cfg.storage)
    store.load("film", make_title(tmp_path / "src", "film"))
    store.close()
    first, second = (str(d.path.resolve()) for d in cfg.storage.disks)
    release = threading.Event()
    monitor = HealthMonitor(cfg, lambda: 0.0, disk_interval_s=0.05, probe_timeout_s=1.0)
    monitor.storage = slow = _SlowRehash(cfg, release)
    monitor.first_sample()
    monitor.start()
    try:
        Path(first).rename(tmp_path / "pulled")
        assert _until(lambda: first in monitor.out_of_service())
        (tmp_path / "pulled").rename(first)
        assert slow.started.wait(10), "the returned disk was never re-verified"
        beats = monitor.beat
        Path(second).rename(tmp_path / "pulled2")  # a second disk dies during the re-hash
        assert _until(lambda: second in monitor.out_of_service()), "second disk not noticed"
        assert monitor.beat > beats and monitor.fresh(2.0), "health thread stalled"
        assert first in monitor.rescanning()
        release.set()
        assert _until(lambda: monitor.out_of_service() == {second})
        assert _until(lambda: not monitor.rescanning())
    finally:
        release.set()
        monitor.stop()

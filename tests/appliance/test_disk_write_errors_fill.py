"""A fill onto a disk whose data writes fail (EIO) while its canary passes: the failure is
reported against that disk, the title's staging there is dropped, and the title is filled
on the other disk in the same run (the command-line fill too: it is the same run); a disk
the health monitor already holds back is never written. Real sockets (fill_server.py) into
a real store; the failing disk is a seam on the stream's own writes (no FUSE needed): a
write() that fails names no file, a create that fails names its path."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance.config import ApplianceConfig
from appliance.diskwatch import DiskProbe, DiskWatch
from appliance.fill import stream
from appliance.fill.downloader import Pacer
from appliance.fill.layout import StagingLayout
from appliance.fill.plan import FillPlan, PlannedTitle
from appliance.fill.runner import FillReport, FillRun, Storage
from appliance.fill.scheduler import ServiceStorage
from appliance.fill.storage import StoreStorage
from appliance.index import title_files
from appliance.store import Store
from tests.appliance.fill_server import ScriptedServer, serve_files
from tests.appliance.storage_fixtures import make_title, storage_toml

EIO = "Input/output error"


class Origin:
    def __init__(self, tmp: Path) -> None:
        files: dict[str, bytes] = {}
        for seed, title in enumerate(("a", "b"), 1):
            folder = make_title(tmp / "src", title, seed=seed)
            for p in folder.rglob("*"):
                if p.is_file():
                    files[f"/titles/{title}/{p.relative_to(folder).as_posix()}"] = p.read_bytes()
        self.server = ScriptedServer(serve_files(files, []))


@pytest.fixture()
def origin(tmp_path: Path) -> Iterator[Origin]:
    o = Origin(tmp_path)
    try:
        yield o
    finally:
        o.server.close()


class FailingDisk:
    """Staging writes on `disk` fail with EIO; `tries` counts them."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.tries = 0

    def on_disk(self, path: str | os.PathLike[str]) -> bool:
        return Path(path).is_relative_to(self.disk)

    def write_all(self, real: Callable[[int, memoryview], None]) -> Callable[..., None]:
        def write_all(fd: int, data: memoryview) -> None:
            if self.on_disk(os.readlink(f"/proc/self/fd/{fd}")):
                self.tries += 1
                raise OSError(errno.EIO, EIO)  # as write() fails: no file named
            real(fd, data)

        return write_all

    def open_part(self, real: Callable[[Path, int], tuple[int, bool]]) -> Callable[..., object]:
        def open_part(part: Path, offset: int) -> tuple[int, bool]:
            if self.on_disk(part):
                self.tries += 1
                raise OSError(errno.EIO, EIO, str(part))  # as a create fails: named
            return real(part, offset)

        return open_part


def _config(tmp: Path) -> tuple[ApplianceConfig, Path, Path]:
    config = appliance_config.load(storage_toml(tmp / "app"))  # ssd0 and hdd1
    ssd, hdd = (d.path.resolve() for d in config.storage.disks)
    return config, ssd, hdd


def _fill(
    tmp: Path,
    origin: Origin,
    storage: Storage,
    on_write_error: Callable[[str, OSError], None] | None = None,
) -> FillReport:
    plan = FillPlan(
        titles=tuple(PlannedTitle(id=t, sources=(origin.server.url,)) for t in ("a", "b")),
        streams=2,
    )
    hook = {} if on_write_error is None else {"on_write_error": on_write_error}
    run = FillRun(plan, storage, tmp / "staging", Pacer(None, None), **hook)  # type: ignore[arg-type]

    async def bounded() -> FillReport:
        return await asyncio.wait_for(run.run(), 30)

    return asyncio.run(bounded())


def _disks_holding(config: ApplianceConfig, title: str) -> set[str]:
    store = Store(config.storage)
    try:
        return {f.disk for f in title_files(store.conn, title)}
    finally:
        store.close()


@pytest.mark.parametrize("fails", ["write", "create"])
def test_a_title_whose_disk_fails_its_writes_is_filled_on_the_other_disk(
    tmp_path: Path,
    origin: Origin,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fails: str,
) -> None:
    config, ssd, hdd = _config(tmp_path)
    disk = FailingDisk(hdd)  # cold titles go to the hdd tier first
    if fails == "write":
        monkeypatch.setattr(stream, "_write_all", disk.write_all(stream._write_all))
    else:
        monkeypatch.setattr(stream, "open_part", disk.open_part(stream.open_part))

    with caplog.at_level(logging.WARNING, logger="appliance.fill"):
        report = _fill(tmp_path, origin, StoreStorage(config.storage))

    assert report.failed == []
    assert {t: p.state for t, p in report.titles.items()} == {"a": "ready", "b": "ready"}
    assert _disks_holding(config, "a") == _disks_holding(config, "b") == {str(ssd)}
    # Said once, naming the disk: given up for the rest of the run, b never tried it.
    said = [getattr(r, "edgeflix_fields", {}) for r in caplog.records
            if r.getMessage() == "fill.write_failed"]  # fmt: skip
    assert [(f["title"], f["disk"]) for f in said] == [("a", str(hdd))]
    assert disk.tries >= 1
    # Its partial staging there is dropped, nothing is left on the good disk's either.
    assert not (hdd / ".staging" / "a").exists()
    assert list((ssd / ".staging").glob("*/*")) == []


def test_the_failed_write_is_counted_against_its_disk(
    tmp_path: Path, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, ssd, hdd = _config(tmp_path)
    monkeypatch.setattr(stream, "_write_all", FailingDisk(hdd).write_all(stream._write_all))
    watch = DiskWatch([ssd, hdd], probe=lambda p, _held: DiskProbe(str(p), "ok"))

    report = _fill(tmp_path, origin, ServiceStorage(config, set), watch.write_failed)

    assert report.failed == []
    assert watch.write_errors() == {str(hdd): 1}
    assert watch.statuses()[str(hdd)].errors == 1  # health's I/O errors of the interval


def test_a_disk_the_health_monitor_holds_back_is_not_written(
    tmp_path: Path, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, ssd, hdd = _config(tmp_path)
    disk = FailingDisk(hdd)
    monkeypatch.setattr(stream, "_write_all", disk.write_all(stream._write_all))
    watch = DiskWatch([ssd, hdd], probe=lambda p, _held: DiskProbe(str(p), "ok"))
    for _ in range(2):  # two earlier runs' failures: no new writes there
        watch.write_failed(str(hdd), OSError(errno.EIO, EIO))
    storage = ServiceStorage(config, set, watch.not_writable)

    report = _fill(tmp_path, origin, storage, watch.write_failed)

    assert report.failed == [] and disk.tries == 0
    assert _disks_holding(config, "a") == _disks_holding(config, "b") == {str(ssd)}
    assert watch.write_errors() == {str(hdd): 2}


def test_titles_on_a_disk_held_back_are_still_deleted(tmp_path: Path) -> None:
    config, _ssd, hdd = _config(tmp_path)
    held_back: set[str] = set()
    adapter = StoreStorage(config.storage, lambda: held_back)
    try:
        adapter.load("x", StagingLayout(make_title(tmp_path / "src", "x")))
        assert _disks_holding(config, "x") == {str(hdd)}
        held_back.add(str(hdd))
        adapter.staging("y", tmp_path / "staging" / "y")  # lays the next title out
        assert [d.writable for d in adapter.store.disks] == [True, False]
        adapter.remove("x")  # a plan that no longer wants it: deleted all the same
        assert adapter.held() == {} and not (hdd / "titles" / "x").exists()
        assert [d.writable for d in adapter.store.disks] == [True, False]
    finally:
        adapter.close()

"""/metrics tells an operator which disk serving reads fail or crawl on, and which disks take
no new titles: counters kept by st_dev in each worker (edgeflix/http/stats.py), merged by the
supervisor, named by disk here."""

from __future__ import annotations

import os
from pathlib import Path

from appliance import config as appliance_config
from appliance.diskwatch import DiskProbe, DiskWatch, Rescan, TakeOut, fault_increase
from appliance.server import AdminView, metrics_text
from edgeflix.http.stats import ServerStats, merge
from tests.appliance.storage_fixtures import storage_toml


def sample(text: str, name: str, disk: Path) -> str:
    line = next(x for x in text.splitlines() if x.startswith(f'{name}{{disk="{disk}"'))
    return line.rsplit(" ", 1)[1]


def test_worker_counts_merge_and_show_per_disk(tmp_path: Path) -> None:
    cfg = appliance_config.load(storage_toml(tmp_path, tiers=("ssd", "hdd")))
    ssd, hdd = (d.path for d in cfg.storage.disks)
    dev = os.stat(hdd).st_dev
    one, two = ServerStats(), ServerStats()
    one.disk_fault(dev, 1, slow=True, failed=False)
    two.disk_fault(dev, 2, slow=False, failed=True)
    two.disk_fault(dev, 3, slow=True, failed=True)
    two.disk_fault(dev, 3, slow=False, failed=True)  # the same bad file again: counted once
    stats = merge([one.snapshot(), two.snapshot()])
    assert (stats.slow_reads, stats.read_errors, stats.disk_faults) == (2, 2, {dev: [2, 2]})
    view = AdminView(stats, 2, 2, {}, not_writable=frozenset({str(hdd)}))
    text = metrics_text(cfg, view)
    assert "edgeflix_appliance_read_errors_total 2" in text
    assert "edgeflix_appliance_slow_reads_total 2" in text
    ssd_n, hdd_n = (
        int(sample(text, "edgeflix_appliance_disk_read_errors_total", d)) for d in (ssd, hdd)
    )
    # Two folders of one file system: its figures show once, on the first disk of the config.
    assert ssd_n + hdd_n == 2 and hdd_n == (2 if os.stat(ssd).st_dev != dev else 0)
    assert sample(text, "edgeflix_appliance_disk_writable", hdd) == "0"
    assert sample(text, "edgeflix_appliance_disk_writable", ssd) == "1"


def test_fault_increase_counts_new_read_errors_across_worker_restarts() -> None:
    assert fault_increase({}, {7: [3, 2]}) == {7: 2}
    assert fault_increase({7: [3, 2]}, {7: [9, 2]}) == {}  # slow reads alone are not errors
    assert fault_increase({7: [0, 2]}, {7: [0, 5], 8: [0, 1]}) == {7: 3, 8: 1}
    # The worker that had counted 5 was replaced: its successor has counted 1 since.
    assert fault_increase({7: [0, 5]}, {7: [0, 1]}) == {7: 1}


def test_serving_read_errors_count_towards_taking_a_disk_out(tmp_path: Path) -> None:
    disk = tmp_path / "d"
    (disk / "titles").mkdir(parents=True)
    watch = DiskWatch([disk], held=[str(disk)])
    watch.poll()
    watch.read_failed(str(disk), 1)
    assert watch.not_writable() == set()  # one error only shows
    watch.read_failed(str(disk), 1)
    assert watch.not_writable() == {str(disk)}  # no new titles on it
    watch.read_failed(str(disk), 3)
    (action,) = watch.poll()
    assert isinstance(action, TakeOut) and "serving reads failed" in action.reason


def test_a_disk_that_died_comes_back_after_repair_whatever_errors_its_death_caused(
    tmp_path: Path,
) -> None:
    """The errors a dying disk's reads raised are history once its own probe took it out:
    a disk mended (fsck, a new cable) and re-verified serves again at once, not a day on."""
    disk = tmp_path / "d"
    (disk / "titles").mkdir(parents=True)
    dead = [False]

    def probe(path: Path, held: bool) -> DiskProbe:
        return DiskProbe(str(path), "io_error" if dead[0] else "ok", "")

    watch = DiskWatch([disk], held=[str(disk)], probe=probe, recover_after=1)
    watch.poll()
    watch.read_failed(str(disk), 3)  # reads failed as it died, before its probe noticed
    dead[0] = True
    (out,) = watch.poll()
    assert isinstance(out, TakeOut)
    watch.read_failed(str(disk), 5)  # counted late, from the workers' last sample
    dead[0] = False
    (back,) = watch.poll()
    assert isinstance(back, Rescan)  # re-verified, not held out by its old errors

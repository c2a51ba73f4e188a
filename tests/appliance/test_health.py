"""Health summary, rates, and disk failure detection on real directories."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from appliance.diskwatch import (
    DiskProbe,
    DiskStatus,
    DiskWatch,
    Rescan,
    TakeOut,
    _write_failure,
    decide_disks,
    unusable,
)
from appliance.health import (
    DiskSample,
    HealthInputs,
    HealthSampler,
    IoCounters,
    Limit,
    NicRate,
    Snapshot,
    Thresholds,
    rates,
    summarise,
)


def _inputs(**kw: object) -> HealthInputs:
    base: dict[str, object] = {"cpu_percent": 10.0, "memory_percent": 30.0, "load_per_core": 0.2}
    base.update(kw)
    return HealthInputs(**base)  # type: ignore[arg-type]


def _disk(path: str, **kw: object) -> DiskSample:
    base: dict[str, object] = {
        "used_fraction": 0.5,
        "io_errors": 0,
        "latency_ms": 2.0,
        "in_service": True,
    }
    base.update(kw)
    return DiskSample(path=path, **base)  # type: ignore[arg-type]


def test_ok_when_everything_is_quiet() -> None:
    health = summarise(_inputs(disks=(_disk("/a"), _disk("/b"))))
    assert (health.state, health.reasons, health.disks_out_of_service) == ("ok", (), ())


def test_one_disk_out_is_degraded_with_reason() -> None:
    health = summarise(
        _inputs(disks=(_disk("/a", in_service=False, reason="missing"), _disk("/b")))
    )
    assert health.state == "degraded"
    assert health.disks_out_of_service == ("/a",)
    assert any("/a out of service: missing" in r for r in health.reasons)


def test_all_disks_out_is_failing() -> None:
    disks = (_disk("/a", in_service=False), _disk("/b", in_service=False))
    assert summarise(_inputs(disks=disks)).state == "failing"


def test_each_metric_degrades_and_fails() -> None:
    assert summarise(_inputs(cpu_percent=95)).state == "degraded"
    assert summarise(_inputs(memory_percent=99)).state == "failing"
    assert summarise(_inputs(serving_error_rate=0.05)).state == "degraded"
    assert summarise(_inputs(serving_error_rate=0.5)).state == "failing"
    assert summarise(_inputs(disks=(_disk("/a", used_fraction=0.97),))).state == "degraded"
    # Full serves on: a cache that filled its disk stays in steering.
    assert summarise(_inputs(disks=(_disk("/a", used_fraction=1.0),))).state == "degraded"
    assert summarise(_inputs(disks=(_disk("/a", latency_ms=300.0),))).state == "degraded"
    assert summarise(_inputs(disks=(_disk("/a", io_errors=2),))).state == "degraded"
    busy = NicRate("eth0", rx_bps=1e6, tx_bps=0.95e9, speed_bps=10**9)
    assert summarise(_inputs(nics=(busy,))).reasons == ("nic eth0 utilisation 0.95 >= 0.9",)
    unknown_speed = NicRate("eth0", 1e12, 1e12, None)
    assert summarise(_inputs(nics=(unknown_speed,))).state == "ok"


def test_thresholds_are_data() -> None:
    strict = Thresholds(cpu_percent=Limit(5.0, 50.0))
    assert summarise(_inputs(cpu_percent=10), strict).state == "degraded"


@given(
    cpu=st.floats(0, 100),
    mem=st.floats(0, 100),
    load=st.floats(0, 50),
    err=st.floats(0, 1),
    in_service=st.lists(st.booleans(), max_size=5),
)
def test_state_is_worst_reason(
    cpu: float, mem: float, load: float, err: float, in_service: list[bool]
) -> None:
    disks = tuple(_disk(f"/d{i}", in_service=s) for i, s in enumerate(in_service))
    health = summarise(
        _inputs(
            cpu_percent=cpu,
            memory_percent=mem,
            load_per_core=load,
            serving_error_rate=err,
            disks=disks,
        )
    )
    assert (health.state == "ok") == (health.reasons == ())
    assert len(health.disks_out_of_service) == in_service.count(False)


def test_rates_between_snapshots() -> None:
    a = Snapshot(10.0, 50.0, 100.0, {"eth0": (1000, 2000)}, {"sda": IoCounters(10, 100)})
    b = Snapshot(
        12.0, 125.0, 200.0, {"eth0": (3000, 1000), "new": (5, 5)}, {"sda": IoCounters(30, 500)}
    )
    r = rates(a, b)
    assert r.cpu_percent == 75.0
    assert r.nic_bps["eth0"] == (8000.0, 0.0)  # tx went backwards (reset): zero, not negative
    assert r.nic_bps["new"] == (0.0, 0.0)
    assert r.disk_latency_ms["sda"] == 20.0
    assert rates(b, b).disk_latency_ms["sda"] is None


def test_decide_disks_takes_out_at_once_and_rescans_after_streak() -> None:
    statuses: dict[str, DiskStatus] = {}
    statuses, actions = decide_disks(
        statuses, [DiskProbe("/a", "ok"), DiskProbe("/b", "missing")], 2
    )
    assert actions == [TakeOut("/b", "missing")]
    assert statuses["/b"].state == "out"
    statuses, actions = decide_disks(statuses, [DiskProbe("/b", "io_error", "EIO")], 2)
    assert actions == [] and statuses["/b"].errors == 2  # already out: no second TakeOut
    statuses, actions = decide_disks(statuses, [DiskProbe("/b", "ok")], 2)
    assert actions == [] and statuses["/b"].state == "out"
    statuses, actions = decide_disks(statuses, [DiskProbe("/b", "ok")], 2)
    assert actions == [Rescan("/b")] and statuses["/b"].state == "rescanning"
    statuses, actions = decide_disks(statuses, [DiskProbe("/b", "timeout")], 2)
    assert actions == [] and statuses["/b"].errors == 3  # one slow answer is not a dead disk
    statuses, actions = decide_disks(statuses, [DiskProbe("/b", "timeout")], 2)
    assert actions == [TakeOut("/b", "timeout")]


def test_read_only_disk_keeps_serving_and_takes_writes_again_once_rw() -> None:
    """ext4's errors=remount-ro leaves every file readable: never a take-out (its files would
    404), only a state that keeps writes away; read-write again, it simply serves on."""
    statuses, actions = decide_disks({}, [DiskProbe("/a", "read_only", "mounted read-only")])
    assert actions == [] and statuses["/a"].state == "read_only"
    assert statuses["/a"].reason == "read_only: mounted read-only"
    statuses, actions = decide_disks(statuses, [DiskProbe("/a", "read_only")])
    assert actions == [] and statuses["/a"].state == "read_only"
    statuses, actions = decide_disks(statuses, [DiskProbe("/a", "ok")])
    assert actions == [] and statuses["/a"].state == "serving" and statuses["/a"].reason is None
    # A read-only disk that then dies is taken out; back read-only, it is re-scanned first.
    statuses, actions = decide_disks(statuses, [DiskProbe("/a", "io_error", "EIO")], 2)
    assert actions == [TakeOut("/a", "io_error: EIO")]
    statuses, _ = decide_disks(statuses, [DiskProbe("/a", "read_only")], 2)
    assert statuses["/a"].state == "out"
    statuses, actions = decide_disks(statuses, [DiskProbe("/a", "read_only")], 2)
    assert actions == [Rescan("/a")] and statuses["/a"].state == "rescanning"


def test_summarise_read_only_disk_is_in_service_but_degraded() -> None:
    ro = DiskSample("/a", 0.5, 0, None, in_service=True, reason="read_only: x", writable=False)
    health = summarise(HealthInputs(1.0, 1.0, 0.1, disks=(ro,)))
    assert health.state == "degraded" and health.disks_out_of_service == ()
    assert health.reasons == ("disk /a read-only (read_only: x): serving, no new writes",)


def test_a_canary_write_that_finds_no_space_is_a_full_disk_not_a_dead_one() -> None:
    assert _write_failure(errno.ENOSPC) == "full"
    assert _write_failure(errno.EDQUOT) == "full"
    assert _write_failure(errno.EROFS) == "read_only"
    assert _write_failure(errno.EIO) == "io_error"
    assert _write_failure(None) == "io_error"


def test_full_disk_keeps_serving_without_writes_and_takes_them_again_with_room() -> None:
    """A full disk reads (and deletes) fine: never a take-out, which would 404 its titles
    and keep `rm` from freeing it; with room again it takes writes."""
    full = DiskProbe("/a", "full", "No space left on device")
    statuses, actions = decide_disks({}, [full])
    assert actions == [] and statuses["/a"].state == "read_only"
    assert statuses["/a"].reason == "full: No space left on device"
    statuses, actions = decide_disks(statuses, [full])
    assert actions == [] and statuses["/a"].state == "read_only"
    statuses, actions = decide_disks(statuses, [DiskProbe("/a", "ok")])
    assert actions == [] and statuses["/a"].state == "serving"
    # A dead disk that comes back full is re-verified first, like any other.
    statuses, actions = decide_disks(statuses, [DiskProbe("/a", "io_error", "EIO")], 1)
    assert actions == [TakeOut("/a", "io_error: EIO")]
    statuses, actions = decide_disks(statuses, [full], 1)
    assert actions == [Rescan("/a")]
    # A one-off command leaves only the dead alone.
    probes = [full, DiskProbe("/b", "read_only"), DiskProbe("/c", "io_error", "EIO")]
    assert unusable(probes) == {"/c": "io_error: EIO"}


def test_summarise_full_disk_is_degraded_not_failing() -> None:
    full = DiskSample("/a", 1.0, 0, None, in_service=True, reason="full: no space", writable=False)
    health = summarise(HealthInputs(1.0, 1.0, 0.1, disks=(full,)))
    assert health.state == "degraded" and health.disks_out_of_service == ()
    assert health.reasons == (
        "disk /a full (full: no space): serving, no new writes",
        "disk /a used 1 >= 0.95",
    )
    # So is one still taking writes that is nearly full: a cache fills its disks.
    nearly = DiskSample("/a", 0.999, 0, None, in_service=True)
    assert summarise(HealthInputs(1.0, 1.0, 0.1, disks=(nearly,))).state == "degraded"


def test_slow_probes_take_a_disk_out_only_in_a_row() -> None:
    statuses: dict[str, DiskStatus] = {}
    for outcome in ("timeout", "ok", "timeout", "ok"):
        statuses, actions = decide_disks(statuses, [DiskProbe("/a", outcome)], 2)  # type: ignore[arg-type]
        assert actions == []
    statuses, actions = decide_disks(statuses, [DiskProbe("/a", "timeout")], 2, 3)
    statuses, actions = decide_disks(statuses, [DiskProbe("/a", "timeout")], 2, 3)
    assert actions == []
    statuses, actions = decide_disks(statuses, [DiskProbe("/a", "timeout")], 2, 3)
    assert actions == [TakeOut("/a", "timeout")] and statuses["/a"].state == "out"


def test_diskwatch_on_real_directories(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    watch = DiskWatch([a, b], timeout_s=2.0, recover_after=2)
    assert watch.poll() == []
    shutil.rmtree(b)
    actions = watch.poll()
    assert actions == [TakeOut(str(b), "missing: directory is gone")]
    b.mkdir()
    assert watch.poll() == []
    assert watch.poll() == [Rescan(str(b))]
    assert watch.statuses()[str(b)].state == "rescanning"
    watch.rescanned(str(b), ok=True)
    assert watch.statuses()[str(b)].state == "serving"


def test_diskwatch_mount_point_without_its_disk_is_missing(tmp_path: Path) -> None:
    """An unmounted disk leaves its empty mount point behind, where a canary write works:
    a disk seen with its titles folder and now without one is missing, not ok."""
    fresh, held = tmp_path / "fresh", tmp_path / "held"
    fresh.mkdir()
    (held / "titles").mkdir(parents=True)
    watch = DiskWatch([fresh, held], recover_after=1)
    assert watch.poll() == []  # a new disk has no titles folder yet: fine
    (held / "titles").rename(tmp_path / "elsewhere")
    assert watch.poll() == [TakeOut(str(held), _unmounted(held))]
    (tmp_path / "elsewhere").rename(held / "titles")
    assert watch.poll() == [Rescan(str(held))]


def _unmounted(disk: Path) -> str:
    return (
        "missing: no titles folder (is the disk mounted? a new, empty disk in its place: "
        f"create {disk / 'titles'})"
    )


def test_diskwatch_knows_from_the_index_which_disks_hold_titles(tmp_path: Path) -> None:
    """Started (a daemon, a one-off command) while a disk is not mounted: the index says the
    disk holds files, so its empty mount point is missing from the very first probe."""
    fresh, unmounted = tmp_path / "fresh", tmp_path / "unmounted"
    fresh.mkdir()
    unmounted.mkdir()
    watch = DiskWatch([fresh, unmounted], recover_after=1, held={str(unmounted), "/elsewhere"})
    assert watch.poll() == [TakeOut(str(unmounted), _unmounted(unmounted))]
    (unmounted / "titles").mkdir()  # mounted (or a new disk's folder made by hand)
    assert watch.poll() == [Rescan(str(unmounted))]


def test_diskwatch_file_instead_of_directory_and_readonly_canary(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text("not a dir")
    watch = DiskWatch([a])
    (action,) = watch.poll()
    assert isinstance(action, TakeOut)


def test_diskwatch_never_hangs_on_a_stuck_probe(tmp_path: Path) -> None:
    """A probe blocked in the kernel (a dead NFS or USB disk: here a probe that waits on an
    event) ends as a timeout within the deadline, and the next poll does not start a second
    stuck probe."""
    release, calls = threading.Event(), []

    def stuck(path: Path, held: bool) -> DiskProbe:
        calls.append(path)
        release.wait(10)
        return DiskProbe(str(path), "ok")

    disk = tmp_path / "disk"
    disk.mkdir()
    watch = DiskWatch([disk], timeout_s=0.3, probe=stuck)
    try:
        assert watch.poll() == []  # one slow answer: not yet
        (action,) = watch.poll()
        assert action == TakeOut(str(disk), "timeout: previous probe still blocked")
        assert watch.probe_all()[0].detail == "previous probe still blocked"
        assert len(calls) == 1  # never a second thread stacked on the stuck one
    finally:
        release.set()  # so the stuck thread does not outlive the test


def test_sampler_produces_inputs(tmp_path: Path) -> None:
    clock = iter([0.0, 1.0])
    watch = DiskWatch([tmp_path])
    sampler = HealthSampler(disks=watch, clock=lambda: next(clock), serving_errors=lambda: 0.5)
    first = sampler.sample()
    second = sampler.sample()
    assert first.disks[0].in_service and first.disks[0].used_fraction is not None
    assert second.serving_error_rate == 0.5
    assert 0 <= second.cpu_percent <= 100
    assert summarise(second).state == "failing"  # 50% 5xx


def test_a_probe_killed_midway_leaves_nothing_on_the_disk(tmp_path: Path) -> None:
    """The canary is an unnamed file: SIGKILL at any moment of a probe (an `appliance load`
    killed by its user) leaves no stray file in the disk's root."""
    disk = tmp_path / "disk"
    disk.mkdir()
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom appliance.diskwatch import _probe_once\n"
        "print('ready', flush=True)\nend = time.monotonic() + 30\n"
        "while time.monotonic() < end:\n    _probe_once(Path(sys.argv[1]))\n"
    )
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", code, str(disk)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.2)  # thousands of probes by now, each mostly write-read-unlink
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert list(disk.iterdir()) == []

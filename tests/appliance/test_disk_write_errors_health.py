"""Failed data writes count against their disk (diskwatch.DiskWatch), not only failed canary
probes: one is shown, the second stops new writes there (health degraded, naming the disk),
the fifth takes the disk out as a dead one is, all within a window. The counting rule and
the attribution of an error to a disk are pure; DiskWatch runs on an injected clock with a
probe that always passes, as a disk whose small canary write works does."""

from __future__ import annotations

import errno
from pathlib import Path

from appliance.diskwatch import (
    DiskProbe,
    DiskWatch,
    Rescan,
    TakeOut,
    WriteLimits,
    with_write_errors,
    write_verdict,
)
from appliance.health import HealthSampler, summarise
from appliance.placement import blamed_disks, disk_of

LIMITS = WriteLimits()  # 2 → no writes, 5 → out, within 24 h; writes tried again after 1 h
EIO = OSError(errno.EIO, "Input/output error")


def test_one_failed_write_is_shown_the_second_stops_writes_the_fifth_takes_out() -> None:
    assert write_verdict([], 0.0, LIMITS) == "ok"
    assert write_verdict([0.0], 1.0, LIMITS) == "ok"
    assert write_verdict([0.0, 60.0], 61.0, LIMITS) == "no_writes"
    assert write_verdict([0.0, 60.0, 120.0, 180.0, 240.0], 241.0, LIMITS) == "out"


def test_writes_are_tried_again_after_a_rest_and_old_errors_age_out() -> None:
    # No errors can come while nothing is written: after rest_s, writes are tried again...
    assert write_verdict([0.0, 60.0], 60.0 + LIMITS.rest_s, LIMITS) == "ok"
    # ...and the next failure stops them at once (the earlier ones still count).
    assert write_verdict([0.0, 60.0, 4000.0], 4001.0, LIMITS) == "no_writes"
    # A disk failing again after each rest reaches the take-out within the window.
    hourly = [i * 3700.0 for i in range(5)]
    assert write_verdict(hourly, hourly[-1] + 1, LIMITS) == "out"
    # Errors spread over months never add up to a take-out.
    monthly = [i * 30 * 86400.0 for i in range(5)]
    assert write_verdict(monthly, monthly[-1] + 1, LIMITS) == "ok"
    assert write_verdict(hourly, hourly[-1] + LIMITS.window_s, LIMITS) == "ok"


def test_a_verdict_amends_only_probes_that_found_nothing_worse() -> None:
    verdicts = {"/a": ("no_writes", "2 failed"), "/b": ("out", "5 failed")}
    probes = [
        DiskProbe("/a", "ok"),
        DiskProbe("/b", "ok"),
        DiskProbe("/c", "ok"),
    ]
    amended = with_write_errors(probes, verdicts)  # type: ignore[arg-type]
    assert [(p.outcome, p.detail) for p in amended] == [
        ("write_errors", "2 failed"),
        ("io_error", "5 failed"),
        ("ok", ""),
    ]
    gone = [DiskProbe("/a", "missing", "directory is gone")]
    assert with_write_errors(gone, verdicts) == gone  # type: ignore[arg-type]


def test_an_error_counts_against_the_disk_its_path_is_on() -> None:
    disks = ["/srv/d0", "/srv/d1", "/srv/d1/inner"]
    assert disk_of("/srv/d1/.staging/t5/v0/seg.part", disks) == "/srv/d1"
    assert disk_of("/srv/d1/inner/x", disks) == "/srv/d1/inner"  # the innermost
    assert disk_of("/srv/d10/x", disks) is None  # a prefix of the name is no parent
    on_d1 = OSError(errno.EIO, "Input/output error", "/srv/d1/.staging/t5/a.part")
    # os.replace names both ends (OSError's 4th argument is winerror).
    renamed = OSError(errno.EIO, "Input/output error", "/tmp/x", None, "/srv/d0/titles/t5/a")
    assert blamed_disks([on_d1, renamed], disks) == {"/srv/d1": on_d1, "/srv/d0": renamed}
    # A full disk is no failing one; another errno is the caller's own problem.
    full = OSError(errno.ENOSPC, "No space left on device", "/srv/d0/x")
    denied = OSError(errno.EACCES, "Permission denied", "/srv/d0/x")
    assert blamed_disks([full, denied], disks) == {}
    rofs = OSError(errno.EROFS, "Read-only file system", "/srv/d0/x")
    assert blamed_disks([rofs], disks) == {"/srv/d0": rofs}


def test_an_error_without_a_path_is_blamed_only_when_one_disk_was_written() -> None:
    assert blamed_disks([EIO], ["/d0", "/d1"]) == {}
    assert blamed_disks([EIO], ["/d0", "/d1"], unnamed_to="/d1") == {"/d1": EIO}
    # A path on no written disk (the source of a tier move) is no write of theirs.
    source = OSError(errno.EIO, "Input/output error", "/d9/titles/t/a")
    assert blamed_disks([source], ["/d0"], unnamed_to="/d0") == {}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(tmp_path: Path, clock: Clock) -> tuple[DiskWatch, str, str]:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()

    def canary_passes(path: Path, held: bool) -> DiskProbe:
        return DiskProbe(str(path), "ok")

    watch = DiskWatch([good, bad], recover_after=2, probe=canary_passes, clock=clock)
    return watch, str(good), str(bad)


def test_diskwatch_counts_failed_writes_and_health_names_the_disk(tmp_path: Path) -> None:
    clock = Clock()
    watch, good, bad = _watch(tmp_path, clock)
    sampler = HealthSampler(disks=watch, clock=clock)
    assert watch.poll() == []
    sampler.sample()  # the first sample only sets the rates' baseline
    failed = OSError(errno.EIO, "Input/output error", f"{bad}/.staging/t5/v0/seg_1.m4s.part")

    # One failed write: shown (an I/O error this interval), the disk still takes writes.
    watch.write_failed(bad, failed)
    assert watch.poll() == [] and watch.not_writable() == set()
    disk = next(d for d in sampler.sample().disks if d.path == bad)
    assert (disk.io_errors, disk.write_errors, disk.writable) == (1, 1, True)

    # The second: no new writes there, health degraded with a reason naming the disk.
    clock.now += 60
    watch.write_failed(bad, failed)
    assert watch.not_writable() == {bad}  # at once, before the next poll
    assert watch.poll() == []  # it keeps serving: nothing is taken out
    health = summarise(sampler.sample())
    assert health.state == "degraded" and health.disks_out_of_service == ()
    reason = next(r for r in health.reasons if "not writable" in r)
    assert reason.startswith(f"disk {bad} not writable (write_errors: 2 I/O errors in 24 h")
    assert "Input/output error" in reason and reason.endswith("serving, no new writes")
    assert watch.statuses()[good].state == "serving"

    # The canary still passing does not give the disk its writes back before its rest...
    clock.now += 10
    watch.poll()
    assert watch.statuses()[bad].state == "read_only"
    # ...after it, writes are tried again.
    clock.now += LIMITS.rest_s
    watch.poll()
    assert watch.statuses()[bad].state == "serving" and watch.not_writable() == set()


def test_diskwatch_takes_a_disk_out_after_five_failed_writes(tmp_path: Path) -> None:
    clock = Clock()
    watch, good, bad = _watch(tmp_path, clock)
    for _ in range(4):
        watch.write_failed(bad, EIO)
        clock.now += 1
    assert watch.poll() == []
    watch.write_failed(bad, EIO)
    actions = watch.poll()
    assert len(actions) == 1 and isinstance(actions[0], TakeOut) and actions[0].path == bad
    assert "5 I/O errors in 24 h" in actions[0].reason
    assert watch.statuses()[bad].state == "out"
    # Its canary passing does not bring it back while its errors count...
    for _ in range(5):
        clock.now += 1
        assert watch.poll() == []
    assert watch.statuses()[bad].state == "out"
    # ...an hour after the last one, it is re-verified like any returned disk, and a passed
    # re-verify forgets them: one more error does not take it straight out again.
    clock.now += LIMITS.rest_s
    actions = watch.poll() + watch.poll()
    assert actions == [Rescan(bad)]
    assert watch.statuses()[good].state == "serving"
    watch.rescanned(bad, ok=True)
    assert watch.statuses()[bad].state == "serving" and watch.write_errors().get(bad, 0) == 0
    watch.write_failed(bad, EIO)
    assert watch.poll() == [] and watch.not_writable() == set()


def test_diskwatch_ignores_what_is_no_failing_disk(tmp_path: Path) -> None:
    clock = Clock()
    watch, _good, bad = _watch(tmp_path, clock)
    for _ in range(6):
        watch.write_failed(bad, OSError(errno.ENOSPC, "No space left on device"))
        # Gone read-only (an operator's remount): its canary says so; it serves on.
        watch.write_failed(bad, OSError(errno.EROFS, "Read-only file system"))
        watch.write_failed("/not/a/disk", EIO)
    assert watch.poll() == [] and watch.not_writable() == set()
    assert watch.write_errors() == {}

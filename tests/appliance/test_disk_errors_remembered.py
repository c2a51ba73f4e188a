"""A disk's I/O error counts outlive a restart (appliance/diskerrors.py): the daemon's watch
keeps them beside the index, so a disk that was held back or taken out for failing writes
still is after a restart, as health says, instead of being trusted again. They age out as
the counts in memory do, and a disk replaced meanwhile starts afresh. The "before" is a real
process recording the errors as the daemon does, SIGKILLed; the "after" is the real daemon
or its health monitor in this process."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance import diskclaim
from appliance.diskerrors import (
    FORMAT,
    ErrorMemory,
    Remembered,
    errors_file,
    parse,
    recalled,
    render,
)
from appliance.diskwatch import (
    DiskProbe,
    DiskWatch,
    ProbeOutcome,
    Rescan,
    TakeOut,
    WriteLimits,
)
from appliance.monitor import HealthMonitor
from appliance.startup import settle_store
from tests.appliance.storage_fixtures import storage_toml
from tests.integration.daemon_support import poll, start_daemon

ROOT = Path(__file__).resolve().parents[2]
LIMITS = WriteLimits()  # 2 → no writes, 5 → out, within 24 h; rest 1 h
DAY = 24 * 3600.0


# -- the file and the rules (pure) -------------------------------------------------------


def test_the_file_reads_back_what_was_written() -> None:
    records = {"/d1": Remembered("12:34", ((100.0, "Input/output error: /d1/a"), (160.0, "x")))}
    assert parse(render(records)) == records
    assert json.loads(render(records))["format"] == FORMAT


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b"\xff", b'{"disks": {}}', b'{"format": 2, "disks": {}}',
     b'{"format": 1, "disks": []}', b'{"format": "1", "disks": {}}'],
)  # fmt: skip
def test_a_damaged_or_newer_file_reads_as_no_errors(raw: bytes) -> None:
    assert parse(raw) is None


def test_unknown_keys_are_ignored_and_a_bad_entry_left_out() -> None:
    doc = {
        "format": 1,
        "later": {"anything": True},
        "disks": {
            "/d1": {"identity": None, "errors": [{"at": 5.0, "what": "x", "extra": 1},
                                                  {"at": "soon"}, 7], "new": 1},
            "/d2": {"identity": 3, "errors": []},
            "/d3": "nonsense",
        },
    }  # fmt: skip
    assert parse(json.dumps(doc).encode()) == {"/d1": Remembered(None, ((5.0, "x"),))}


def test_errors_age_out_and_a_replaced_disk_forgets_them() -> None:
    records = {
        "/same": Remembered("1:10", ((1000.0, "old"), (1000.0 + DAY - 10, "recent"))),
        "/swapped": Remembered("1:10", ((1000.0 + DAY - 10, "recent"),)),
        "/unmarked": Remembered("1:10", ((1000.0 + DAY - 10, "recent"),)),
        "/unknown_then": Remembered(None, ((1000.0 + DAY - 10, "recent"),)),
        "/unreadable": Remembered("1:10", ((1000.0 + DAY - 10, "recent"),)),
        "/gone_from_config": Remembered("1:10", ((1000.0 + DAY - 10, "recent"),)),
    }
    identities = {
        "/same": "1:10",
        "/swapped": "7:99",  # another disk's marker
        "/unmarked": None,  # a disk never claimed: a new one
        "/unknown_then": "7:99",
        "/unreadable": OSError(5, "Input/output error"),  # cannot tell: kept
    }
    counted, replaced = recalled(
        records, identities, wall_now=1000.0 + DAY, clock_now=50.0, window_s=DAY
    )
    assert counted == {
        "/same": [(40.0, "recent")],  # 10 s ago on the watch's clock; "old" is out of the window
        "/unknown_then": [(40.0, "recent")],
        "/unreadable": [(40.0, "recent")],
    }
    assert sorted(replaced) == ["/swapped", "/unmarked"]
    # An error dated after now (the wall clock set back since) counts as now.
    future = {"/same": Remembered("1:10", ((5000.0, "x"),))}
    counted, _ = recalled(future, {"/same": "1:10"}, wall_now=10.0, clock_now=50.0, window_s=DAY)
    assert counted == {"/same": [(50.0, "x")]}


# -- a restart of the daemon's watch --------------------------------------------------------


def _config(tmp: Path) -> Path:
    path = storage_toml(tmp)
    path.write_text(
        path.read_text() + '[serve]\nlisten = "127.0.0.1:0"\nworkers = 1\n'
        '[admin]\nlisten = "127.0.0.1:0"\n'
    )
    # The disks claimed, as the daemon's first start does (their markers tell them apart).
    settle_store(appliance_config.load(path), set())
    return path


def record_and_die(config: Path, disk: str, failures: int) -> None:
    """A process with the daemon's health monitor records `failures` failed data writes on
    `disk`, as the fill reports them, and is SIGKILLed: the daemon dying the hard way."""
    script = textwrap.dedent(
        f"""
        import errno, time
        from pathlib import Path
        from appliance import config
        from appliance.monitor import HealthMonitor
        monitor = HealthMonitor(config.load(Path({str(config)!r})), lambda: 0.0)
        for i in range({failures}):
            monitor.watch.write_failed({disk!r}, OSError(errno.EIO, "Input/output error",
                                       {disk!r} + f"/.staging/t/seg{{i}}.part"))
        print("recorded", flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "recorded\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)


def _monitor(config: Path) -> HealthMonitor:
    monitor = HealthMonitor(appliance_config.load(config), lambda: 0.0)
    monitor.first_sample()  # what the daemon does first, before anything serves
    return monitor


def test_a_disk_held_back_for_failing_writes_still_is_after_a_restart(tmp_path: Path) -> None:
    config = _config(tmp_path)
    bad = str((tmp_path / "hdd1").resolve())
    record_and_die(config, bad, 2)

    monitor = _monitor(config)
    assert monitor.watch.not_writable() == {bad}
    health = monitor.report().health
    assert health.state == "degraded"
    (reason,) = [r for r in health.reasons if "not writable" in r]
    assert reason.startswith(f"disk {bad} not writable (write_errors: 2 I/O errors in 24 h")
    disk = next(d for d in monitor.report().inputs.disks if d.path == bad)
    assert (disk.write_errors, disk.writable, disk.in_service) == (2, False, True)


def test_a_disk_taken_out_for_failing_writes_stays_out_after_a_restart(tmp_path: Path) -> None:
    config = _config(tmp_path)
    bad = str((tmp_path / "hdd1").resolve())
    record_and_die(config, bad, LIMITS.take_out_after)

    monitor = _monitor(config)
    health = monitor.report().health
    assert health.disks_out_of_service == (bad,)
    assert any(r.startswith(f"disk {bad} out of service: io_error: 5 I/O errors")
               for r in health.reasons)  # fmt: skip
    assert bad in monitor.out_of_service()


def test_a_replaced_disk_is_not_held_to_the_old_ones_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path)
    disk = tmp_path / "hdd1"
    bad = str(disk.resolve())
    record_and_die(config, bad, 2)
    # Another disk in its place (new to Edgeflix: no marker), claimed at the next start.
    (disk / diskclaim.MARKER).unlink()
    with caplog.at_level(logging.INFO):
        monitor = _monitor(config)
    assert monitor.watch.not_writable() == set()
    assert not [r for r in monitor.report().health.reasons if bad in r]
    said = [getattr(r, "edgeflix_fields", {}) for r in caplog.records
            if r.getMessage() == "disk.errors_forgotten"]  # fmt: skip
    assert [f["disk"] for f in said] == [bad]
    assert parse(errors_file(tmp_path / "var" / "index.sqlite").read_bytes()) == {}


def test_remembered_errors_age_as_counted_ones(tmp_path: Path) -> None:
    config = _config(tmp_path)
    bad = str((tmp_path / "hdd1").resolve())
    record_and_die(config, bad, 2)
    kept = errors_file(tmp_path / "var" / "index.sqlite")
    records = parse(kept.read_bytes())
    assert records is not None
    (record,) = records.values()
    last = record.errors[-1][0]

    # Past the rest after the last error: the disk takes writes again (its errors still
    # count within the window)...
    memory = ErrorMemory(kept, wall=lambda: last + LIMITS.rest_s + 1)
    recalled_errors = memory.recall([bad], clock_now=0.0, window_s=LIMITS.window_s)
    assert len(recalled_errors[bad]) == 2
    # ...and past the window they are gone, from the file too.
    memory = ErrorMemory(kept, wall=lambda: last + LIMITS.window_s + 1)
    assert memory.recall([bad], clock_now=0.0, window_s=LIMITS.window_s) == {}
    assert parse(kept.read_bytes()) == {}


def test_what_forgets_counted_errors_forgets_remembered_ones(tmp_path: Path) -> None:
    """A disk whose probe fails (its errors are its death's) or whose re-verify passes."""
    config = _config(tmp_path)
    bad = str((tmp_path / "hdd1").resolve())
    kept = errors_file(tmp_path / "var" / "index.sqlite")
    outcome: dict[str, ProbeOutcome] = {"now": "ok"}

    def probe(path: Path, held: bool) -> DiskProbe:
        return DiskProbe(str(path), outcome["now"] if str(path) == bad else "ok")

    def watch() -> DiskWatch:
        return DiskWatch([Path(bad)], probe=probe, recover_after=1, memory=ErrorMemory(kept))

    record_and_die(config, bad, 2)
    outcome["now"] = "missing"
    watch().poll()
    assert parse(kept.read_bytes()) == {}
    assert watch().not_writable() == set()

    record_and_die(config, bad, LIMITS.take_out_after)
    outcome["now"] = "ok"
    now = [1000.0]
    w = DiskWatch([Path(bad)], probe=probe, recover_after=1, memory=ErrorMemory(kept),
                  clock=lambda: now[0])  # fmt: skip
    assert [type(a) for a in w.poll()] == [TakeOut]  # out, as before the restart
    assert parse(kept.read_bytes()) != {}
    # After its rest its probes bring it to a re-verify, which passes: errors answered.
    now[0] += LIMITS.rest_s
    assert [type(a) for a in w.poll()] == [Rescan]
    w.rescanned(bad, ok=True)
    assert w.statuses()[bad].state == "serving"
    assert parse(kept.read_bytes()) == {}


def test_the_restarted_daemon_says_the_disk_takes_no_writes(tmp_path: Path) -> None:
    config = _config(tmp_path)
    bad = str((tmp_path / "hdd1").resolve())
    record_and_die(config, bad, 2)

    daemon = start_daemon(config)
    try:
        # Health is sampled before anything serves: said from the first /status on.
        doc = poll(daemon, lambda d: d["daemon"]["startup_check"]["state"] != "running", 20)
        assert doc is not None, "the daemon's start-up check did not end"
        assert doc["health"]["state"] != "ok", "the restarted daemon trusts the disk again"
        assert any(r.startswith(f"disk {bad} not writable") for r in doc["health"]["reasons"])
        disk = next(d for d in doc["metrics"]["disks"] if d["path"] == bad)
        assert disk["writable"] is False and disk["write_errors"] == 2
    finally:
        daemon.stop()

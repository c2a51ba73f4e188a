"""The daemon's health subsystem: a thread that probes the disks every second (DiskWatch), acts
on what it finds (a dead disk's files marked missing at once, a returned disk re-verified
before it serves), samples health every few seconds (HealthSampler + summarise) and rebuilds
the hardware profile on udev block events (DiskEvents, pyudev) or every `profile_s`.

daemon.py starts and stops it and reads `report()` for /status and the watchdog; storage
changes go through `DiskService` (store.py, fill/storage.py) on this thread only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.config import ApplianceConfig
from appliance.diskerrors import ErrorMemory, errors_file
from appliance.disks import StorageError
from appliance.diskwatch import DiskWatch, Rescan, TakeOut, fault_increase
from appliance.hardware import HardwareProfile, probe
from appliance.health import Health, HealthInputs, HealthSampler, summarise
from appliance.index import OK, disks_with_files, title_files
from edgeflix.http.stats import FAILED_PATHS_MAX, ServerStats
from edgeflix.log import event

log = logging.getLogger("appliance.monitor")


# -- serving error rate from the workers' counters (pure) -----------------------------------


def status_totals(requests: Mapping[tuple[int, str], Sequence[int]]) -> dict[int, int]:
    """Responses per status code, summed over titles (ServerStats.requests' shape)."""
    totals: dict[int, int] = {}
    for (status, _title), counts in requests.items():
        totals[status] = totals.get(status, 0) + counts[0]
    return totals


# 5xx that a client provokes by itself (a protocol version or a feature we do not speak):
# one client must not be able to turn an appliance's health to failing.
CLIENT_CAUSED_5XX = frozenset({501, 505})
# Below this many responses in an interval the share is taken over this many, so three
# requests with one error read as a hint (degraded), not as a third of all traffic failing.
MIN_SAMPLE = 20


def error_rate(prev: Mapping[int, int], cur: Mapping[int, int]) -> float:
    """Share of the responses between two snapshots that were server-side 5xx (0 when there
    were none), over at least MIN_SAMPLE responses. Counters that went backwards (a worker
    restarted before its counts were retired) count as zero, never negative."""
    delta = {s: max(n - prev.get(s, 0), 0) for s, n in cur.items()}
    total = sum(delta.values())
    if total == 0:
        return 0.0
    errors = sum(n for s, n in delta.items() if 500 <= s < 600 and s not in CLIENT_CAUSED_5XX)
    return errors / max(total, MIN_SAMPLE)


class ServingErrors:
    """The 5xx share since the previous call, from a callable returning status totals."""

    def __init__(self, totals: Callable[[], Mapping[int, int]]) -> None:
        self.totals = totals
        self._prev: Mapping[int, int] = totals()

    def __call__(self) -> float:
        cur = self.totals()
        rate, self._prev = error_rate(self._prev, cur), cur
        return rate


# -- storage side of DiskWatch's decisions ---------------------------------------------------


class DiskService:
    """Applies TakeOut / Rescan to the index through a short-lived Store (SQLite connections
    belong to their thread, and these are rare events)."""

    def __init__(self, config: ApplianceConfig) -> None:
        self.config = config

    def take_out(self, disk: str, out: set[str]) -> list[str]:
        from appliance.fill.storage import mark_disk_missing
        from appliance.store import Store

        store = Store(self.config.storage, out_of_service=out | {disk})
        try:
            return mark_disk_missing(store, disk)
        finally:
            store.close()

    def drop_unreadable(self, paths: Sequence[str], out: set[str]) -> None:
        """Mark the stored files at `paths` missing (repair.drop), each under its title's
        lock; a file no longer the one indexed there, or a title busy, is left alone."""
        from appliance.folders import folder_title
        from appliance.repair import Report, drop
        from appliance.store import Store

        store = Store(self.config.storage, out_of_service=out)
        try:
            for path in map(Path, paths):
                disk = next((d for d in store.disks if d.titles_dir in path.parents), None)
                if disk is None:
                    continue
                title_id = folder_title(path.relative_to(disk.titles_dir).parts[0])
                if title_id is None:
                    continue
                with store.locks.hold(title_id, wait=False) as held:
                    if not held:
                        continue
                    rows = title_files(store.conn, title_id)
                    found = [f for f in rows if f.location == path and f.state == OK]
                    if found:
                        why = "unreadable while serving (I/O error)"
                        drop(store, title_id, [(found[0], why)], Report())
        finally:
            store.close()

    def bring_back(self, disk: str, out: set[str]) -> tuple[list[str], list[str]]:
        """Re-hash the disk's missing files (good ones serve again), then reconcile so stale
        copies of titles re-filled elsewhere meanwhile are swept off it."""
        from appliance.fill.storage import restore_disk
        from appliance.repair import reconcile
        from appliance.store import Store

        store = Store(self.config.storage, out_of_service=out - {disk})
        try:
            ready, bad = restore_disk(store, disk)
            reconcile(store)
            return ready, bad
        finally:
            store.close()


# -- udev block events -----------------------------------------------------------------------


class DiskEvents(threading.Thread):
    """pyudev netlink monitor on subsystem 'block': add/remove/change wake the health thread
    at once. Where netlink is not available (containers, no udev) it ends at start and the
    health thread's one-second polling is all there is."""

    def __init__(self, on_event: Callable[[str, str], None]) -> None:
        super().__init__(name="udev-block", daemon=True)
        self.on_event = on_event
        self.available = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            import pyudev

            monitor = pyudev.Monitor.from_netlink(pyudev.Context())
            monitor.filter_by(subsystem="block")
            monitor.start()
        except (ImportError, OSError, ValueError) as exc:
            event(log, "udev.unavailable", reason=str(exc))
            return
        self.available = True
        while not self._stop_event.is_set():
            try:
                device = monitor.poll(timeout=0.5)
            except OSError as exc:
                event(log, "udev.failed", logging.WARNING, reason=str(exc))
                return
            if device is not None and device.action in ("add", "remove", "change"):
                self.on_event(device.action, device.sys_name)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)


# -- the health thread ------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthReport:
    profile: HardwareProfile
    inputs: HealthInputs
    health: Health
    at: float  # monotonic time of the sample


class HealthMonitor(threading.Thread):
    def __init__(
        self,
        config: ApplianceConfig,
        serving_errors: Callable[[], float],
        *,
        disk_interval_s: float = 1.0,
        sample_interval_s: float = 3.0,
        profile_s: float = 30.0,
        probe_timeout_s: float = 1.5,
        on_disk_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        serving: Callable[[], ServerStats] = ServerStats,
    ) -> None:
        """`serving()`: the workers' merged counters; each sample counts their new read
        errors against their disk, and drops the files whose reads failed."""
        super().__init__(name="health", daemon=True)
        self.serving = serving
        self._faults_seen: Mapping[int, Sequence[int]] = {}
        self._failed_seen: set[str] = set()
        self.config = config
        self.disk_interval_s = disk_interval_s
        self.sample_interval_s = sample_interval_s
        self.profile_s = profile_s
        self.on_disk_change = on_disk_change
        self.clock = clock
        self.paths = [d.path.resolve() for d in config.storage.disks]
        # Its I/O error counts outlive a restart: a disk that was failing stays held back
        # or out (diskerrors.py), not trusted again by the next start.
        self.watch = DiskWatch(
            self.paths, timeout_s=probe_timeout_s, held=disks_with_files(config.storage.index),
            memory=ErrorMemory(errors_file(config.storage.index)),
        )  # fmt: skip
        self.storage = DiskService(config)
        self.events = DiskEvents(self._udev)
        self._wake = threading.Event()
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._profile = probe(self.paths)
        self._profile_at = clock()
        self._profile_stale = False
        self.sampler = self._sampler(serving_errors)
        self._report: HealthReport | None = None
        # Take-outs whose index write failed (the index locked past its timeout): retried
        # every cycle, since the watch reports a disk going out only once.
        self._pending_out: dict[str, str] = {}
        # Re-verifying a returned disk re-hashes its files (hours for a big one): it runs in
        # its own thread, so the other disks are still probed and this thread still beats
        # (the watchdog restarts a daemon whose health thread looks stuck).
        self._rescan_lock = threading.Lock()
        self._rescanning: set[str] = set()
        self._rescan_again: set[str] = set()
        self.beat = clock()

    def _sampler(self, serving_errors: Callable[[], float]) -> HealthSampler:
        return HealthSampler(
            disks=self.watch,
            device_of={d.path: d.device for d in self._profile.disks},
            nic_speeds={n.name: n.speed_bps for n in self._profile.nics},
            serving_errors=serving_errors,
            clock=self.clock,
        )

    # -- what others ask -----------------------------------------------------------------

    def out_of_service(self) -> set[str]:
        return {p for p, s in self.watch.statuses().items() if s.state in ("out", "rescanning")}

    def report(self) -> HealthReport:
        with self._lock:
            if self._report is None:
                raise RuntimeError("health monitor has not sampled yet (call first_sample)")
            return self._report

    def fresh(self, max_age_s: float) -> bool:
        """The thread is still going round (not stuck on something): the watchdog's test."""
        return self.is_alive() and self.clock() - self.beat <= max_age_s

    # -- the loop ------------------------------------------------------------------------

    def first_sample(self) -> None:
        """Called before start(): a disk already dead at start is out before workers serve."""
        self._check_disks()
        self._publish()

    def run(self) -> None:
        self.events.start()
        next_sample = self.clock() + self.sample_interval_s
        while not self._stop_event.is_set():
            woke = self._wake.wait(self.disk_interval_s)
            self._wake.clear()
            if self._stop_event.is_set():
                break
            try:
                changed = self._check_disks()
                if woke or self._profile_stale or self.clock() - self._profile_at > self.profile_s:
                    self._reprobe()
                if changed or woke or self.clock() >= next_sample:
                    self._publish()
                    next_sample = self.clock() + self.sample_interval_s
            except (OSError, sqlite3.Error, StorageError) as exc:
                event(log, "health.cycle_failed", logging.ERROR, reason=str(exc))
            self.beat = self.clock()

    def _udev(self, action: str, device: str) -> None:
        event(log, "udev.block", action=action, device=device)
        self._profile_stale = True
        self._wake.set()

    def _check_disks(self) -> bool:
        actions = self.watch.poll()
        for action in actions:
            if isinstance(action, TakeOut):
                with self._rescan_lock:
                    self._pending_out[action.path] = action.reason
            elif isinstance(action, Rescan):
                with self._rescan_lock:
                    self._pending_out.pop(action.path, None)
                self._start_rescan(action.path)
        with self._rescan_lock:
            pending = list(self._pending_out.items())
        for path, reason in pending:
            self._take_out(path, reason)
        if actions:
            self._profile_stale = True
            self.on_disk_change()
        return bool(actions)

    def _take_out(self, disk: str, reason: str) -> None:
        """Mark the dead disk's files missing; on failure it stays pending for the next cycle."""
        try:
            titles = self.storage.take_out(disk, self.out_of_service())
        except (OSError, StorageError, sqlite3.Error) as exc:
            event(log, "disk.take_out_failed", logging.ERROR, disk=disk, error=str(exc))
            return
        with self._rescan_lock:
            self._pending_out.pop(disk, None)
        event(
            log, "disk.out_of_service", logging.ERROR, disk=disk, reason=reason, titles=len(titles)
        )

    def _start_rescan(self, disk: str) -> None:
        with self._rescan_lock:
            if disk in self._rescanning:
                # Back again while its last re-verify still runs: one more full pass after it.
                self._rescan_again.add(disk)
                return
            self._rescanning.add(disk)
        threading.Thread(
            target=self._rescan_passes, args=(disk,), name=f"rescan:{disk}", daemon=True
        ).start()

    def _rescan_passes(self, disk: str) -> None:
        while True:
            self._rescan(disk, self.out_of_service())
            with self._rescan_lock:
                if disk not in self._rescan_again or self._stop_event.is_set():
                    self._rescanning.discard(disk)
                    return
                self._rescan_again.discard(disk)

    def rescanning(self) -> set[str]:
        """Disks being re-verified in the background now."""
        with self._rescan_lock:
            return set(self._rescanning)

    def _rescan(self, disk: str, out: set[str]) -> None:
        try:
            ready, bad = self.storage.bring_back(disk, out)
        except (OSError, StorageError, sqlite3.Error) as exc:
            self.watch.rescanned(disk, ok=False, reason=f"re-verify failed: {exc}")
            event(log, "disk.rescan_failed", logging.ERROR, disk=disk, reason=str(exc))
        else:
            self.watch.rescanned(disk, ok=True)
            event(log, "disk.back_in_service", disk=disk, titles_ready=len(ready),
                  bad_files=len(bad))  # fmt: skip
        if self.watch.statuses()[disk].state == "out":
            # It died again while being re-verified, after its take-out had marked its files
            # missing: files the re-verify brought back since must be marked missing again.
            with self._rescan_lock:
                self._pending_out.setdefault(disk, "went out during its re-verify")
        self._wake.set()  # publish the change now, not at the next sample

    def _reprobe(self) -> None:
        self._profile = probe(self.paths)
        self._profile_at = self.clock()
        self._profile_stale = False
        self.sampler.device_of = {d.path: d.device for d in self._profile.disks}
        self.sampler.nic_speeds = {n.name: n.speed_bps for n in self._profile.nics}

    def _count_serving_faults(self) -> None:
        """Serving's failed reads since the last sample, counted against their disk by the
        watch. A file system several configured disks share names none of them: counted for
        none (the metrics still show it)."""
        stats = self.serving()
        self._drop_failed(stats.failed_paths)
        cur = stats.disk_faults
        grown = fault_increase(self._faults_seen, cur)
        self._faults_seen = {dev: tuple(counts) for dev, counts in cur.items()}
        if not grown:
            return
        on_dev: dict[int, list[str]] = {}
        for path in self.paths:
            with contextlib.suppress(OSError):
                on_dev.setdefault(os.stat(path).st_dev, []).append(str(path))
        for dev, errors in grown.items():
            named = on_dev.get(dev, [])
            if len(named) == 1:
                event(log, "disk.read_errors", logging.WARNING, disk=named[0], errors=errors)
                self.watch.read_failed(named[0], errors)

    def _drop_failed(self, paths: Sequence[str]) -> None:
        """Files whose reads failed while serving are dropped once (deleted, 404 from then
        on, so players move on, and the fill fetches them again), not answered 500 at every
        request until the scrub reaches them."""
        new = [p for p in paths if p not in self._failed_seen]
        if not new:
            return
        if len(self._failed_seen) > 4 * FAILED_PATHS_MAX:
            self._failed_seen.clear()  # a bound; the workers list only their newest
        try:
            self.storage.drop_unreadable(new, self.out_of_service())
        except (OSError, StorageError, sqlite3.Error) as exc:
            event(log, "disk.drop_failed", logging.ERROR, files=len(new), error=str(exc))
            return  # tried again at the next sample
        self._failed_seen.update(new)

    def _publish(self) -> None:
        self._count_serving_faults()
        inputs = self.sampler.sample()
        health = summarise(inputs)
        with self._lock:
            before = self._report.health.state if self._report else None
            self._report = HealthReport(self._profile, inputs, health, self.clock())
        if health.state != before:
            event(log, "health.changed", state=health.state, reasons=list(health.reasons))

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        self._wake.set()
        self.events.stop()
        if self.is_alive():
            self.join(timeout)

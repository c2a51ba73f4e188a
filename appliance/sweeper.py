"""The running daemon's reconcile (appliance/repair.py), every few minutes in the background:
what a one-off command killed mid-way left on the disks (an unfinished version's folder of
`load --replace`, a title stuck loading or half removed) goes without waiting for the next
start, so its space comes back and the accounting matches the disks. Titles another process
is working on are skipped (their lock), as every reconcile does. Files an I/O error had
dropped that are whole on their disk again serve again (adopt.Readopt, a budget per round):
without it only a restart or a fill would bring them back. The temporary file of a disk's
marker that a command killed while claiming the disk left goes too (diskclaim): the daemon's
own state files are swept at its start (startup.sweep_state_temporaries).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from appliance.config import StorageConfig
from appliance.disks import SYSFS, StorageError
from edgeflix.log import event

log = logging.getLogger("appliance.sweeper")


class SweepThread(threading.Thread):
    """Runs `repair.reconcile` every `storage.reconcile_interval_s` until `stop()`."""

    def __init__(
        self, config: StorageConfig, *, out_of_service: Callable[[], set[str]] = set
    ) -> None:
        super().__init__(name="sweeper", daemon=True)
        self._config, self._out_of_service = config, out_of_service
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._config.reconcile_interval_s):
            try:
                self.sweep()
            except (StorageError, sqlite3.Error, OSError) as exc:
                event(log, "sweep.failed", logging.WARNING, reason=str(exc))

    def sweep(self) -> None:
        from appliance import diskclaim
        from appliance.adopt import Readopt
        from appliance.diskwatch import probe_disks, unusable
        from appliance.repair import reconcile
        from appliance.store import Store

        # A store per round, made on this thread (SQLite), leaving out the disks the health
        # monitor holds out of service now (their files are its take-out's and re-scan's),
        # and any a probe of our own finds failing: the monitor notices a dead or unmounted
        # disk within a second, and a reconcile in that second would drop its files.
        probed = unusable(probe_disks([d.path for d in self._config.disks], self._config.index))
        out = self._out_of_service() | set(probed)
        store = Store(self._config, out_of_service=out, sysfs=SYSFS)
        # A disk the monitor takes out during the round keeps its files missing.
        readopt = Readopt(out_of_service=lambda: self._out_of_service() | set(probed))
        try:
            diskclaim.sweep_temporaries(store.disks, store.locks.store_wide(diskclaim.LOCK))
            # Stopping ends the round at its next title, and the wait before unreadable
            # files are looked at again.
            report = reconcile(
                store, stop=self._stop_event.is_set, wait=self._stop_event.wait, readopt=readopt
            )
        finally:
            store.close()
        if report.findings or readopt.files:
            event(log, "sweep.done", findings=len(report.findings), busy=len(report.busy),
                  readopted=readopt.files, ready_again=len(readopt.titles))  # fmt: skip

    def stop(self, timeout: float = 30.0) -> None:
        self._stop_event.set()
        self.join(timeout)

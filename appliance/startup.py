"""The appliance daemon's start-up reconcile: settled from the index alone before anything
serves (repair.settle), then the walk over every stored file in the background once the
daemon serves (StartupCheck), after which the subsystems that need a checked store start.
Before the settle, the temporary files of its state that a killed daemon left are swept
(sweep_state_temporaries).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeflix.errors import EdgeflixError
from edgeflix.log import event

if TYPE_CHECKING:
    from appliance.config import ApplianceConfig, StorageConfig
    from appliance.findings import Report
    from appliance.store import Store

log = logging.getLogger("appliance.daemon")  # the daemon's own lines, as before the split


def settle_store(config: ApplianceConfig, out_of_service: set[str]) -> Report:
    """Open the store on the disks in service (creates the index) and settle it: what must be
    right before anything serves, found in the index alone (repair.settle). The rest of the
    start-up reconcile is StartupCheck's, once the daemon serves. First, what killed writers
    left of the daemon's state and the disks' markers is swept."""
    from appliance import diskclaim
    from appliance.repair import settle
    from appliance.store import Store

    sweep_state_temporaries(config)
    store = Store(config.storage, out_of_service=out_of_service)
    try:
        # Markers a command killed while claiming a disk left (the periodic sweeper's too).
        diskclaim.sweep_temporaries(store.disks, store.locks.store_wide(diskclaim.LOCK))
        return settle(store)  # it logs what it found, summarised per title and disk
    finally:
        store.close()


def state_files(config: ApplianceConfig) -> dict[Path, tuple[str, ...]]:
    """Folder → the files the daemon alone writes there with write_atomic, under its locks
    (daemon.single_instance): the disks' error memory beside the index, and the fleet
    link's state, whose lock is held only with a [fleet] url."""
    from appliance.diskerrors import errors_file

    memory = errors_file(config.storage.index)
    folders: dict[Path, tuple[str, ...]] = {memory.parent: (memory.name,)}
    if config.fleet.url is not None:
        from appliance import fleetlink_files as f

        # Every JSON file of the link has its format there; the keys and certificate not.
        names = {*f.FORMATS, f.KEY_FILE, f.TLS_KEY_FILE, f.TLS_CERT_FILE}
        folders[config.fleet_state_dir()] = tuple(sorted(names))
    return folders


def sweep_state_temporaries(config: ApplianceConfig) -> list[Path]:
    """Remove the temporary files of the daemon's own state that a daemon killed mid-write
    left (write_atomic's `.<name>.<random>.tmp`). At start, under the daemon's locks and
    before anything of it writes: none is in progress, whatever its age. Only those names
    are touched; a folder that cannot be read is said and left."""
    from edgeflix.atomicfile import sweep_temporaries

    removed: list[Path] = []
    for folder, names in state_files(config).items():
        try:
            removed += sweep_temporaries(folder, names)
        except OSError as exc:
            event(log, "state.sweep_failed", logging.WARNING, folder=str(folder),
                  error=exc.strerror or str(exc))  # fmt: skip
    for path in removed:
        event(log, "state.temporary_swept", folder=str(path.parent), file=path.name)
    return removed


def restore_disks(store: Store, stop: Callable[[], bool] = lambda: False) -> list[str]:
    """Re-verify the files marked missing on the store's disks in service (restore_disk): a
    disk back, or files an older Edgeflix could not find, serve again once their bytes
    check out. Before repair.reconcile, as the daemon's start and `appliance reconcile` do.
    Returns the titles ready again."""
    from appliance.fill.storage import restore_disk
    from appliance.index import MISSING

    restored: list[str] = []
    for disk in store.disks:
        if stop():
            break
        row = store.conn.execute(
            "SELECT 1 FROM files WHERE disk = ? AND state = ? LIMIT 1", (disk.id, MISSING)
        ).fetchone()
        if row:
            ready, bad = restore_disk(store, disk.id)
            event(log, "store.restored", disk=disk.id, titles=len(ready), bad=len(bad))
            restored += ready
    return sorted(set(restored))


class StartupCheck(threading.Thread):
    """The start-up reconcile's walk, in the background once the daemon serves: a stat per
    stored file takes seconds at 500k files with a warm cache, far longer cold on disks, and
    nothing was served meanwhile when it ran first. Disks back in service get their missing
    files re-verified (restore_disks: before the walk, which would sweep them away), then
    repair.reconcile checks every file's size and sweeps what the index does not place
    (unfinished versions, partial files, strays) and aligns tier labels. Until it has reached
    a file, a request for it is safe anyway: the server compares the size of each file it
    opens with the index's, so a missing or cut-short file is a 404, never a wrong body.
    Then `then` starts what must find a checked store, once, unless the daemon is stopping."""

    def __init__(
        self,
        config: StorageConfig,
        out_of_service: Callable[[], set[str]],
        settled: Report,
        then: Callable[[], None],
    ) -> None:
        super().__init__(name="startup-check", daemon=True)
        self._config, self._out_of_service = config, out_of_service
        self._settled, self._then = settled, then
        self._halted = threading.Event()
        self._then_lock = threading.Lock()  # `then` runs whole or not at all once halted
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {
            "state": "running",  # then done, stopped (the daemon was) or failed
            "started": time.time(),
            "finished": None,
            "titles": None,  # to check, once known
            "titles_checked": 0,
            "checked_files": None,
            "findings": None,
            "lost": None,
            "error": None,
        }

    def status(self) -> dict[str, Any]:
        """For /status: whether the check still runs, how far it got, what it found."""
        with self._lock:
            return dict(self._status)

    def halt(self) -> None:
        """The daemon stops: the walk ends at its next title, and `then` never runs after
        this returns (one already running has finished)."""
        self._halted.set()
        with self._then_lock:
            pass

    def run(self) -> None:
        began = time.monotonic()
        try:
            report = self._check()
        except Exception as exc:  # logged and shown (not only on stderr); the rest must start
            reason = str(exc) if isinstance(exc, (EdgeflixError, OSError)) else repr(exc)
            self._update(state="failed", finished=time.time(), error=reason)
            event(log, "store.check_failed", logging.ERROR, reason=reason,
                  action="the sweeper checks again every reconcile_interval_s")  # fmt: skip
        else:
            self._report(report, time.monotonic() - began)
        with self._then_lock:
            if self._halted.is_set():
                return
            try:
                self._then()
            except Exception as exc:  # a thread's error would otherwise only reach stderr
                self._update(error=f"background subsystems did not start: {exc!r}")
                event(log, "appliance.subsystems_failed", logging.ERROR, reason=repr(exc))

    def _check(self) -> Report:
        from appliance.repair import reconcile
        from appliance.store import Store

        store = Store(self._config, out_of_service=self._out_of_service())
        try:
            restore_disks(store, self._halted.is_set)
            return reconcile(
                store, stop=self._halted.is_set, progress=self._progress, wait=self._halted.wait
            )
        finally:
            store.close()

    def _progress(self, done: int, total: int) -> None:
        self._update(titles=total, titles_checked=done)

    def _report(self, report: Report, seconds: float) -> None:
        """Totals of both parts (reconcile logged each finding, summarised): one line."""
        found = [*self._settled.findings, *report.findings]
        lost = sum(1 for f in found if f.damage)
        with self._lock:
            status = self._status
            if not report.stopped:  # every title checked (None: there was none to check)
                total = status["titles"] or 0
                status.update(titles=total, titles_checked=total)
            status["state"] = "stopped" if report.stopped else "done"
            status.update(finished=time.time(), checked_files=report.checked_files,
                          findings=len(found), lost=lost)  # fmt: skip
        event(log, "store.reconciled", logging.WARNING if lost else logging.INFO,
              findings=len(found), lost=lost, titles=len({f.title for f in found if f.title}),
              files=report.checked_files, busy=len(report.busy), seconds=round(seconds, 2),
              complete=not report.stopped)  # fmt: skip

    def _update(self, **fields: Any) -> None:
        with self._lock:
            self._status.update(fields)

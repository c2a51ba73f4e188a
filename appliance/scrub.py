"""The background scrub: every stored file re-hashed, slowly and without end, so damage that
keeps a file's size (a sector read back wrong, bytes rewritten behind the daemon's back) is
found between `appliance verify` runs instead of being served until then. A damaged file is
dropped as verify drops it (missing, its title incomplete): players fail over for it and the
next fill fetches the title again.

The core (`scrub_step`) walks the index in (title, path) order from a cursor kept in the index
itself, so a restart resumes where the last one stopped; it reads at most a byte budget per
step, throttled, and skips what another process holds (a load, a move, a removal) until the
next pass. A file that cannot be read is read once more after a short wait before it is
dropped (repair.check_twice): a brief I/O error must not cost a title its files. `ScrubThread`
is the daemon's shell around it, at idle I/O priority.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import psutil

from appliance.config import StorageConfig
from appliance.disks import SYSFS, StorageError
from appliance.index import INCOMPLETE, OK, READY, FileRow, query_read_only, transaction
from appliance.repair import Report, check_content, check_twice, drop
from appliance.safefiles import Throttle
from appliance.store import Store
from edgeflix.log import event
from edgeflix.metrics import Sample

log = logging.getLogger("appliance.scrub")
_BATCH = 256  # index rows read per query


@dataclass(frozen=True)
class ScrubState:
    """Where the scrub is: the last file it reached, whole passes done, damaged files found."""

    title: str = ""
    path: str = ""
    passes: int = 0
    bad: int = 0

    @property
    def position(self) -> str:
        return f"{self.title}/{self.path}" if self.title else ""


def load_state(conn: sqlite3.Connection) -> ScrubState | None:
    """The saved state (the `scrub` table index.py makes with the writer's connection), or
    None when no scrub has run here. Readers that only look go through `status`."""
    row = conn.execute("SELECT title, path, passes, bad FROM scrub WHERE id = 0").fetchone()
    return ScrubState(*row) if row else None


def status(config: StorageConfig) -> dict[str, Any]:
    """The scrub's part of the appliance's status document."""
    rows = query_read_only(config.index, "SELECT title, path, passes, bad FROM scrub")
    state = ScrubState(*rows[0]) if rows else ScrubState()
    return {
        "bytes_per_s": config.scrub_bytes_per_s,
        "passes": state.passes,
        "position": state.position,
        "bad_files": state.bad,
    }


def metric_families(config: StorageConfig) -> list[tuple[str, str, str, list[Sample]]]:
    """The scrub's Prometheus families for the admin /metrics (from the saved state)."""
    doc = status(config)
    p = "edgeflix_appliance_scrub_"
    return [
        (p + "passes_total", "counter", "Whole passes of the background scrub over the store.",
         [Sample({}, doc["passes"])]),
        (p + "damaged_files_total", "counter",
         "Stored files the scrub found damaged and dropped (their titles are filled again).",
         [Sample({}, doc["bad_files"])]),
    ]  # fmt: skip


def save_state(conn: sqlite3.Connection, state: ScrubState) -> None:
    with transaction(conn) as tx:
        tx.execute(
            "INSERT OR REPLACE INTO scrub (id, title, path, passes, bad) VALUES (0, ?, ?, ?, ?)",
            (state.title, state.path, state.passes, state.bad),
        )


def _files_after(conn: sqlite3.Connection, title: str, path: str) -> list[FileRow]:
    rows = conn.execute(
        "SELECT f.title, f.path, f.disk, f.size, f.sha256, f.mtime_ns, f.state, "
        "COALESCE(t.folder, t.id) FROM files f JOIN titles t ON t.id = f.title "
        "WHERE (f.title, f.path) > (?, ?) AND f.state = ? AND t.state IN (?, ?) "
        "ORDER BY f.title, f.path LIMIT ?",
        (title, path, OK, READY, INCOMPLETE, _BATCH),
    ).fetchall()
    return [FileRow(*row) for row in rows]


def _still_stored(conn: sqlite3.Connection, f: FileRow) -> bool:
    """The row as read before the title's lock was taken still describes the file: no
    update, move or drop got in between."""
    row = conn.execute(
        "SELECT f.disk, f.sha256, f.state, COALESCE(t.folder, t.id) FROM files f "
        "JOIN titles t ON t.id = f.title WHERE f.title = ? AND f.path = ?",
        (f.title, f.path),
    ).fetchone()
    return row == (f.disk, f.sha256, OK, f.folder)


def scrub_step(
    store: Store,
    state: ScrubState,
    budget_bytes: int,
    throttle: Throttle | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    wait: Callable[[float], object] = time.sleep,
) -> tuple[ScrubState, Report]:
    """Check files from `state`'s cursor on until `budget_bytes` are read or the pass ends
    (the cursor then goes back to the start); returns the new state and what was found.
    `wait` passes the time before an unreadable file is read again."""
    report = Report()
    title, path, passes, bad = state.title, state.path, state.passes, state.bad
    spent = 0
    on_chunk = throttle.consume if throttle else None
    while spent < budget_bytes and not should_stop():
        batch = _files_after(store.conn, title, path)
        if not batch:
            if title:  # the end of a pass (else: nothing stored)
                title, path, passes = "", "", passes + 1
                event(log, "scrub.pass", passes=passes, bad=bad)
            break
        for f in batch:
            title, path = f.title, f.path
            if f.disk in store.out_of_service:
                # The daemon re-verifies a disk that comes back.
                report.unchecked[f.disk] = report.unchecked.get(f.disk, 0) + 1
                continue
            with store.locks.hold(f.title, wait=False) as held:
                if not held or not _still_stored(store.conn, f):
                    # Being loaded, moved or removed: checked on the next pass.
                    if f.title not in report.busy:
                        report.busy.append(f.title)
                    continue
                problem = check_twice(partial(check_content, f, on_chunk), wait)
                report.checked_files += 1
                report.checked_bytes += f.size
                spent += f.size
                if problem:
                    bad += 1
                    drop(store, f.title, [(f, problem)], report)
            if spent >= budget_bytes or should_stop():
                break
    return ScrubState(title, path, passes, bad), report


class ScrubThread(threading.Thread):
    """Runs `scrub_step` in slices of `slice_s` at `storage.scrub_bytes_per_s` until `stop()`.
    After a whole pass it rests `pass_rest_s` (a small store is not re-read every slice), or
    one slice when the pass skipped files; after a slice that failed, it rests a slice."""

    def __init__(
        self,
        config: StorageConfig,
        *,
        out_of_service: Callable[[], set[str]] = set,
        slice_s: float = 30.0,
        pass_rest_s: float = 3600.0,
    ) -> None:
        super().__init__(name="scrub", daemon=True)
        self._config, self._out_of_service = config, out_of_service
        self._slice, self._pass_rest = slice_s, pass_rest_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        _idle_io_priority()
        rate = self._config.scrub_bytes_per_s
        throttle = Throttle(rate, sleep=self._rest)
        skipped = 0  # files of this pass not checked: busy, or on a disk out of service
        while not self._stop_event.is_set():
            try:
                report, pass_done = self._slice_once(throttle, int(rate * self._slice))
            except (StorageError, sqlite3.Error, OSError) as exc:
                event(log, "scrub.failed", logging.WARNING, reason=str(exc))
                self._rest(self._slice)
                continue
            skipped += len(report.busy) + sum(report.unchecked.values())
            if pass_done:
                # A pass that skipped files comes round again soon, not after the long rest.
                self._rest(self._slice if skipped else self._pass_rest)
                throttle = Throttle(rate, sleep=self._rest)  # the rest is not caught up on
                skipped = 0

    def _slice_once(self, throttle: Throttle, budget: int) -> tuple[Report, bool]:
        """One step, and whether it finished a pass (or found nothing stored)."""
        # A store per slice: disks the health monitor took out or gave back are seen, and
        # the SQLite connection is made on this thread.
        store = Store(self._config, out_of_service=self._out_of_service(), sysfs=SYSFS)
        try:
            before = load_state(store.conn) or ScrubState()
            state, report = scrub_step(
                store, before, budget, throttle, self._stop_event.is_set, self._rest
            )
            save_state(store.conn, state)
        finally:
            store.close()
        if report.busy or report.unchecked:
            event(log, "scrub.skipped", busy=",".join(report.busy),
                  out_of_service=sum(report.unchecked.values()))  # fmt: skip
        return report, not state.title and not self._stop_event.is_set()

    def _rest(self, seconds: float) -> None:
        self._stop_event.wait(seconds)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop_event.set()
        self.join(timeout)


def _idle_io_priority() -> None:
    """This thread's disk reads at idle priority, where the kernel's I/O scheduler honours
    it (BFQ): serving's reads go first."""
    # Not Linux, or not allowed: the throttle still bounds the rate.
    with contextlib.suppress(OSError, psutil.Error, AttributeError):
        psutil.Process(threading.get_native_id()).ionice(psutil.IOPRIO_CLASS_IDLE)

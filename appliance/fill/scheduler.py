"""The daemon's fill scheduler: holds the current fill plan and runs FillRun (runner.py) inside
the plan's window, in its own thread with its own event loop.

A plan arrives by `submit_plan()` (the fleet link will call it) or from `[fill] plan`, re-read
when the file's mtime changes. A run starts when the window is open; the Pacer inside the run
pauses downloads at the window's close and resumes them at the next opening. After a run the
next one is due at the next window (or `recheck_s` later without a window), sooner when the
plan changes or `kick()` says storage changed (a disk lost: its titles are re-filled onto the
disks left, in the open window or the next), or a minute after a failed run (backing off) when
the window is still open then. `next_due` and `start_at` are the pure rules.
The clock is injected: tests set it and `wake()` the loop instead of sleeping. Windows are
judged at that clock plus the fleet link's correction (`set_clock_correction`: the fleet's
time, when this box's clock is off), for the run's start and its Pacer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.config import ApplianceConfig
from appliance.fill.downloader import Pacer
from appliance.fill.plan import FillPlan, PlanError, load_plan
from appliance.fill.redact import redact
from appliance.fill.runner import FillReport, FillRun, peer_waiting, tuning
from appliance.fill.storage import StoreStorage
from appliance.store import Store
from edgeflix.errors import EdgeflixError
from edgeflix.fillwindow import FillWindow, fleet_now
from edgeflix.log import event

log = logging.getLogger("appliance.fill")
RETRY_AFTER_ERROR_S = 60.0  # after the first failed run in a row; doubling from there
RETRY_MAX_S = 3600.0


def start_at(window: FillWindow | None, now: datetime) -> datetime:
    """When a due run may start: now inside the window (or without one), else its opening."""
    return now if window is None else window.next_open(now)


def retry_delay_s(failures: int) -> float:
    """How long after the `failures`-th failed run in a row to try again: a minute, doubling,
    at most an hour (a corrupt source is not re-downloaded every minute all night)."""
    return min(RETRY_AFTER_ERROR_S * 2 ** min(max(failures - 1, 0), 32), RETRY_MAX_S)


def next_due(
    window: FillWindow | None,
    finished: datetime,
    recheck_s: float,
    retry_s: float | None = None,
) -> datetime:
    """After a run that finished at `finished`: the next window's opening (a run that ended
    inside a window waits for the following one), or `recheck_s` later without a window.
    A failed run (`retry_s` given) is tried again `retry_s` later when that is still inside
    the window it ended in: an origin down for a minute at the window's start must not cost
    the whole night."""
    # None without a window, and for 00:00-24:00, which never closes: the same rules.
    close = window.next_close(finished) if window is not None else None
    if retry_s is not None:
        soon = finished + timedelta(seconds=retry_s)
        if window is None or close is None:
            return soon
        if window.is_open(finished) and soon < close:
            return soon
    if window is None or close is None:
        return finished + timedelta(seconds=recheck_s)
    if window.is_open(finished):
        return window.next_open(close)
    return window.next_open(finished)


def latest_due(window: FillWindow | None, now: datetime, recheck_s: float) -> datetime:
    """The furthest ahead a due run can lie at `now`: where `next_due` puts the next run after
    one finishing now (after a failed one, at most `RETRY_MAX_S` later, as without a window).
    A due run further ahead was set before the clock was stepped back (NTP, a box without an
    RTC): kept, it would skip every fill until the clock got there again, whole nights."""
    return next_due(window, now, max(recheck_s, RETRY_MAX_S))


class ServiceStorage(StoreStorage):
    """StoreStorage on the disks in service only (the health monitor's view at run start)."""

    def __init__(
        self,
        config: ApplianceConfig,
        out_of_service: Callable[[], set[str]],
        not_writable: Callable[[], set[str]] = set,
    ) -> None:
        super().__init__(config.storage, not_writable)
        self._out = out_of_service

    def _open(self) -> Store:
        return Store(self.config, out_of_service=self._out())


@dataclass
class _Schedule:
    plan: FillPlan | None = None
    source: str | None = None  # the plan file, or "submitted"
    due: datetime | None = None  # a run is due at (or after) this instant
    running: bool = False
    runs: int = 0
    failures: int = 0  # failed runs in a row (an error, or titles that failed)
    last_error: str | None = None
    last_report: dict[str, Any] | None = None


class FillScheduler:
    def __init__(
        self,
        config: ApplianceConfig,
        out_of_service: Callable[[], set[str]] = set,
        *,
        plan_file: Path | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        recheck_s: float = 3600.0,
        poll_s: float = 1.0,
        not_writable: Callable[[], set[str]] = set,
        on_write_error: Callable[[str, OSError], None] | None = None,
    ) -> None:
        """`not_writable` and `on_write_error`: the health monitor's disks whose writes
        fail, and where a run reports a failed write (diskwatch.DiskWatch). `now`: this
        box's clock (`now()` adds the fleet link's correction)."""
        self.config = config
        self.out_of_service = out_of_service
        self.not_writable = not_writable
        self.on_write_error = on_write_error
        self.plan_file = plan_file
        self._clock = now
        # Seconds the fleet's clock reads ahead of this box's (the fleet link's correction).
        self.clock_correction = 0.0
        self.recheck_s = recheck_s
        self.poll_s = poll_s
        self._sched = _Schedule()
        self._plan_stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="fill-scheduler", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._started = threading.Event()

    # -- what others call (any thread) ------------------------------------------------------

    def now(self) -> datetime:
        """The time windows are judged at: this box's clock plus the fleet link's correction,
        as the sites' windows are the fleet manager's (edgeflix.fillwindow.fleet_now)."""
        return fleet_now(self._clock(), self.clock_correction)

    def set_clock_correction(self, correction: float) -> None:
        """The fleet link learned (or dropped) how far this box's clock is off the fleet's:
        windows go by the fleet's time from now on, a running fill's Pacer too. A run not
        running is due now, in the open or next window: its due time was read off the old
        time (a plan submitted at the box's 07:00 is not due at the fleet's 07:00), and
        another run finds what is done and fetches only the rest."""
        if not math.isfinite(correction):
            raise ValueError(f"clock correction {correction!r} is not a number")
        with self._lock:
            if correction == self.clock_correction:
                return
            self.clock_correction = correction
            now, s = self.now(), self._sched
            if s.plan is not None and not s.running:
                s.due = now
        event(log, "fill.clock_corrected", offset_s=round(correction, 3), now=now.isoformat())
        self.wake()

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit_plan(self, plan: FillPlan, source: str = "submitted") -> None:
        """Take a new plan; a run for it is due now (it starts once the window is open)."""
        with self._lock:
            self._sched.plan, self._sched.source = plan, source
            self._sched.due, self._sched.failures = self.now(), 0
        event(log, "fill.plan", source=source, titles=len(plan.titles), window=plan.window)
        self.wake()

    def watch(self, plan_file: Path | None) -> None:
        """Follow another plan file (a SIGHUP changed `[fill] plan`)."""
        with self._lock:
            self.plan_file, self._plan_stamp = plan_file, None
        self.wake()

    def kick(self) -> None:
        """Storage changed (a disk out or back): reconcile again in the open or next window."""
        with self._lock:
            if self._sched.plan is not None:
                self._sched.due = self.now()  # during a run: another one right after it
        self.wake()

    def wake(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(wake.set)

    def state(self) -> dict[str, Any]:
        with self._lock:
            s = self._sched
            window = s.plan.fill_window() if s.plan else None
            now = self.now()
            return {
                "plan": s.source,
                "titles": [t.id for t in s.plan.titles] if s.plan else [],
                "window": s.plan.window if s.plan else None,
                "window_open": window.is_open(now) if window else True,
                "next_run": s.due.isoformat() if s.due and not s.running else None,
                "running": s.running,
                "runs": s.runs,
                "last_error": s.last_error,
                # Windows are judged at this box's clock plus this (the fleet's time).
                "clock_correction_s": round(self.clock_correction, 1),
            }

    # -- the scheduler thread ---------------------------------------------------------------

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._started.set()
        while not self._stopping:
            try:
                if await self._turn():
                    continue
            except Exception as exc:  # this thread is the daemon's only fill: it must not die
                self._failed_turn(exc)
            await self._nap()

    async def _turn(self) -> bool:
        """Read the plan file; run a fill when one is due and the window is open. True when
        a run happened (look again at once), False to nap."""
        self._read_plan_file()
        now = self._due_after_clock_step()
        plan, due = self._sched.plan, self._sched.due
        ready = plan is not None and due is not None and now >= due
        if plan is not None and ready and start_at(plan.fill_window(), now) <= now:
            await self._run(plan)
            return True
        return False

    def _due_after_clock_step(self) -> datetime:
        """Reads the clock once; a due run further ahead than it can be (`latest_due`) is
        due now: the clock went back, and whether the fill ran for this window is unknown
        (another run finds what is done and fetches only the rest). Returns the reading."""
        now = self.now()
        with self._lock:
            s = self._sched
            if s.plan is None or s.due is None:
                return now
            latest = latest_due(s.plan.fill_window(), now, self.recheck_s)
            if s.due <= latest:
                return now
            was, s.due = s.due, now
        event(
            log,
            "fill.clock_stepped_back",
            logging.WARNING,
            due=was.isoformat(),
            now=now.isoformat(),
            action="the run is due now, in the open or next window",
        )
        return now

    def _failed_turn(self, exc: Exception) -> None:
        """A bug or an unforeseen error in a turn: logged, shown in status, and the plan is
        tried again later rather than in a tight loop."""
        reason = redact(str(exc) if isinstance(exc, EdgeflixError) else repr(exc))
        event(log, "fill.scheduler_error", logging.ERROR, reason=reason)
        with self._lock:
            s = self._sched
            s.running, s.last_error = False, reason
            if s.plan is not None and s.due is None:
                with contextlib.suppress(Exception):  # the clock itself may be what failed
                    s.due = self.now() + timedelta(seconds=RETRY_AFTER_ERROR_S)

    async def _nap(self) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_s)
        self._wake.clear()

    def _read_plan_file(self) -> None:
        path = self.plan_file
        if path is None:
            return
        try:
            st = path.stat()
        except OSError:
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._plan_stamp:
            return
        self._plan_stamp = stamp
        try:
            plan = load_plan(path)
        except PlanError as exc:
            reason = redact(str(exc))  # it may quote a source of the plan
            with self._lock:
                self._sched.last_error = reason
            event(log, "fill.plan_rejected", logging.ERROR, reason=reason)
            return
        self.submit_plan(plan, str(path))

    async def _run(self, plan: FillPlan) -> None:
        """One FillRun; a new plan cancels it (downloads resume later from their .part)."""
        with self._lock:
            self._sched.running, self._sched.due = True, None
        pacer = Pacer(cap_bps=plan.cap_bps, window=plan.fill_window(), now=self.now)
        storage = ServiceStorage(self.config, self.out_of_service, self.not_writable)
        policy, timeouts = tuning(self.config.fill)
        run = FillRun(
            plan, storage, self.config.fill.staging, pacer, policy, timeouts,
            peer_wait=peer_waiting(self.config.fill), on_write_error=self.on_write_error,
        )  # fmt: skip
        task = asyncio.create_task(run.run())
        error: str | None = None
        report: FillReport | None = None
        while not task.done():
            await self._nap()
            self._read_plan_file()
            if self._stopping or self._sched.plan is not plan:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                event(log, "fill.run_cancelled", reason="stop" if self._stopping else "new plan")
                break
        else:
            try:
                report = task.result()
            except Exception as exc:  # the scheduler outlives any one run; the log says why
                error = redact(str(exc) if isinstance(exc, EdgeflixError) else repr(exc))
                event(log, "fill.run_failed", logging.ERROR, reason=error)
        finished = self.now()
        with self._lock:
            s = self._sched
            s.running = False
            s.runs += 1
            failed = error is not None
            if report is not None:
                failed = bool(report.failed)
                s.last_error = f"{len(report.failed)} titles failed" if failed else None
                s.last_report = report.as_json()
            elif error is not None:
                s.last_error = error
            if report is not None or error is not None:  # not a cancelled run
                s.failures = s.failures + 1 if failed else 0
            if s.plan is plan and s.due is None:
                retry_s = retry_delay_s(s.failures) if failed else None
                s.due = next_due(plan.fill_window(), finished, self.recheck_s, retry_s)

"""One fill run: reconcile the plan with the titles held, download each missing title into
staging (downloader.py), hand the complete folder to the storage side (the same operation as
`appliance load --from DIR`, so a title becomes servable only when all of it is verified),
then delete what the plan no longer wants. A title whose site peer lacks it yet (still
filling it from the origin) is deferred: the other titles go first, and it comes back after
its wait (peerwait.py decides, a bounded number of times). Progress is kept in
staging/state.json for `appliance status`. The storage side is reached through the small
`Storage` protocol.

Each file is staged on the disk it will be stored on (layout.py), so the hand-off renames
it into the store: no second write or hash, and a title being updated is out of service
only for the renames. A disk whose writes fail (EIO, EROFS) is reported (`on_write_error`,
the daemon's diskwatch.DiskWatch), its staging of the title dropped, and given up for the rest
of the run: the title is tried again on the other disks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import itertools
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from appliance.config import FillConfig
from appliance.fill.downloader import FillError, Pacer, PeerNotReady, TitleFetcher, TitleProgress
from appliance.fill.layout import StagingLayout
from appliance.fill.peerwait import PeerWaitPolicy
from appliance.fill.plan import FillPlan
from appliance.fill.reconcile import reconcile
from appliance.fill.redact import redact
from appliance.fill.retry import RetryPolicy
from appliance.fill.transport import Pool, Timeouts
from appliance.placement import blamed_disks
from edgeflix.errors import EdgeflixError
from edgeflix.log import event
from edgeflix.titlefiles import TitleFiles

log = logging.getLogger("appliance.fill")
STATE_FILE = "state.json"
T = TypeVar("T")


class Storage(Protocol):
    def held(self) -> dict[str, str]:
        """Servable titles → files.json digest."""
        ...

    def staging(self, title_id: str, folder: Path) -> StagingLayout:
        """Where the title's files should wait: `folder` for files.json, each file on the
        disk it will be stored on."""
        ...

    def check_room(self, title_id: str, model: TitleFiles, staged: StagingLayout) -> None:
        """Raise (an EdgeflixError) when the title cannot fit: asked before downloading."""
        ...

    def reuse(self, title_id: str, model: TitleFiles, staged: StagingLayout) -> int:
        """Stage, verified, the files of `model` the appliance already stores the same (an
        update of a held title): they need no download. Returns their bytes."""
        ...

    def load(self, title_id: str, staged: StagingLayout) -> None:
        """Make the title servable from `staged`, whose files this process has verified
        against its files.json; the files may be consumed (moved in)."""
        ...

    def remove(self, title_id: str) -> None: ...

    def avoid(self, disk: str) -> None:
        """Place nothing more on `disk` (a disk id) in this run: a write there failed."""
        ...

    def exclusive(self) -> AbstractContextManager[None]:
        """Held for the whole run: one fill per store at a time (FillError when busy)."""
        ...

    def sweep_staging(self, keep: Collection[str], now: float) -> list[str]:
        """Remove long-idle staged files of titles this run does not fetch; return them."""
        ...

    def close(self) -> None: ...


@dataclass
class FillReport:
    titles: dict[str, TitleProgress] = field(default_factory=dict)
    kept: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()

    @property
    def failed(self) -> list[TitleProgress]:
        return [p for p in self.titles.values() if p.state == "failed"]

    def as_json(self) -> dict[str, Any]:
        return {
            "titles": {k: asdict(v) for k, v in self.titles.items()},
            "kept": list(self.kept),
            "deleted": list(self.deleted),
            "downloaded": sum(p.downloaded for p in self.titles.values()),
        }


def tuning(config: FillConfig) -> tuple[RetryPolicy, Timeouts]:
    """The retry policy and timeouts `[fill]` asks for."""
    policy = RetryPolicy(
        base_s=config.retry_base_s,
        max_delay_s=max(config.retry_max_s, config.retry_base_s),
        attempts_per_source=config.attempts_per_source,
        digest_restarts=config.digest_restarts,
    )
    timeouts = Timeouts(
        connect=config.connect_timeout_s,
        read=config.read_timeout_s,
        head=config.head_timeout_s,
        low_speed_bps=config.low_speed_bps,
        low_speed_s=config.low_speed_s,
    )
    return policy, timeouts


def peer_waiting(config: FillConfig) -> PeerWaitPolicy:
    """How long a title waits for a site peer still filling it, as `[fill]` asks."""
    return PeerWaitPolicy(
        first_s=config.peer_wait_s, waits=config.peer_waits, window_share=config.peer_window_share
    )


def write_state(staging_root: Path, report: FillReport, now: float) -> None:
    """Atomically publish progress for `appliance status` (another process reads it).
    OSError when it cannot (a full disk); no half-written temporary file is left.
    Sources and failures are redacted where they are made, and the whole text once more:
    no message from elsewhere puts a peer's token in this file (readable by all)."""
    body = {"updated": now, **report.as_json()}
    tmp = staging_root / (STATE_FILE + ".tmp")
    try:
        staging_root.mkdir(parents=True, exist_ok=True)
        tmp.write_text(redact(json.dumps(body, indent=2, sort_keys=True)))
        os.replace(tmp, staging_root / STATE_FILE)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def read_state(staging_root: Path) -> dict[str, Any] | None:
    """The last progress published; redacted too, for a state.json from before redaction."""
    try:
        data = json.loads(redact((staging_root / STATE_FILE).read_text()))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Deferral:
    title: str
    wait_s: float


@dataclass
class FillRun:
    plan: FillPlan
    storage: Storage
    staging_root: Path
    pacer: Pacer
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    wall: Callable[[], float] = time.time
    # Waiting for site peers (when the plan's wait_for_peers is on).
    peer_wait: PeerWaitPolicy = field(default_factory=PeerWaitPolicy)
    report: FillReport = field(default_factory=FillReport)
    # A failed write on one of the disks (disk id, the error), for the disk's health.
    on_write_error: Callable[[str, OSError], None] | None = None
    _state_failed: bool = False  # the state file could not be written: said once per run
    _avoided: set[str] = field(default_factory=set)  # disks given up in this run
    _again: deque[str] = field(default_factory=deque)  # titles to try on the other disks
    _thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="fill-storage")
    )

    async def _storage(self, fn: Callable[..., T], *args: Any) -> T:
        # One thread for every storage call: the store's SQLite connection is bound to it.
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def run(self) -> FillReport:
        try:
            with self.storage.exclusive():
                return await self._run()
        finally:
            await self._storage(self.storage.close)
            self._thread.shutdown(wait=False)

    async def _run(self) -> FillReport:
        rec = reconcile(self.plan, await self._storage(self.storage.held))
        self.report.kept = rec.keep
        for title_id in rec.keep:
            # Already servable in the planned version: nothing to do, but status should say so.
            self.report.titles[title_id] = TitleProgress(title_id, state="held")
        for title in rec.fetch:
            self.report.titles[title.id] = TitleProgress(title.id)
        wanted = [t.id for t in rec.fetch]
        for title_id in await self._storage(self.storage.sweep_staging, wanted, self.wall()):
            event(log, "fill.staging_swept", title=title_id)
        ticker = asyncio.create_task(self._publish_every(1.0))
        pool = Pool(self.timeouts, max_idle=self.plan.streams * 2)
        try:
            try:
                await self._fill_all(pool, [t.id for t in rec.fetch])
            finally:
                pool.close()
            if not self.report.failed:
                self.report.deleted = await self._delete(rec.delete)
        finally:
            ticker.cancel()
            self._publish()
        return self.report

    async def _fill_all(self, pool: Pool, ids: list[str]) -> None:
        """Each title in plan order; a deferred one joins the queue again once its wait is
        over, and when only deferred titles are left the run sleeps until the first is due.
        Bounded: each title is deferred at most peer_wait.waits times, each sleep at most its
        wait (a wall clock stepped back cannot stretch it)."""
        queue = deque(ids)
        deferred: list[tuple[datetime, int, str, float]] = []  # heap: (due, seq, title, wait)
        order = itertools.count()
        while queue or deferred:
            if not queue:
                due, _, title_id, wait_s = heapq.heappop(deferred)
                left = (due - self.pacer.now()).total_seconds()
                await self.pacer.sleep(min(max(left, 0.0), wait_s))
                queue.append(title_id)
            wait = await self._fill_one(pool, queue.popleft())
            if wait is not None:
                due = self.pacer.now() + timedelta(seconds=wait.wait_s)
                heapq.heappush(deferred, (due, next(order), wait.title, wait.wait_s))
            while self._again:  # at most once per disk given up: bounded
                again = self._again.popleft()
                self.report.titles[again].state = "waiting"
                self.report.titles[again].error = None
                queue.append(again)
            while deferred and deferred[0][0] <= self.pacer.now():
                queue.append(heapq.heappop(deferred)[2])

    async def _fill_one(self, pool: Pool, title_id: str) -> Deferral | None:
        """Fill one title; a Deferral when its peer lacks it yet (it is tried again later)."""
        title = next(t for t in self.plan.titles if t.id == title_id)
        prog = self.report.titles[title_id]
        started = time.monotonic()
        try:
            staged = await self._storage(
                self.storage.staging, title_id, self.staging_root / title_id
            )
            fetcher = TitleFetcher(
                pool, title, staged, self.pacer, self.policy, self.plan.streams, prog,
                admit=lambda model: self._storage(
                    self.storage.check_room, title_id, model, staged
                ),
                reuse=lambda model: self._storage(self.storage.reuse, title_id, model, staged),
                peer_wait=self.peer_wait if self.plan.wait_for_peers else None,
                waited=prog.deferrals,
            )  # fmt: skip
            try:
                await fetcher.run()
            except PeerNotReady as exc:
                prog.state, prog.deferrals = "deferred", prog.deferrals + 1
                self._publish()
                return Deferral(title_id, exc.wait_s)
            except (OSError, ExceptionGroup) as exc:
                failed = staging_failure(exc)
                if failed is None:
                    raise
                if failed.errno == errno.ENOSPC:
                    # The title cannot finish on this disk: its partial files would only keep
                    # the disk full for every other load (the next run starts it afresh).
                    for folder in staged.folders():
                        shutil.rmtree(folder, ignore_errors=True)
                failing = await self._writes_failed(title_id, exc, staged)
                where = ", ".join(failing) or "this appliance"
                again = " (tried again on the other disks)" if title_id in self._again else ""
                raise FillError(
                    f"title {title_id}: cannot write its files on {where}: "
                    f"{failed.strerror or failed}{again}"
                ) from None
            prog.state = "loading"
            self._publish()
            await self._storage(self.storage.load, title_id, staged)
            for folder in staged.folders():
                shutil.rmtree(folder, ignore_errors=True)
            prog.state = "ready"
            event(
                log,
                "fill.title_ready",
                title=title_id,
                bytes=prog.total,
                downloaded=prog.downloaded,
                seconds=round(time.monotonic() - started, 2),
            )
        except EdgeflixError as exc:
            prog.state, prog.error = "failed", str(exc)
            # Queued again on the other disks: not failed yet (title_failed is what alerts).
            said = "fill.title_retried" if title_id in self._again else "fill.title_failed"
            event(log, said, logging.WARNING, title=title_id, error=str(exc))
        self._publish()
        return None

    async def _writes_failed(
        self, title_id: str, exc: BaseException, staged: StagingLayout
    ) -> list[str]:
        """The disks the title's failed writes were on: each is reported, its staging of
        the title dropped (when it still deletes), and given up for this run; a disk newly
        given up queues the title to be tried again on the others."""
        disks = {str(folder.parent.parent): folder for folder in staged.disk_folders}
        used = await asyncio.to_thread(lambda: [d for d, f in disks.items() if f.is_dir()])
        # A write() or fsync() names no file: the title's one staging disk, if it has one.
        blamed = blamed_disks(_os_errors(exc), disks, used[0] if len(used) == 1 else None)
        for disk, error in blamed.items():
            event(log, "fill.write_failed", logging.WARNING, title=title_id, disk=disk,
                  error=redact(str(error)))  # fmt: skip
            if self.on_write_error is not None:
                self.on_write_error(disk, error)
            await asyncio.to_thread(shutil.rmtree, disks[disk], ignore_errors=True)
            if disk not in self._avoided:
                self._avoided.add(disk)
                await self._storage(self.storage.avoid, disk)
                if title_id not in self._again:
                    self._again.append(title_id)
        return sorted(blamed)

    async def _delete(self, ids: tuple[str, ...]) -> tuple[str, ...]:
        deleted = []
        for title_id in ids:
            try:
                await self._storage(self.storage.remove, title_id)
                deleted.append(title_id)
                event(log, "fill.title_deleted", title=title_id)
            except EdgeflixError as exc:
                event(log, "fill.delete_failed", logging.WARNING, title=title_id, error=str(exc))
        return tuple(deleted)

    async def _publish_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self._publish()

    def _publish(self) -> None:
        """Best effort: status is for an operator, and a full staging disk must not turn a
        fill (or the report of why it failed) into a traceback."""
        try:
            write_state(self.staging_root, self.report, self.wall())
        except OSError as exc:
            if not self._state_failed:
                self._state_failed = True
                event(
                    log,
                    "fill.state_unwritable",
                    logging.WARNING,
                    path=str(self.staging_root / STATE_FILE),
                    error=exc.strerror or str(exc),
                )


# Errors of this appliance's own disks while staging (network errors are source failures).
LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def staging_failure(exc: BaseException) -> OSError | None:
    """The OSError that stopped a title's download streams (its disk's own error first), or
    None when anything but OSErrors failed (a bug must still surface as itself). Whatever
    the errno (a name too long, a folder where a file should be, a permission), it is that
    title's staging that failed: the title fails with one line and the run goes on. Network
    errors never get here as OSError: transport.py turns them into source failures."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, ExceptionGroup):
        match, rest = exc.split(OSError)
        if match is not None and rest is None:
            errors = list(_leaves(match))
            return next((e for e in errors if e.errno in LOCAL_ERRNOS), errors[0])
    return None


def _os_errors(exc: BaseException) -> list[OSError]:
    """Every OSError in `exc` (itself, or the leaves of an exception group)."""
    if isinstance(exc, OSError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        match, _ = exc.split(OSError)
        return list(_leaves(match)) if match is not None else []
    return []


def _leaves(group: BaseExceptionGroup[OSError]) -> Iterator[OSError]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def raise_for_failures(report: FillReport) -> None:
    failed = report.failed
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise FillError(f"fill failed for {first.title}: {first.error}{more}")

"""Download one title into staging (layout.py): files.json from the first source that has the
planned version, then every missing file over N parallel streams, resumed with `Range` (and
`If-Range`) from its `.part` file, SHA-256 verified before it takes its final name.

Each stream is a worker thread that takes file after file from a shared queue itself (a
hand-off to the loop per file cost more than a small file's transfer) over our own
keep-alive HTTP/1.1 client (transport.py): recv_into a preallocated buffer, os.write,
hashlib; all release the GIL, so streams use every core. A failed attempt comes back to the
asyncio side, which keeps the decisions: retries and source fallback
(retry.py), waiting for a site peer still filling the title (peerwait.py), the fill window
and the shared bandwidth cap (the Pacer). runner.py hands the finished title to the storage
side and defers a title its peer lacks yet. Clock, sleep and jitter are injected.
A peer's source carries a token (redact.py): requests use it, and nothing else shows it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from appliance.fill import transport
from appliance.fill.layout import StagingLayout
from appliance.fill.pacer import Pacer, WindowClosed
from appliance.fill.partfile import discard_part
from appliance.fill.peerwait import PeerWaitPolicy
from appliance.fill.peerwait import decide as decide_peer_wait
from appliance.fill.plan import PlannedTitle
from appliance.fill.reconcile import FileTask, file_tasks
from appliance.fill.redact import redact
from appliance.fill.retry import (
    Failure,
    Outcome,
    RetryPolicy,
    discard_partial,
    retry_after_s,
)
from appliance.fill.staged import prepare_staging, reverify_staged, scan_staging
from appliance.fill.stream import (
    Attempt,
    FileStream,
    SourceFailure,
    StreamJob,
    TitleProgress,
    count_progress,
)
from edgeflix import titlefiles
from edgeflix.errors import EdgeflixError
from edgeflix.log import event
from edgeflix.titlefiles import FILES_JSON, TitleFiles

__all__ = ["FillError", "Pacer", "PeerNotReady", "TitleFetcher", "TitleProgress", "WindowClosed"]
log = logging.getLogger("appliance.fill")
T = TypeVar("T")


class FillError(EdgeflixError):
    """A title could not be filled from any of its sources."""


class PeerNotReady(Exception):
    """The title's site peer lacks its planned version yet (it is still filling it): try the
    title again in `wait_s`, after the run's other titles. Not a failure."""

    def __init__(self, wait_s: float, detail: str) -> None:
        super().__init__(detail)
        self.wait_s = wait_s
        self.detail = detail


# What a peer that has not finished filling the title answers for its files.json.
PEER_LACKS = frozenset({Failure.NOT_FOUND, Failure.TITLE_CHANGED})


@dataclass
class TitleFetcher:
    pool: transport.Pool
    title: PlannedTitle
    staging: StagingLayout  # where this title's files wait (layout.py)
    pacer: Pacer
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    streams: int = 4
    progress: TitleProgress | None = None
    draw: Callable[[], float] = random.random
    _source: int = 0
    _digest: str | None = None
    _checked: set[int] = field(default_factory=set)
    _threads: ThreadPoolExecutor | None = None
    _files: FileStream | None = None
    _last: str = "no source answered"
    # Asked with files.json before any download; raises to refuse the title (no room).
    admit: Callable[[TitleFiles], Awaitable[None]] | None = None
    # Then asked to stage the files the appliance already stores the same; returns bytes.
    reuse: Callable[[TitleFiles], Awaitable[int]] | None = None
    _advancing: asyncio.Lock = field(default_factory=asyncio.Lock)
    # A peer source (any but the last) lacking the planned version defers the title under
    # this policy (None: the next source at once); `waited`: its deferrals so far this run.
    peer_wait: PeerWaitPolicy | None = None
    waited: int = 0
    _peer_bytes: int | None = None  # the size of the version the peer has, an estimate

    async def run(self) -> tuple[TitleFiles, str]:
        """Fill the staging folder; return the title's files.json model and digest."""
        prog = self.progress or TitleProgress(self.title.id)
        self.progress = prog
        prog.state = "downloading"
        self._files = FileStream(self.pool, self.title.id, self.staging, self.pacer, prog)
        with ThreadPoolExecutor(self.streams, thread_name_prefix="fill-stream") as threads:
            self._threads = threads
            model = await self._files_json()  # PeerNotReady: nothing is downloaded yet
            if self.admit is not None:
                await self.admit(model)
            # Before reuse: a staged file found corrupt is removed, so reuse can link it again.
            await self._in_thread(reverify_staged, self.staging, model)
            if self.reuse is not None:
                prog.reused = await self.reuse(model)
            complete, partial = scan_staging(self.staging, model)
            tasks = file_tasks(model, complete, partial)
            prog.total = model.total_bytes
            prog.done = model.total_bytes - sum(t.entry.size - t.offset for t in tasks)
            # Taken by the stream threads themselves (deque.popleft is atomic).
            queue = deque(tasks)
            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(min(self.streams, len(tasks))):
                        group.create_task(self._worker(queue))
            except* FillError as failed:
                # One stream gave up: the others were cancelled; report the first reason.
                raise failed.exceptions[0] from None
        return model, self._digest or ""

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args, job) on a stream thread. On cancellation, stop the thread and wait
        for it, so no thread still writes into staging after we return."""
        assert self._threads is not None
        job = StreamJob(asyncio.get_running_loop())
        future = job.loop.run_in_executor(self._threads, functools.partial(fn, *args, job))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # Once cancelled, shield stops watching `future`: whatever the thread ends with is
            # moot (a sibling stream's failure cancelled us), so take it here or asyncio logs
            # "Future exception was never retrieved" with a traceback on the user's terminal.
            future.add_done_callback(_moot)
            job.cancel()
            while not future.done():
                try:
                    await asyncio.wait([future])
                except asyncio.CancelledError:
                    # Cancelled again (the task group, then asyncio.run's shutdown): still
                    # wait, or the executor's exit blocks the loop on this very thread.
                    continue
            raise

    # --- files.json and sources ---------------------------------------------------------

    async def _files_json(self) -> TitleFiles:
        model = await self._settle(may_defer=True)
        if model is None:
            raise FillError(
                f"title {self.title.id}: no source could provide files.json ({self._last})"
            )
        return model

    async def _settle(self, may_defer: bool = False) -> TitleFiles | None:
        """From the current source on, the first whose files.json is the title's; each
        source is retried with backoff like any file (a blip on the only source must not
        fail the title). None when no source is left. `may_defer` (before any download):
        PeerNotReady when a peer lacks the title yet and waiting for it is still worth it."""
        attempts = 0
        while self._source < len(self.title.sources):
            index = self._source
            await self._wait_window()
            try:
                return await self._check_source(index)
            except SourceFailure as exc:
                attempts += 1
                left = len(self.title.sources) - index - 1
                outcome = self.policy.decide(exc.failure, attempts, left, 0)
                waits = may_defer and left > 0 and exc.failure in PEER_LACKS
                if waits and self.peer_wait is not None:
                    self._peer_lacks(index, exc)  # raises PeerNotReady, or says why not
                else:
                    self._note(exc, FILES_JSON, outcome, attempts)
                    if outcome is Outcome.RETRY:
                        await self.pacer.sleep(self._delay(attempts, exc))
                        continue
                    event(
                        log,
                        "fill.source_failed",
                        title=self.title.id,
                        source=redact(self.title.sources[index]),
                        reason=exc.detail,
                    )
                self._last, self._source, attempts = exc.detail, index + 1, 0
        return None

    def _peer_lacks(self, index: int, exc: SourceFailure) -> None:
        """Source `index`, a site peer, lacks the planned version: PeerNotReady to defer the
        title, or one log line on why it goes to the next source (the origin) now."""
        assert self.peer_wait is not None
        decision = decide_peer_wait(
            self.peer_wait,
            self.waited,
            self.pacer.now(),
            self.pacer.window,
            self.pacer.cap_bps,
            self.title.size or self._peer_bytes,
        )
        if self.progress is not None:
            self.progress.last_failure = exc.detail
        source = redact(self.title.sources[index])
        if decision.wait_s is not None:
            event(
                log,
                "fill.title_deferred",
                title=self.title.id,
                source=source,
                wait_s=round(decision.wait_s),
                waited=self.waited,
                reason=exc.detail,
            )
            raise PeerNotReady(decision.wait_s, exc.detail)
        window = {"window_left_s": decision.window_left_s, "reserve_s": decision.reserve_s}
        event(
            log,
            "fill.peer_bypassed",
            logging.WARNING,
            title=self.title.id,
            source=source,
            reason=decision.reason,
            waited=self.waited,
            peer=exc.detail,
            **{k: round(v) for k, v in window.items() if v is not None},
        )

    async def _wait_window(self) -> None:
        """Wait for the fill window; meanwhile the title shows as paused in status."""
        prog = self.progress
        if prog is not None and not self.pacer.open_now():
            prog.state = "paused"
        await self.pacer.wait_open()
        if prog is not None:
            prog.state = "downloading"

    def _note(self, exc: SourceFailure, path: str, outcome: Outcome, attempt: int) -> None:
        """Count and log one failed attempt (status and metrics read the counts)."""
        prog = self.progress
        if prog is not None:
            prog.retries += 1
            prog.digest_failures += exc.failure is Failure.DIGEST
            prog.last_failure = exc.detail
        event(
            log,
            "fill.file_failed",
            logging.WARNING if exc.failure is Failure.DIGEST else logging.INFO,
            title=self.title.id,
            path=path,
            reason=exc.detail,
            next=outcome.value,
            attempt=attempt,
        )

    def _delay(self, attempts: int, exc: SourceFailure) -> float:
        """Backoff with jitter, and never sooner than the source's Retry-After asked."""
        asked = retry_after_s(exc.retry_after, self.policy.max_delay_s)
        return max(self.policy.delay(attempts, self.draw()), asked)

    async def _check_source(self, index: int) -> TitleFiles:
        """Fetch files.json from source `index`; it must be the planned (or first seen) version."""
        source = self.title.sources[index]
        shown = redact(source)
        assert self._files is not None
        raw = await self._in_thread(self._files.get_files_json, source)
        digest = titlefiles.digest_bytes(raw)
        want = self.title.digest or self._digest
        if want is not None and digest != want:
            self._peer_bytes = _total_bytes(raw)  # another version: about the title's size
            raise SourceFailure(Failure.TITLE_CHANGED, f"{shown}: files.json digest {digest[:12]}…")
        try:
            model = titlefiles.parse(raw, f"{shown} files.json")
        except titlefiles.TitleFilesError as exc:
            raise SourceFailure(Failure.CLIENT, str(exc)) from None
        if model.id != self.title.id:
            raise SourceFailure(Failure.CLIENT, f"{shown}: files.json is for {model.id}")
        self._digest = digest
        self._checked.add(index)
        if self.progress is not None:
            self.progress.source = shown
        prepare_staging(self.staging, raw, digest)
        return model

    async def _advance_source(self, failed: int, reason: str) -> bool:
        """Move every stream past a failed source (once); False when none is left."""
        async with self._advancing:
            if self._source == failed:
                event(
                    log,
                    "fill.source_failed",
                    logging.WARNING,
                    title=self.title.id,
                    source=redact(self.title.sources[failed]),
                    reason=reason,
                )
                self._last, self._source = reason, failed + 1
                await self._settle()
            return self._source < len(self.title.sources)

    # --- one file ------------------------------------------------------------------------

    async def _worker(self, tasks: deque[FileTask]) -> None:
        """One stream: a thread call fetches files from `tasks` until it is empty; a file
        that fails comes back here for the retry decisions, then the thread goes on."""
        files = self._files
        assert files is not None
        while tasks:
            await self._wait_window()
            try:
                failed = await self._in_thread(
                    files.fetch_many, tasks, self.title.sources, self._current_source
                )
            except WindowClosed:
                continue
            if failed is None:
                return
            await self._fetch_with_retries(failed)

    def _current_source(self) -> int:
        return self._source

    async def _fetch_with_retries(self, first: Attempt) -> None:
        """Decide on a failed attempt at a file, and try it again until it is staged (or
        the title fails). Each try runs on a stream thread, with its .part checks."""
        files = self._files
        assert files is not None
        entry, tried = first.entry, first
        attempts = digest_failures = failures = 0
        # Bounded: each source gets attempts_per_source tries plus its digest restarts, and
        # attempts that made progress (which do not count there) are bounded by the bytes.
        # A closing window is no failure: waiting for the next one bounds those.
        budget = len(self.title.sources) * (
            self.policy.attempts_per_source + self.policy.digest_restarts + 2
        ) + entry.size // max(self.policy.progress_bytes, 1)
        while True:
            exc, source = tried.error, tried.source
            if isinstance(exc, SourceFailure):
                failures += 1
                attempts = self.policy.attempts_after(attempts, tried.after - tried.before)
                digest_failures += exc.failure is Failure.DIGEST
                left = len(self.title.sources) - source - 1
                outcome = self.policy.decide(exc.failure, attempts, left, digest_failures)
                if failures >= budget:
                    outcome = Outcome.GIVE_UP
                self._note(exc, entry.path, outcome, attempts)
                if discard_partial(exc.failure, outcome):
                    discard_part(self.staging.part(entry.path))
                    count_progress(self.progress, -tried.after, 0)
                if outcome is Outcome.GIVE_UP:
                    raise FillError(f"title {self.title.id}: {entry.path}: {exc.detail}") from None
                if outcome is Outcome.NEXT_SOURCE:
                    attempts = digest_failures = 0
                    if not await self._advance_source(source, exc.detail):
                        raise FillError(
                            f"title {self.title.id}: no source left for {entry.path} "
                            f"(last: {exc.detail})"
                        ) from None
                else:  # RETRY or RESTART_FILE: back off before asking the source again
                    await self.pacer.sleep(self._delay(attempts, exc))
            elif exc is None:
                return
            # WindowClosed: no failure, the next opening is waited for
            await self._wait_window()
            tried = await self._in_thread(files.attempt, entry, self.title.sources, self._source)


def _total_bytes(raw: bytes) -> int | None:
    try:
        return titlefiles.parse(raw, FILES_JSON).total_bytes
    except titlefiles.TitleFilesError:
        return None


def _moot(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

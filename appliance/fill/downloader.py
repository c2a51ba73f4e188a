"""Download one title into a staging folder: files.json from the first source that has the
planned version, then every missing file over N parallel HTTP streams (httpx), resumed with
`Range` from its `.part` file, SHA-256 verified before it takes its final name.

The pacer holds the bandwidth cap (a shared TokenBucket) and the fill window (streams stop
at its close and resume at the next opening); retry.py decides retries and source fallback.
runner.py hands the finished folder to the storage side. Clock, sleep and jitter are injected.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx

from appliance.fill.bucket import TokenBucket
from appliance.fill.plan import PlannedTitle
from appliance.fill.reconcile import FileTask, file_tasks
from appliance.fill.retry import Failure, Outcome, RetryPolicy, failure_for_status
from appliance.fill.window import FillWindow
from edgeflix import titlefiles
from edgeflix.errors import EdgeflixError
from edgeflix.log import event
from edgeflix.titlefiles import FILES_JSON, FileEntry, TitleFiles

log = logging.getLogger("appliance.fill")
# httpx logs every request at INFO: thousands of lines per title. Our own events say enough.
logging.getLogger("httpx").setLevel(logging.WARNING)
PART = ".part"


class FillError(EdgeflixError):
    """A title could not be filled from any of its sources."""


class SourceFailure(Exception):
    def __init__(self, failure: Failure, detail: str):
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


class WindowClosed(Exception):
    """The fill window closed mid-stream: keep the .part, wait for the next opening."""


Sleep = Callable[[float], Awaitable[None]]


@dataclass
class Pacer:
    """Bandwidth cap and fill window shared by every stream of a fill run."""

    cap_bps: int | None
    window: FillWindow | None
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    sleep: Sleep = asyncio.sleep
    _bucket: TokenBucket | None = None
    _close_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.cap_bps:
            self._bucket = TokenBucket.full(self.cap_bps / 8, None, self.clock())

    async def wait_open(self) -> None:
        if self.window is None:
            return
        while not self.window.is_open(self.now()):
            wait = self.window.seconds_until_open(self.now())
            event(log, "fill.window_wait", seconds=round(wait))
            # Re-check at least hourly: the wall clock may be stepped by NTP meanwhile.
            await self.sleep(min(max(wait, 0.05), 3600))
        self._close_at = self.window.next_close(self.now())

    async def spend(self, nbytes: int) -> None:
        if self._close_at is not None and self.now() >= self._close_at:
            raise WindowClosed
        if self._bucket is not None:
            self._bucket, wait = self._bucket.take(nbytes, self.clock())
            if wait > 0:
                await self.sleep(wait)


@dataclass
class TitleProgress:
    title: str
    total: int = 0
    done: int = 0  # bytes present in staging (resumed bytes count from the start)
    downloaded: int = 0  # bytes received over the wire in this run
    state: str = "waiting"
    error: str | None = None


def url_for(source: str, title_id: str, rel_path: str) -> str:
    return f"{source}/titles/{quote(title_id)}/{quote(rel_path)}"


@dataclass
class TitleFetcher:
    client: httpx.AsyncClient
    title: PlannedTitle
    staging: Path  # this title's staging folder
    pacer: Pacer
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    streams: int = 4
    progress: TitleProgress | None = None
    draw: Callable[[], float] = random.random
    _source: int = 0
    _digest: str | None = None
    _checked: set[int] = field(default_factory=set)

    async def run(self) -> tuple[TitleFiles, str]:
        """Fill the staging folder; return the title's files.json model and digest."""
        prog = self.progress or TitleProgress(self.title.id)
        self.progress = prog
        prog.state = "downloading"
        model = await self._files_json()
        complete, partial = _scan_staging(self.staging, model)
        tasks = file_tasks(model, complete, partial)
        prog.total = model.total_bytes
        prog.done = model.total_bytes - sum(t.entry.size - t.offset for t in tasks)
        queue: asyncio.Queue[FileTask] = asyncio.Queue()
        for task in tasks:
            queue.put_nowait(task)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.streams, len(tasks))):
                    group.create_task(self._worker(queue))
        except* FillError as failed:
            # One stream gave up: the others were cancelled; report the first reason.
            raise failed.exceptions[0] from None
        return model, self._digest or ""

    # --- files.json and sources ---------------------------------------------------------

    async def _files_json(self) -> TitleFiles:
        last = "no source answered"
        while self._source < len(self.title.sources):
            await self.pacer.wait_open()
            try:
                return await self._check_source(self._source)
            except SourceFailure as exc:
                last = exc.detail
                event(
                    log,
                    "fill.source_failed",
                    title=self.title.id,
                    source=self.title.sources[self._source],
                    reason=exc.detail,
                )
                self._source += 1
        raise FillError(f"title {self.title.id}: no source could provide files.json ({last})")

    async def _check_source(self, index: int) -> TitleFiles:
        """Fetch files.json from source `index`; it must be the planned (or first seen) version."""
        source = self.title.sources[index]
        try:
            resp = await self.client.get(url_for(source, self.title.id, FILES_JSON))
        except httpx.HTTPError as exc:
            raise SourceFailure(Failure.CONNECT, f"{source}: {type(exc).__name__}") from None
        failure = failure_for_status(resp.status_code)
        if failure is not None:
            raise SourceFailure(failure, f"{source}: files.json HTTP {resp.status_code}")
        digest = titlefiles.digest_bytes(resp.content)
        want = self.title.digest or self._digest
        if want is not None and digest != want:
            raise SourceFailure(
                Failure.TITLE_CHANGED, f"{source}: files.json digest {digest[:12]}…"
            )
        try:
            model = titlefiles.parse(resp.content, f"{source} files.json")
        except titlefiles.TitleFilesError as exc:
            raise SourceFailure(Failure.CLIENT, str(exc)) from None
        if model.id != self.title.id:
            raise SourceFailure(Failure.CLIENT, f"{source}: files.json is for {model.id}")
        self._digest = digest
        self._checked.add(index)
        _prepare_staging(self.staging, resp.content, digest)
        return model

    async def _advance_source(self, failed: int) -> bool:
        """Move every stream past a failed source (once); False when none is left."""
        if self._source == failed:
            self._source += 1
        while self._source < len(self.title.sources) and self._source not in self._checked:
            try:
                await self._check_source(self._source)
            except SourceFailure as exc:
                event(
                    log,
                    "fill.source_failed",
                    title=self.title.id,
                    source=self.title.sources[self._source],
                    reason=exc.detail,
                )
                self._source += 1
        return self._source < len(self.title.sources)

    # --- one file ------------------------------------------------------------------------

    async def _worker(self, queue: asyncio.Queue[FileTask]) -> None:
        while not queue.empty():
            task = queue.get_nowait()
            await self._fetch_with_retries(task.entry)

    async def _fetch_with_retries(self, entry: FileEntry) -> None:
        attempts = digest_failures = 0
        # Bounded: each source gets attempts_per_source tries plus its digest restarts.
        budget = len(self.title.sources) * (
            self.policy.attempts_per_source + self.policy.digest_restarts + 2
        )
        for _ in range(budget):
            await self.pacer.wait_open()
            source = self._source
            try:
                await self._fetch_once(entry, self.title.sources[source])
                return
            except WindowClosed:
                continue
            except SourceFailure as exc:
                attempts += 1
                digest_failures += exc.failure is Failure.DIGEST
                left = len(self.title.sources) - source - 1
                outcome = self.policy.decide(exc.failure, attempts, left, digest_failures)
                event(
                    log,
                    "fill.file_failed",
                    title=self.title.id,
                    path=entry.path,
                    reason=exc.detail,
                    next=outcome.value,
                    attempt=attempts,
                )
                if outcome is Outcome.GIVE_UP:
                    raise FillError(f"title {self.title.id}: {entry.path}: {exc.detail}") from None
                if outcome is Outcome.RESTART_FILE:
                    _part(self.staging, entry).unlink(missing_ok=True)
                elif outcome is Outcome.NEXT_SOURCE:
                    attempts = digest_failures = 0
                    if not await self._advance_source(source):
                        raise FillError(
                            f"title {self.title.id}: no source left for {entry.path}"
                        ) from None
                else:
                    await self.pacer.sleep(self.policy.delay(attempts, self.draw()))
        raise FillError(f"title {self.title.id}: {entry.path}: too many failed attempts")

    async def _fetch_once(self, entry: FileEntry, source: str) -> None:
        part = _part(self.staging, entry)
        part.parent.mkdir(parents=True, exist_ok=True)
        offset = part.stat().st_size if part.exists() else 0
        if offset > entry.size:
            part.unlink()
            offset = 0
        hasher = await asyncio.to_thread(_hash_prefix, part, offset)
        if offset < entry.size:
            offset = await self._stream(entry, source, part, offset, hasher)
        if offset != entry.size:
            raise SourceFailure(Failure.TRUNCATED, f"{entry.path}: {offset} of {entry.size} bytes")
        if hasher.hexdigest() != entry.sha256:
            raise SourceFailure(Failure.DIGEST, f"{entry.path}: SHA-256 mismatch from {source}")
        os.replace(part, self.staging / entry.path)

    async def _stream(
        self, entry: FileEntry, source: str, part: Path, offset: int, hasher: hashlib._Hash
    ) -> int:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        prog = self.progress
        try:
            async with self.client.stream(
                "GET", url_for(source, self.title.id, entry.path), headers=headers
            ) as resp:
                if resp.status_code == 200:
                    if offset:
                        # The source ignored Range: take the whole body from byte 0.
                        if prog:
                            prog.done -= offset
                        offset = 0
                        hasher = hashlib.sha256()
                elif resp.status_code == 206:
                    if not resp.headers.get("content-range", "").startswith(f"bytes {offset}-"):
                        raise SourceFailure(
                            Failure.RANGE, f"{entry.path}: unexpected Content-Range"
                        )
                else:
                    failure = failure_for_status(resp.status_code) or Failure.CLIENT
                    raise SourceFailure(
                        failure, f"{entry.path}: HTTP {resp.status_code} from {source}"
                    )
                with part.open("r+b" if offset else "wb") as fh:
                    fh.seek(offset)
                    async for chunk in resp.aiter_raw():
                        await self.pacer.spend(len(chunk))
                        offset += len(chunk)
                        if offset > entry.size:
                            raise SourceFailure(
                                Failure.DIGEST, f"{entry.path}: longer than {entry.size}"
                            )
                        fh.write(chunk)
                        hasher.update(chunk)
                        if prog:
                            prog.done += len(chunk)
                            prog.downloaded += len(chunk)
        except httpx.TimeoutException:
            raise SourceFailure(Failure.TIMEOUT, f"{entry.path}: timed out at {source}") from None
        except httpx.HTTPError as exc:
            raise SourceFailure(
                Failure.CONNECT, f"{entry.path}: {type(exc).__name__} at {source}"
            ) from None
        return offset


def _part(staging: Path, entry: FileEntry) -> Path:
    final = staging / entry.path
    return final.with_name(final.name + PART)


def _hash_prefix(part: Path, length: int) -> hashlib._Hash:
    hasher = hashlib.sha256()
    if length:
        with part.open("rb") as fh:
            while chunk := fh.read(min(titlefiles.CHUNK, length)):
                hasher.update(chunk)
                length -= len(chunk)
                if not length:
                    break
    return hasher


def _prepare_staging(staging: Path, raw: bytes, digest: str) -> None:
    """Start over when staging holds a different version of the title; then write files.json."""
    current = staging / FILES_JSON
    if current.exists() and titlefiles.digest_bytes(current.read_bytes()) != digest:
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / (FILES_JSON + PART)
    tmp.write_bytes(raw)
    os.replace(tmp, current)


def _scan_staging(staging: Path, model: TitleFiles) -> tuple[dict[str, int], dict[str, int]]:
    """Files already verified (final name) and partial downloads (.part) in staging."""
    complete, partial = {}, {}
    for entry in model.files:
        final = staging / entry.path
        part = _part(staging, entry)
        if final.is_file():
            complete[entry.path] = final.stat().st_size
        if part.is_file():
            partial[entry.path] = part.stat().st_size
    return complete, partial

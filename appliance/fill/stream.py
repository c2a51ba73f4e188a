"""One file (or files.json) over one stream, run on a stream thread: GET with `Range` from
the `.part` offset (and `If-Range` with the validator kept beside it), check the response
against the request, then batches of body bytes into the file and the SHA-256, paced by the
Pacer; the .part and its validator are partfile.py's. downloader.py runs these and decides
retries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from appliance.fill import transport
from appliance.fill.http1 import ProtocolError, ResponseHead, parse_content_range
from appliance.fill.layout import PART, StagingLayout
from appliance.fill.pacer import BUFFER, Pacer, Sleep, WindowClosed
from appliance.fill.partfile import (
    discard_part,
    if_range_value,
    open_part,
    part_size,
    read_validator,
    same_version,
    validator_path,
    write_validator,
)
from appliance.fill.reconcile import FileTask
from appliance.fill.redact import redact
from appliance.fill.retry import Failure, failure_for_status
from edgeflix import titlefiles
from edgeflix.titlefiles import FILES_JSON, FileEntry

MAX_FILES_JSON = 64 << 20


class SourceFailure(Exception):
    def __init__(self, failure: Failure, detail: str, retry_after: str | None = None):
        # Details name sources, and go to logs, status and state.json: never a peer's token.
        detail = redact(detail)
        super().__init__(detail)
        self.failure = failure
        self.detail = detail
        self.retry_after = retry_after  # the answer's Retry-After field, if it had one


_SLEEP_POLL_S = 0.1  # how soon a stream thread waiting on the pacer notices cancel()


class Stopped(Exception):
    """The asyncio side cancelled this stream (another stream gave up, or shutdown)."""


@dataclass
class TitleProgress:
    title: str
    total: int = 0
    done: int = 0  # bytes present in staging (resumed bytes count from the start)
    downloaded: int = 0  # bytes received over the wire in this run
    reused: int = 0  # bytes of files already stored the same (an update): not downloaded
    state: str = "waiting"
    error: str | None = None
    # What went wrong on the way, for an operator: failed attempts (every kind), files whose
    # bytes failed their SHA-256 (never stored), the last failure, the source in use.
    retries: int = 0
    digest_failures: int = 0
    last_failure: str | None = None
    source: str | None = None  # as redact() shows it
    deferrals: int = 0  # times the title waited for its site peer to finish filling it


_counting = threading.Lock()  # stream threads add to the same TitleProgress


def count_progress(prog: TitleProgress | None, done: int, downloaded: int) -> None:
    if prog is not None:
        with _counting:
            prog.done += done
            prog.downloaded += downloaded


def url_for(source: str, title_id: str, rel_path: str) -> str:
    return f"{source}/titles/{quote(title_id)}/{quote(rel_path)}"


class StreamJob:
    """The link between one awaited thread call and its thread: cancel() makes the thread
    stop at its next read (a blocked recv is woken by shutting the socket down)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stopped = False
        self.conn: transport.Connection | None = None

    def watch(self, conn: transport.Connection) -> None:
        self.conn = conn
        if self.stopped:  # cancelled while connecting: abort() came too early to see it
            conn.abort()

    def unwatch(self) -> None:
        """Done with the connection (back in the pool, another thread's next): not ours to
        abort any more."""
        self.conn = None

    def cancel(self) -> None:
        self.stopped = True
        if self.conn is not None:
            self.conn.abort()

    def check(self) -> None:
        if self.stopped:
            raise Stopped

    def sleep(self, seconds: float, sleep: Sleep) -> None:
        """The pacer's wait, on the loop. Never blocks past cancel(): on the way out the
        loop may be busy waiting for this very thread (an executor's shutdown), and a
        thread waiting for the loop would hang the process (a Ctrl-C that never exits)."""

        async def wait() -> None:
            await sleep(seconds)

        self.check()
        done = asyncio.run_coroutine_threadsafe(wait(), self.loop)
        while True:
            try:
                done.result(timeout=_SLEEP_POLL_S)
                return
            except concurrent.futures.TimeoutError:
                if self.stopped:
                    done.cancel()
                    raise Stopped from None


@dataclass
class FileStream:
    """What a stream thread needs to fetch files of one title."""

    pool: transport.Pool
    title_id: str
    staging: StagingLayout
    pacer: Pacer
    progress: TitleProgress | None = None

    def get_files_json(self, source: str, job: StreamJob) -> bytes:
        try:
            url = url_for(source, self.title_id, FILES_JSON)
            with self.pool.get(url, watch=job.watch) as resp:
                if resp.status != 200:
                    failure = failure_for_status(resp.status) or Failure.CLIENT
                    raise SourceFailure(
                        failure,
                        f"{source}: files.json HTTP {resp.status}",
                        resp.head.get("retry-after"),
                    )
                return resp.read_all(MAX_FILES_JSON)
        except (transport.TransportError, ProtocolError) as exc:
            raise SourceFailure(_failure_of(exc), f"{source}: {exc}") from None

    def fetch_many(
        self,
        tasks: deque[FileTask],
        sources: Sequence[str],
        current: Callable[[], int],
        job: StreamJob,
    ) -> Attempt | None:
        """Take files from `tasks` (shared by every stream thread) and fetch them one after
        another from `sources[current()]`, all on this thread: a hand-off to the event loop
        per file cost more than a small file's transfer. None once `tasks` is empty; the
        first failed attempt (a file to retry, on the asyncio side) as soon as one fails;
        WindowClosed before taking a file once the fill window has closed."""
        while True:
            job.check()
            if self.pacer.closed():
                raise WindowClosed
            try:
                task = tasks.popleft()  # atomic: no two threads take the same file
            except IndexError:
                return None
            # The .part size found by scan_staging: nothing else writes it (the run lock).
            attempt = self.attempt(task.entry, sources, current(), job, task.offset)
            job.unwatch()
            if attempt.error is not None:
                return attempt

    def attempt(
        self,
        entry: FileEntry,
        sources: Sequence[str],
        source: int,
        job: StreamJob,
        before: int | None = None,
    ) -> Attempt:
        """One try at `entry` from `sources[source]`, with the .part size before (`before`
        when known) and after (a retry that made progress is no failure,
        retry.RetryPolicy.attempts_after)."""
        part = self.staging.part(entry.path)
        before = part_size(part) if before is None else before
        try:
            self.fetch_once(entry, sources[source], job, part, before)
        except (SourceFailure, WindowClosed) as exc:
            return Attempt(entry, source, before, part_size(part), exc)
        return Attempt(entry, source, before, entry.size, None)

    def fetch_once(
        self,
        entry: FileEntry,
        source: str,
        job: StreamJob,
        part: Path | None = None,
        offset: int | None = None,
    ) -> None:
        """Fetch `entry` into its .part (resumed from `offset`, its size, when known), check
        its SHA-256, give it its final name."""
        part = part or self.staging.part(entry.path)
        offset = part_size(part) if offset is None else offset
        if offset > entry.size:
            discard_part(part)
            offset = 0
        hasher = _hash_prefix(part, offset)
        kept = offset > 0  # a validator may be beside the .part (see _receive for offset 0)
        if offset < entry.size:
            offset, hasher, wrote = self._stream(entry, source, part, offset, hasher, job)
            kept = kept or wrote
        elif entry.size == 0:  # nothing to fetch, but a file to stage
            fd, existed = open_part(part, 0)
            os.close(fd)
            kept = existed
        if offset != entry.size:
            raise SourceFailure(Failure.TRUNCATED, f"{entry.path}: {offset} of {entry.size} bytes")
        if hasher.hexdigest() != entry.sha256:
            raise SourceFailure(Failure.DIGEST, f"{entry.path}: SHA-256 mismatch from {source}")
        # No fsync here (it halved fill throughput): a crash can leave a renamed file whose
        # bytes never reached the disk, but a resumed fill hashes every file it finds
        # finished in staging again (staged.reverify_staged), and the hand-off fsyncs
        # before the store takes the file.
        if kept:  # first: a crash between the two leaves a complete .part, no validator
            validator_path(part).unlink(missing_ok=True)
        os.replace(part, part.with_name(part.name[: -len(PART)]))

    def _stream(
        self,
        entry: FileEntry,
        source: str,
        part: Path,
        offset: int,
        hasher: hashlib._Hash,
        job: StreamJob,
    ) -> tuple[int, hashlib._Hash, bool]:
        """The body from `offset` into the .part; (end offset, hasher, whether a validator
        was written beside the .part)."""
        url = url_for(source, self.title_id, entry.path)
        # If-Range only to the server whose validator it is (the URL that answered, after
        # redirects): another server's file has other validators (its own mtime) though the
        # same bytes, as files.json's digest says, so it gets a plain Range.
        known = read_validator(part) if offset else None
        headers = [("Range", f"bytes={offset}-")] if offset else []
        try:
            with self.pool.get(url, headers, job.watch, known) as resp:
                answered = redact(resp.url)  # validators keep URLs as redact() shows them
                if_range = known[1] if known is not None and known[0] == answered else None
                start = self._accept(resp, entry, source, offset, if_range)
                validator: tuple[str, ResponseHead] | None = None
                wrote = False
                if start != offset:  # a changed file, or Range ignored: take it from byte 0
                    os.truncate(part, 0)  # before the new validator: never old bytes with it
                    count_progress(self.progress, start - offset, 0)
                    offset, hasher = start, hashlib.sha256()
                    write_validator(part, answered, if_range_value(resp.head))
                    wrote = True
                elif start == 0:
                    # Written only if bytes reach the .part before the body ends (_receive):
                    # a file received whole in one batch never needs it, and this saves two
                    # file creations and a rename per small file.
                    validator = (answered, resp.head)
                elif if_range is None:
                    write_validator(part, answered, if_range_value(resp.head))
                    wrote = True
                end, kept = self._receive(resp, entry, part, offset, hasher, job, validator)
                return end, hasher, wrote or kept
        except (transport.TransportError, ProtocolError) as exc:
            raise SourceFailure(_failure_of(exc), f"{entry.path}: {exc} at {source}") from None

    def _accept(
        self,
        resp: transport.Response,
        entry: FileEntry,
        source: str,
        offset: int,
        if_range: str | None,
    ) -> int:
        """Check a file response against what we asked; return the byte its body starts at."""
        if resp.status == 200:
            offset = 0
        elif resp.status == 206:
            got = parse_content_range(resp.head.get("content-range"))
            if got is None or (got.first, got.last) != (offset, entry.size - 1):
                raise SourceFailure(Failure.RANGE, f"{entry.path}: unexpected Content-Range")
            if not same_version(resp.head, if_range):
                # The source ignored If-Range: these are another version's bytes.
                raise SourceFailure(Failure.RANGE, f"{entry.path}: changed at {source}")
            if got.complete not in (None, entry.size):
                raise SourceFailure(
                    Failure.DIGEST, f"{entry.path}: {source} has {got.complete} bytes"
                )
        else:
            failure = failure_for_status(resp.status) or Failure.CLIENT
            raise SourceFailure(
                failure,
                f"{entry.path}: HTTP {resp.status} from {source}",
                resp.head.get("retry-after"),
            )
        length = resp.content_length
        if length is not None and offset + length != entry.size:
            raise SourceFailure(
                Failure.DIGEST,
                f"{entry.path}: {source} sends {offset + length} bytes, files.json says "
                f"{entry.size}",
            )
        return offset

    def _receive(
        self,
        resp: transport.Response,
        entry: FileEntry,
        part: Path,
        offset: int,
        hasher: hashlib._Hash,
        job: StreamJob,
        validator: tuple[str, ResponseHead] | None = None,
    ) -> tuple[int, bool]:
        """Body → .part file and hasher, one batch at a time: fill the buffer, charge the
        pacer, write, hash. Bytes already received stay written when the body breaks off
        (a transport error, or framing gone bad after them).
        `validator` (URL and head that answered), when given, is kept beside the .part before the
        first bytes that leave it short of the whole file (the only .part a resume sees).
        Returns the end offset and whether a validator may be beside the .part (written
        now, or the .part was there before)."""
        view = _buffer()
        batch = self.pacer.batch_bytes()
        fd, kept = -1, False
        try:
            while True:
                job.check()
                filled, broken = 0, None
                try:
                    while filled < batch and (n := resp.readinto(view[filled:batch])):
                        filled += n
                except (transport.TransportError, ProtocolError) as exc:
                    # Bytes before the break are kept either way (an endless chunked
                    # trailer comes after them all): the SHA-256 at the end checks them.
                    broken = exc
                if filled:
                    wait = self.pacer.charge(filled)
                    if wait > 0:
                        job.sleep(wait, self.pacer.sleep)
                    if offset + filled > entry.size:
                        raise SourceFailure(
                            Failure.DIGEST, f"{entry.path}: longer than {entry.size}"
                        )
                    if fd < 0:
                        fd, existed = open_part(part, offset)
                        kept = kept or existed  # an old validator may be beside it
                    if validator is not None and offset + filled < entry.size:
                        write_validator(part, validator[0], if_range_value(validator[1]))
                        validator, kept = None, True
                    _write_all(fd, view[:filled])
                    hasher.update(view[:filled])
                    offset += filled
                    count_progress(self.progress, filled, filled)
                if broken is not None:
                    raise broken
                if filled < batch:
                    return offset, kept
        finally:
            if fd >= 0:
                os.close(fd)


@dataclass(frozen=True)
class Attempt:
    """One try at a file on a stream thread: the source index it used, its .part size
    before and after, and how it failed (None: the file is verified and staged)."""

    entry: FileEntry
    source: int
    before: int
    after: int
    error: SourceFailure | WindowClosed | None


_per_thread = threading.local()


def _buffer() -> memoryview:
    """This stream thread's read buffer, allocated once (1 MiB, reused for every file)."""
    view: memoryview | None = getattr(_per_thread, "view", None)
    if view is None:
        view = _per_thread.view = memoryview(bytearray(BUFFER))
    return view


def _failure_of(exc: Exception) -> Failure:
    if isinstance(exc, transport.BadURL):
        return Failure.CLIENT  # asking again cannot help: the next source
    if isinstance(exc, transport.Timeout):
        return Failure.TIMEOUT
    if isinstance(exc, transport.BodyTruncated):
        return Failure.TRUNCATED
    return Failure.CONNECT  # refused, reset, or a response we cannot parse: try again


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


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

"""Whether a file's bytes are in the page cache, and reading them in off the event loop.

sendfile on the event loop is free when the bytes are cached and blocks the whole worker
while a disk reads them: seconds on a dying disk retrying a bad sector, during which every
other connection of the worker waits (and a loop silent for 10 s gets the worker replaced).
So a span is sent from the loop only once mincore(2) says its pages are resident (a few
hundred nanoseconds, no copy); otherwise a reader thread pulls them in (nginx's `aio
threads`, Traffic Server's per-disk AIO threads) and the response resumes when they are in.

The file is mapped once per open (no page is touched: mmap reads nothing) only so mincore
can be asked about it. A file that cannot be mapped (a file system without mmap) answers
"resident": served from the loop as before.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import queue
import sys
import threading
import time
from collections.abc import Callable

PAGE = mmap.PAGESIZE
# The most a span is checked (and sent) ahead in one go: a socket takes less per call, and a
# check bounds the bytes one sendfile may then read.
CHECK_MAX = 4 << 20
_READ_CHUNK = 256 << 10
# Address space a mapping may take: plenty on 64-bit; on a 32-bit board (3 GB for everything)
# only segment-sized files are mapped, bigger ones are sent from the loop as before.
_MAP_MAX = 1 << 40 if sys.maxsize > 2**32 else 16 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long]  # fmt: skip
_munmap = _libc.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_mincore = _libc.mincore
_mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value
# One page flag per byte; a span checked is at most CHECK_MAX (+ a page either side). One
# buffer: `resident` runs on the event loop's thread only (reader threads never ask).
_VEC = ctypes.create_string_buffer(CHECK_MAX // PAGE + 2)


def map_file(fd: int, size: int) -> int:
    """An address mincore can ask about for the file's `size` bytes; 0 when there is none
    (empty, or a file system that cannot map it)."""
    if not 0 < size <= _MAP_MAX:
        return 0
    addr = _mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    return 0 if addr in (None, _MAP_FAILED) else int(addr)


def unmap(addr: int, size: int) -> None:
    if addr:
        _munmap(addr, size)


def resident(addr: int, start: int, length: int) -> bool:
    """Every page of bytes [start, start + min(length, CHECK_MAX)) of the file mapped at
    `addr` is in the page cache (so sendfile of them cannot wait on the disk). An address of
    0, or a failed question, answers True: the loop sends as it always did."""
    if not addr or length <= 0:
        return True
    first = start - start % PAGE
    end = start + min(length, CHECK_MAX)
    if _mincore(addr + first, end - first, _VEC) != 0:
        return True
    pages = (end - first + PAGE - 1) // PAGE
    return b"\x00" not in _VEC.raw[:pages]


# What a read-in reports to the loop: the error (None when the bytes are in) and its seconds.
Done = Callable[[OSError | None, float], None]
QUEUED, RUNNING, CANCELLED = range(3)


class ReadJob:
    """One read-in: queued, running in a reader thread, or cancelled before it ran."""

    __slots__ = ("done", "fd", "length", "pool", "start", "state")

    def __init__(self, pool: _Pool, fd: int, start: int, length: int, done: Done) -> None:
        self.pool, self.fd, self.start, self.length, self.done = pool, fd, start, length, done
        self.state = QUEUED


class _Pool:
    """The reader threads and queue of one file system: a disk stuck in a read holds only
    its own threads, and its backlog only its own `pending` slots."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[ReadJob] = queue.SimpleQueue()
        self.threads = 0
        self.pending = 0  # queued or running; counted on the loop's thread only
        self.lock = threading.Lock()  # a job's QUEUED → RUNNING or CANCELLED


class DiskReader:
    """Reader threads that bring a span of an open file into the page cache, then call back
    on the event loop: `threads` per file system (st_dev), started as needed, at most
    `max_pending` read-ins waiting on one file system (`submit` says None past it: the
    caller answers 503 rather than queue without bound behind a stuck disk). Daemon
    threads: one stuck in a read never holds up the process's exit."""

    def __init__(self, call_soon: Callable[..., object], threads: int = 4, max_pending: int = 64):
        self._call_soon = call_soon  # loop.call_soon_threadsafe
        self.threads = threads
        self.max_pending = max_pending
        self._pools: dict[int, _Pool] = {}
        self.closed = False

    def submit(self, dev: int, fd: int, start: int, length: int, done: Done) -> ReadJob | None:
        pool = self._pools.get(dev)
        if pool is None:
            pool = self._pools[dev] = _Pool()
        if self.closed or pool.pending >= self.max_pending:
            return None
        job = ReadJob(pool, fd, start, min(length, CHECK_MAX), done)
        pool.pending += 1
        pool.jobs.put(job)
        if pool.threads < min(pool.pending, self.threads):
            pool.threads += 1
            threading.Thread(target=self._work, args=(pool,), name="disk-read", daemon=True).start()
        return job

    def cancel(self, job: ReadJob) -> bool:
        """Drop a read-in nobody waits for any more (its response answered or closed): True
        when it had not started, so `done` will never be called and its slot is free."""
        with job.pool.lock:
            if job.state != QUEUED:
                return False
            job.state = CANCELLED
        job.pool.pending -= 1
        return True

    def _work(self, pool: _Pool) -> None:
        buf = memoryview(bytearray(_READ_CHUNK))
        while not self.closed:
            job = pool.jobs.get()
            with pool.lock:
                if job.state == CANCELLED:
                    continue
                job.state = RUNNING
            began = time.monotonic()
            error: OSError | None = None
            try:
                read_in(job.fd, job.start, job.length, buf)
            except OSError as exc:
                error = exc
            try:
                self._call_soon(self._finished, job, error, time.monotonic() - began)
            except RuntimeError:
                return  # the loop is closed: the server stopped meanwhile

    def _finished(self, job: ReadJob, error: OSError | None, seconds: float) -> None:
        job.pool.pending -= 1
        job.done(error, seconds)

    def close(self) -> None:
        # Idle threads end at their next job; one stuck in a disk read cannot be interrupted
        # and is not waited for (a daemon thread).
        self.closed = True


def read_in(fd: int, start: int, length: int, buf: memoryview) -> None:
    """Read bytes [start, start + length) of `fd` through the page cache (into `buf`, thrown
    away), asking the kernel for all of it at once first. OSError as the read raises it."""
    os.posix_fadvise(fd, start, length, os.POSIX_FADV_WILLNEED)
    end = start + length
    while start < end:
        n = os.preadv(fd, [buf[: min(len(buf), end - start)]], start)
        if n <= 0:
            return  # the file is shorter now: the send finds out and reports it
        start += n

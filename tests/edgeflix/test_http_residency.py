"""Uncached bytes are read in by reader threads, never by the event loop (residency.py): a
disk that takes seconds to read one file stalls only the responses that need it, answers a
clear 503 past disk_timeout_s and a 500 when the read fails. Real server processes on
loopback serving real files evicted from the page cache; the slow and failing disk is the
one part played (CI has no FUSE): the read-in of one named file waits or raises EIO."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeflix.http import residency
from edgeflix.http.filecache import OpenFile
from edgeflix.http.residency import DiskReader, map_file, resident, unmap
from tests.integration.serve_support import make_title, read_until_closed

SERVER = textwrap.dedent(
    """
    import errno, os, sys, time
    from pathlib import Path
    import edgeflix.http.residency as residency
    from edgeflix.http.runner import serve_forever
    from edgeflix.http.server import ServerSettings, bind, url_of
    from edgeflix.log import setup_logging
    from origin.server import OriginSite

    setup_logging()
    real_read_in = residency.read_in
    behaviour = sys.argv[2]

    def dying_disk(fd, start, length, buf):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/seg1.m4s"):
            if behaviour == "eio":
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            time.sleep(float(behaviour))
        real_read_in(fd, start, length, buf)

    residency.read_in = dying_disk
    sock = bind("127.0.0.1", 0)
    settings = ServerSettings(disk_timeout_s=float(sys.argv[3]))
    serve_forever(OriginSite(Path(sys.argv[1])), settings, sock,
                  ready=lambda: print(url_of(sock), flush=True))
    """
)
SEG = "/titles/film/v0/seg1.m4s"
CACHED = "/titles/film/poster.jpg"


def evict(path: Path) -> bool:
    """Drop the file's pages from the page cache; False where the file system keeps them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        size = os.fstat(fd).st_size
        addr = map_file(fd, size)
        try:
            return addr != 0 and not resident(addr, 0, size)
        finally:
            unmap(addr, size)
    finally:
        os.close(fd)


def get(addr: tuple[str, int], path: str, timeout: float = 15) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(addr, timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data, _ = read_until_closed(sock, timeout=timeout)
    return data, time.monotonic() - started


@pytest.fixture
def store(tmp_path: Path) -> Path:
    make_title(tmp_path / "titles" / "film", "film")
    if not evict(tmp_path / "titles/film/v0/seg1.m4s"):
        pytest.skip("this file system keeps every page cached (tmpfs): nothing to read in")
    return tmp_path


def start(
    store: Path, behaviour: str, disk_timeout_s: float
) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(store), behaviour, str(disk_timeout_s)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    host, port = proc.stdout.readline().strip().removeprefix("http://").split(":")
    return proc, (host, int(port))


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err
    return err


def test_resident_tells_cached_pages_from_evicted_ones(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    if not evict(path):
        pytest.skip("this file system keeps every page cached")
    fd = os.open(path, os.O_RDONLY)
    addr = map_file(fd, 1 << 20)
    try:
        assert not resident(addr, 0, 1 << 20)
        os.pread(fd, 8192, 0)  # the first two pages only
        assert resident(addr, 0, 8192) and resident(addr, 100, 10)
        assert not resident(addr, 0, 1 << 20)
        os.pread(fd, 1 << 20, 0)
        assert resident(addr, 0, 1 << 20)
    finally:
        unmap(addr, 1 << 20)
        os.close(fd)
    assert resident(0, 0, 100)  # no mapping: sent from the loop as before
    assert map_file(fd, 0) == 0


def test_a_slow_disk_stalls_only_the_response_that_needs_it(store: Path) -> None:
    proc, addr = start(store, "3", disk_timeout_s=10)
    try:
        with socket.create_connection(addr, timeout=15) as slow:
            slow.sendall(f"GET {SEG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            time.sleep(0.3)  # the read-in has begun
            others = [get(addr, CACHED) for _ in range(5)]
            # One worker, one event loop: every other request is answered meanwhile.
            assert all(d.startswith(b"HTTP/1.1 200 ") for d, _ in others)
            assert max(s for _, s in others) < 1.5, others
            data, closed = read_until_closed(slow, timeout=15)
        expected = (store / "titles/film/v0/seg1.m4s").read_bytes()  # not before: it caches
        assert closed and data.startswith(b"HTTP/1.1 200 ") and data.endswith(expected)
    finally:
        err = stop(proc)
    assert "event=disk.slow_read" in err and "seg1.m4s" in err


def test_a_read_slower_than_disk_timeout_gets_503_and_a_failed_one_500(store: Path) -> None:
    proc, addr = start(store, "4", disk_timeout_s=1)
    try:
        data, seconds = get(addr, SEG)
        assert data.startswith(b"HTTP/1.1 503 ") and seconds < 3.5, (data[:80], seconds)
        assert get(addr, CACHED)[0].startswith(b"HTTP/1.1 200 ")
    finally:
        stop(proc)
    evict(store / "titles/film/v0/seg1.m4s")
    proc, addr = start(store, "eio", disk_timeout_s=10)
    try:
        data, _ = get(addr, SEG)
        assert data.startswith(b"HTTP/1.1 500 "), data[:80]
        assert get(addr, CACHED)[0].startswith(b"HTTP/1.1 200 ")
    finally:
        err = stop(proc)
    assert "event=disk.read_failed" in err


def test_a_stuck_disk_holds_only_its_own_readers_and_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reader threads and the backlog cap are per file system: read-ins for another disk
    go on while one disk is stuck, and a read-in nobody waits for is dropped unstarted."""
    stuck = threading.Event()
    slow_fd = os.open(tmp_path / "on_a", os.O_RDWR | os.O_CREAT)
    fast_fd = os.open(tmp_path / "on_b", os.O_RDWR | os.O_CREAT)
    real = residency.read_in

    def read_in(fd: int, start: int, length: int, buf: memoryview) -> None:
        if fd == slow_fd:
            stuck.wait(10)
        real(fd, start, length, buf)

    monkeypatch.setattr(residency, "read_in", read_in)
    reports: queue.SimpleQueue[tuple[str, OSError | None]] = queue.SimpleQueue()

    def call_soon(fn: Callable[..., object], *args: object) -> None:
        fn(*args)  # the test's "loop": the reader thread itself

    reader = DiskReader(call_soon, threads=1, max_pending=2)
    try:
        a1 = reader.submit(1, slow_fd, 0, 10, lambda e, s: reports.put(("a1", e)))
        a2 = reader.submit(1, slow_fd, 0, 10, lambda e, s: reports.put(("a2", e)))
        assert a1 is not None and a2 is not None
        assert reader.submit(1, slow_fd, 0, 10, lambda e, s: None) is None  # disk A is full
        b = reader.submit(2, fast_fd, 0, 10, lambda e, s: reports.put(("b", e)))
        assert b is not None
        assert reports.get(timeout=5) == ("b", None)  # disk B's read is not behind A's
        assert reader.cancel(a2)  # its client was answered 503: never read
        assert not reader.cancel(a1)  # already reading: it reports when the disk answers
        stuck.set()
        assert reports.get(timeout=5) == ("a1", None)
        time.sleep(0.2)
        assert reports.empty()
    finally:
        stuck.set()
        reader.close()
        os.close(slow_fd)
        os.close(fast_fd)


def test_a_read_stuck_on_the_disk_does_not_hold_up_a_stop(store: Path) -> None:
    proc, addr = start(store, "60", disk_timeout_s=1)
    try:
        data, _ = get(addr, SEG)
        assert data.startswith(b"HTTP/1.1 503 ")  # the read-in is still stuck in the disk
        started = time.monotonic()
        proc.terminate()
        proc.wait(timeout=20)
        assert time.monotonic() - started < 10, "the stop waited for the stuck read"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_a_cached_range_of_a_partly_cached_file_is_sent_from_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 << 20))
    if not evict(path):
        pytest.skip("this file system keeps every page cached")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 100_000, 0)  # a player's range request read this much
        file = OpenFile(fd, str(path), os.fstat(fd))
        assert file.cached(0, 100_000, epoch=1)  # its range: no reader thread again
        assert not file.cached(2 << 20, 100_000, epoch=1)
        assert file.cached_epoch == -1  # the whole file is not, so it is asked again
        unmap(file.addr, file.size)
    finally:
        os.close(fd)

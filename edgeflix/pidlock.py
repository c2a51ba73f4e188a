"""An exclusive lock held for a process's whole life: one appliance daemon per index, one
fleet manager per database. flock(2) on a file beside what it guards; the kernel drops it
when the holder dies however it dies, so a file left behind never blocks a start. The
holder writes its pid into the file for the refusal message of whoever comes second.

Short-lived locks (a title's, a fill run's) live beside their users (appliance/safefiles.py,
appliance/fill/storage.py); this one is for daemons.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from edgeflix.errors import EdgeflixError

# A holder that has its lock but has not written its pid yet: asked again this often, briefly.
_PID_TRIES, _PID_PAUSE_S = 5, 0.02


class LockHeld(EdgeflixError):
    """Another live process holds the lock; `pid` when it could be read from the file."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path, self.pid = path, pid
        super().__init__(f"{path} is locked by {'pid ' + str(pid) if pid else 'another process'}")


class LockUnusable(EdgeflixError):
    """The lock file cannot be made or opened (a read-only or full filesystem, permissions)."""


class ProcessLock:
    """Held from `take()` until `release()` or the process's exit; never inherited by the
    processes it starts (the fd is close-on-exec), so a worker outliving a crashed parent
    does not keep the next daemon out."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays (deleting it races)
            self._fd = None

    def __enter__(self) -> ProcessLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def take(path: Path) -> ProcessLock:
    """Lock `path` (made, with its folder, if missing) without waiting. Raises LockHeld when
    another process has it, LockUnusable when the file cannot be opened."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open(path)
    except OSError as exc:
        raise LockUnusable(f"cannot open the lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockHeld(path, holder(path)) from None
    except OSError as exc:
        os.close(fd)
        raise LockUnusable(f"cannot lock {path}: {exc.strerror or exc}") from None
    # The pid is for messages only: a full filesystem that refuses a few bytes must not
    # keep the daemon from starting (it has more to say about the full filesystem itself).
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return ProcessLock(path, fd)


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:
        # Made by another user (root ran the daemon once): flock works on a read-only fd.
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def holder(path: Path) -> int | None:
    """The pid written by the lock's holder, or None (not written yet, or unreadable)."""
    for attempt in range(_PID_TRIES):
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        if text.isascii() and text.isdigit():
            return int(text)
        if attempt + 1 < _PID_TRIES:
            time.sleep(_PID_PAUSE_S)
    return None

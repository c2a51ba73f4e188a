"""An exclusive lock held for a process's whole life: one appliance daemon per index, one
fleet manager per database. flock(2) on a file beside what it guards; the kernel drops it
when the holder dies however it dies, so a file left behind never blocks a start. The
holder writes its pid into the file for the refusal message of whoever comes second. A
start that fails may `discard()` the file it made (so a mistyped path leaves nothing behind):
it is unlinked while still locked, and `take` checks that the file it locked is still the
one at the path, so a process that opened the old file meanwhile takes a new one instead.

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
# Each retry means another start discarded the file just then: a few cover any real race.
_TAKE_TRIES = 8


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

    def __init__(self, path: Path, fd: int, created: bool = False) -> None:
        self.path = path
        self.created = created  # this take made the file (it was not there before)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays for the next start
            self._fd = None

    def discard(self) -> None:
        """Release, and remove the file if this take made it: for a start that failed. A file
        that was there before is left (another start, or an operator, may rely on it)."""
        if self._fd is not None and self.created:
            # Unlinked while still locked: whoever opened it meanwhile finds, once it gets the
            # lock, that the path names another file or none, and takes again (`take`).
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.release()

    def __enter__(self) -> ProcessLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def take(path: Path) -> ProcessLock:
    """Lock `path` (made, with its folder, if missing) without waiting. Raises LockHeld when
    another process has it, LockUnusable when the file cannot be opened."""
    for _ in range(_TAKE_TRIES):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            opened = _open(path)
        except OSError as exc:
            raise LockUnusable(f"cannot open the lock file {path}: {exc.strerror or exc}") from None
        if opened is None:
            continue
        fd, created = opened
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(path, holder(path)) from None
        except OSError as exc:
            os.close(fd)
            raise LockUnusable(f"cannot lock {path}: {exc.strerror or exc}") from None
        if _still_at(path, fd):
            break
        os.close(fd)  # discarded by a failed start while we waited for it: take anew
    else:
        raise LockUnusable(f"cannot lock {path}: it was removed each time it was taken")
    # The pid is for messages only: a full filesystem that refuses a few bytes must not
    # keep the daemon from starting (it has more to say about the full filesystem itself).
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return ProcessLock(path, fd, created)


def _open(path: Path) -> tuple[int, bool] | None:
    """An fd on the lock file and whether this call made it; None when the file went between
    two looks (a failed start discarded it): the caller tries again."""
    with contextlib.suppress(FileExistsError):
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), True
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC), False
    except FileNotFoundError:
        return None
    except PermissionError:
        # Made by another user (root ran the daemon once): flock works on a read-only fd.
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False


def _still_at(path: Path, fd: int) -> bool:
    """`fd` is the file `path` names (not one unlinked since it was opened)."""
    try:
        here, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


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

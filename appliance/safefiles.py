"""Crash-safe file primitives for the store: verified copies, directory fsyncs, per-title locks,
and clean-ups that a second Ctrl-C cannot cut short.

A file reaches its final name only complete and fsynced (temporary name, fsync, rename, fsync of
the directory), so after a crash a final name is either absent or whole; temporary names start
with '.' and end with '.tmp' so reconcile can recognise and remove them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from appliance.disks import StorageError
from edgeflix.atomicfile import fsync_dir
from edgeflix.log import event

log = logging.getLogger("appliance.store")

CHUNK = 1 << 20
# After a tier move flips the index, old copies stay this long so a request that located the
# old path just before the flip can still open it (open descriptors survive the unlink anyway).
UNLINK_GRACE_S = 2.0
TMP_SUFFIX = ".tmp"


class ChecksumMismatch(Exception):
    """The bytes copied do not have the expected size or SHA-256."""


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def make_dirs(path: Path) -> None:
    """mkdir -p, fsyncing each parent of a folder it creates so the folder survives a crash."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        fsync_dir(folder.parent)


def prune_empty_dirs(top: Path, stop: Path) -> None:
    """Remove `top` and its empty parents up to (not including) `stop`."""
    folder = top
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty, or already gone
        folder = folder.parent


@dataclass
class Throttle:
    """Keeps a stream of writes under `bytes_per_s` (clock and sleep injected for tests)."""

    bytes_per_s: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _start: float | None = None
    _sent: int = 0

    def consume(self, n: int) -> None:
        now = self.clock()
        if self._start is None:
            self._start = now
        self._sent += n
        ahead = self._start + self._sent / self.bytes_per_s - now
        if ahead > 0:
            self.sleep(ahead)


def copy_verified(
    src: Path,
    dst: Path,
    size: int,
    sha256: str,
    *,
    throttle: Throttle | None = None,
    on_bytes: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Copy `src` to `dst` crash-safely, keeping src's mtime; ChecksumMismatch if it is not
    exactly `size` bytes with `sha256`. Nothing is left at `dst` unless the copy is whole."""
    make_dirs(dst.parent)
    tmp = dst.parent / f".{dst.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    digest = hashlib.sha256()
    copied = 0
    try:
        with src.open("rb") as fin, tmp.open("xb") as fout:
            while chunk := fin.read(CHUNK):
                if should_stop and should_stop():
                    raise InterruptedError("copy stopped")
                copied += len(chunk)
                if copied > size:
                    break  # longer than announced: no need to read the rest
                digest.update(chunk)
                fout.write(chunk)
                if throttle:
                    throttle.consume(len(chunk))
                if on_bytes:
                    on_bytes(len(chunk))
            if copied != size:
                raise ChecksumMismatch(f"size {copied if copied <= size else 'more'} != {size}")
            if digest.hexdigest() != sha256:
                raise ChecksumMismatch("SHA-256 mismatch")
            st = os.fstat(fin.fileno())
            fout.flush()
            # Same Last-Modified wherever and whenever a title is copied.
            os.utime(fout.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_files(paths: Sequence[Path], workers: int = 8) -> None:
    """fsync many files at once: concurrent fsyncs share journal commits (ext4, xfs), so
    this costs about one flush instead of one per file."""

    def sync(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        for done in [pool.submit(sync, p) for p in paths]:
            done.result()


def move_verified(src: Path, dst: Path, size: int) -> bool:
    """Move `src` to `dst` by rename, for a file whose SHA-256 the caller verified in this
    process (the fill's staging files): no copy, no re-hash. The caller has fsynced `src`
    (fsync_files), so the final name never points at unwritten blocks; its size is checked
    here (cheap). False, with nothing changed, when `src` and `dst` are on different
    filesystems: the caller copies instead. The caller fsyncs dst's folder afterwards."""
    make_dirs(dst.parent)
    st = os.stat(src)
    if st.st_dev != os.stat(dst.parent).st_dev:
        return False
    if st.st_size != size:
        raise ChecksumMismatch(f"size {st.st_size} != {size}")
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:  # same device number, yet another mount (bind mounts)
            return False
        raise
    return True


def through_symlink(path: Path) -> bool:
    """True when a folder on the way to `path` is a symbolic link (store paths are built from
    resolved disk paths, so any difference is a link someone placed inside the store)."""
    return os.path.realpath(path.parent) != str(path.parent)


def remove_entry(path: Path) -> bool:
    """Remove whatever sits at `path` (file, symbolic link, folder tree) without following a
    link; False when nothing was there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()
    return True


def unlink_synced(paths: list[Path]) -> None:
    """Remove files (already gone is fine; a folder or link in a file's place too, never
    what a link points to) and fsync each folder touched once."""
    folders = set()
    for path in paths:
        if through_symlink(path) or not remove_entry(path):
            continue  # reached through a placed link: reconcile's sweep removes the link
        folders.add(path.parent)
    for folder in folders:
        if folder.exists():
            fsync_dir(folder)


def walk_files(top: Path) -> Iterator[Path]:
    """Every non-folder under `top`, links to folders included (never followed)."""
    if not top.is_dir() or top.is_symlink():
        return
    for folder, dirs, names in os.walk(top):
        for name in names:
            yield Path(folder) / name
        for name in dirs:
            if os.path.islink(os.path.join(folder, name)):
                yield Path(folder) / name


class TitleLocks:
    """One advisory lock file per title (flock), shared by every process using the store.

    Loads, removals, tier moves and verification hold a title's lock while they work on it;
    reconcile only touches titles whose lock it can take without waiting, so it never undoes
    another process's work in progress. Lock files are never deleted (that would race).
    """

    def __init__(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the lock folder {folder}: {exc.strerror}") from None
        self.folder = folder

    @contextmanager
    def hold(self, title_id: str, *, wait: bool = True) -> Iterator[bool]:
        """Yield True with the lock held, or False at once if busy and `wait` is False."""
        path = self.folder / f"{title_id}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open the lock file {path}: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                # Another process works on the title (a tier move of a big title, a fill):
                # that can take minutes, so say why this one waits rather than hang silent.
                busy = "another process is working on it (a tier move, a fill or a load)"
                event(log, "title.waiting", title=title_id, reason=busy)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    @contextmanager
    def store_wide(self, name: str) -> Iterator[None]:
        """Hold the store-wide lock `name` (waiting for it), for short decisions that must
        not interleave across processes (room checks, disk claims). Names start with '.': a
        title id starts with a letter or digit, so they never clash with a title's lock."""
        path = self.folder / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open the lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# -- clean-ups that run to their end ---------------------------------------------------------
# A store operation that fails (an error, Ctrl-C) undoes what it did: a load interrupted
# half-way deletes its partial copy. A second Ctrl-C a moment later used to land inside that
# undo and leave half of it (a title `removing`, hundreds of MB on the disks until the next
# reconcile). So, on the main thread of a command (Python's own handlers in place), the first
# SIGINT raises KeyboardInterrupt as always, and from then on SIGINT and SIGTERM wait until the
# undo is over. A signal mask would not do: Python runs its handlers on the main thread,
# whichever thread the kernel gave the signal to (a progress bar's, say). The undo only
# renames and deletes one title's files and updates its rows: it stays short. Elsewhere (the
# daemon's threads, its own handlers) nothing changes: the daemon stops its work itself.

_DEFAULT_HANDLERS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


@dataclass
class _Signals:
    """The main thread's SIGINT/SIGTERM handler while a store operation runs."""

    held: int = 0  # depth of `uninterrupted` blocks
    stopping: bool = False  # interrupted or failed: everything waits for the undo
    arrived: list[int] = field(default_factory=list)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.held or self.stopping:
            self.arrived.append(signum)
            return
        self.stopping = True  # the undo this starts runs to its end
        if signum != signal.SIGINT:
            self.arrived.append(signum)  # delivered once the undo is done: the process ends
        raise KeyboardInterrupt

    def deliver(self, in_flight: BaseException | None) -> None:
        """With the previous handlers back: what arrived meanwhile, now. A SIGTERM ends the
        process as it would have; a Ctrl-C is a KeyboardInterrupt, unless one is on its way."""
        if signal.SIGTERM in self.arrived:
            signal.raise_signal(signal.SIGTERM)
        if signal.SIGINT in self.arrived and not isinstance(in_flight, KeyboardInterrupt):
            raise KeyboardInterrupt


_signals: _Signals | None = None  # set while installed (main thread only)


@contextmanager
def _guarded() -> Iterator[_Signals | None]:
    """The handler in force for the block: the enclosing operation's, or one installed here
    until the block is left; None off the main thread or under handlers of someone else's."""
    global _signals
    if threading.current_thread() is not threading.main_thread():
        yield None  # signals are the main thread's business: never held for another's work
        return
    if _signals is not None:
        yield _signals
        return
    ours = [s for s, default in _DEFAULT_HANDLERS.items() if signal.getsignal(s) == default]
    if not ours:
        yield None
        return
    previous = {s: signal.getsignal(s) for s in ours}
    guard = _Signals()
    for sig in ours:
        signal.signal(sig, guard.on_signal)
    _signals = guard
    in_flight: BaseException | None = None
    try:
        yield guard
    except BaseException as exc:
        in_flight = exc
        raise
    finally:
        guard.stopping = True  # nothing raises while the handlers are put back
        _signals = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        guard.deliver(in_flight)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A step that must not stop half-way (a removal): SIGINT and SIGTERM that arrive during
    it take effect once it is over."""
    with _guarded() as guard:
        if guard is None:
            yield
            return
        guard.held += 1
        try:
            yield
        finally:
            guard.held -= 1
        if not guard.held and not guard.stopping and guard.arrived:
            guard.stopping = True  # inside an operation: it stops now, and is undone
            raise KeyboardInterrupt


@contextmanager
def undone_on_failure(undo: Callable[[], None]) -> Iterator[None]:
    """Run the block; if anything stops it (an error, Ctrl-C, SIGTERM), `undo` runs to its
    end before the exception goes on: from the first interrupt on, SIGINT and SIGTERM wait
    until the undo is over."""
    with _guarded() as guard:
        try:
            yield
        except BaseException:
            if guard is not None:
                # First, before any call (where Python runs pending handlers): from here a
                # signal waits.
                guard.stopping = True
            undo()
            raise

"""The origin store on disk (I/O shell): `STORE/titles/<id>/` holds published titles; an
ingest builds in a locked `STORE/.tmp-<id>-<random>/` and publishes with one rename, so a
reader sees the old title or the new one, never half of one. `origin serve` lists titles here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgeflix.atomicfile import fsync_dir
from edgeflix.titlefiles import FILES_JSON, TitleFilesError, check_title_id, read, read_header
from origin import replaced
from origin.errors import StoreError

TITLES = "titles"
TMP_PREFIX = ".tmp-"
LOCK = ".lock"
# A temp folder without its lock file is an ingest setting up (microseconds); older than
# this, it is one that died there.
UNLOCKED_GRACE_S = 600.0
BUILD = "title"  # the title being built, inside the temp folder
OLD = "old"  # a replaced title, parked inside the temp folder until it is deleted
# A removed title (`origin rm`), parked likewise; unlike OLD, never put back by clean_stale.
REMOVED = "removed"

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass(frozen=True)
class PublishedTitle:
    id: str
    title: str
    duration: float
    renditions: tuple[str, ...]
    total_bytes: int
    digest: str  # SHA-256 of files.json as published
    path: Path
    files_json_bytes: int = 0  # files.json itself, which total_bytes leaves out


def titles_dir(store: Path) -> Path:
    return store / TITLES


def check_store(store: Path) -> None:
    """A store that is not there yet is an empty one (nothing ingested); a file or a titles
    entry that is not a folder is a mistake in the path, said as such."""
    if store.exists() and not store.is_dir():
        raise StoreError(f"store {store} is not a folder")
    if titles_dir(store).exists() and not titles_dir(store).is_dir():
        raise StoreError(f"store {store}: {titles_dir(store)} is not a folder")


def list_titles(store: Path) -> list[PublishedTitle]:
    """Every published title with a valid files.json naming its folder, sorted by id
    (others are skipped)."""
    return PublishedTitles(store).titles()


# What identifies a title folder's files.json as read: the folder's inode (a publish
# swaps folders), and the file's inode, size and mtime.
_FileKey = tuple[int, int, int, int]


class PublishedTitles:
    """list_titles for a long-lived reader (`origin serve`): a files.json is read, checked
    and hashed again only when its folder or the file itself changed, so listing a store
    of long titles (MBs of files.json each) costs a stat per title, not seconds."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self._seen: dict[str, tuple[_FileKey, PublishedTitle | None]] = {}

    def titles(self) -> list[PublishedTitle]:
        check_store(self.store)
        root = titles_dir(self.store)
        if not root.is_dir():
            return []
        seen: dict[str, tuple[_FileKey, PublishedTitle | None]] = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            try:
                dir_st = folder.stat()
                st = (folder / FILES_JSON).stat()
            except OSError:
                continue
            key = (dir_st.st_ino, st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._seen.get(folder.name)
            seen[folder.name] = cached if cached and cached[0] == key else (key, _published(folder))
        self._seen = seen
        return [title for _, title in seen.values() if title is not None]


def _published(folder: Path) -> PublishedTitle | None:
    """The title in `folder` as listed, from its files.json's header: its list of files was
    checked when it was published, and parsing it again would cost each listing seconds
    per hundred long titles. A files.json that does not parse that far lists nothing."""
    try:
        model, digest = read_header(folder)
        manifest_size = (folder / FILES_JSON).stat().st_size
    except (TitleFilesError, OSError):
        return None
    if model.id != folder.name:
        return None  # copied or renamed by hand: its URLs (by id) would not find it
    return PublishedTitle(
        id=model.id,
        title=model.title,
        duration=model.duration,
        renditions=tuple(r.id for r in model.renditions),
        total_bytes=model.total_bytes,
        digest=digest,
        path=folder,
        files_json_bytes=manifest_size,
    )


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    """Linux renameat2(2); OSError(EINVAL/ENOSYS) where the libc or filesystem lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        raise OSError(errno.ENOSYS, "renameat2 not available")
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(dst))


def _try_lock(lock_path: Path) -> int | None:
    """An fd holding an exclusive flock on the existing `lock_path`, or None if someone
    holds it. Never creates it: a lock file appears already locked (Staging._lock)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def clean_stale(store: Path, now: Callable[[], float] = time.time) -> list[str]:
    """Remove temp folders left by ingests that died (their lock is free); if one died between
    the two renames of a fallback replace, put the old title back first. A temp folder
    without its lock file is an ingest being set up, unless older than UNLOCKED_GRACE_S
    (one that died then). Returns what went."""
    removed: list[str] = []
    if not store.is_dir():
        return removed
    for tmp in sorted(p for p in store.iterdir() if p.name.startswith(TMP_PREFIX)):
        fd = None
        if tmp.is_dir():
            if not (tmp / LOCK).exists():
                with contextlib.suppress(OSError):
                    if now() - tmp.stat().st_mtime < UNLOCKED_GRACE_S:
                        continue
            else:
                fd = _try_lock(tmp / LOCK)
                if fd is None:
                    continue  # a live ingest owns it
        try:
            title_id = tmp.name[len(TMP_PREFIX) :].rsplit("-", 1)[0]
            live = titles_dir(store) / title_id
            if (tmp / OLD).is_dir() and not live.exists():
                os.rename(tmp / OLD, live)
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp.name)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


class Staging:
    """A locked temp folder for one ingest; `publish()` moves its title into place, leaving
    the context removes whatever is left (the half-built title, or the replaced old one)."""

    def __init__(
        self,
        store: Path,
        title_id: str,
        replace: bool,
        token: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.time,
        keep_s: float = replaced.KEEP_S,
    ) -> None:
        self.store = store
        self.clock = clock
        self.keep_s = keep_s
        self.title_id = check_title_id(title_id)
        self.replace = replace
        self._token = token or (lambda: secrets.token_hex(6))
        self._fd: int | None = None
        self.root = store / f"{TMP_PREFIX}{title_id}-{self._token()}"
        self.title_dir = self.root / BUILD
        self.cleaned: list[str] = []
        self.kept = 0  # segments of the replaced version kept for its players (replaced.py)
        self.keep_error: str | None = None

    @property
    def target(self) -> Path:
        return titles_dir(self.store) / self.title_id

    def __enter__(self) -> Staging:
        try:
            titles_dir(self.store).mkdir(parents=True, exist_ok=True)
            self.cleaned = clean_stale(self.store) + replaced.sweep(self.store, self.clock())
            self.check_free()
            self.root.mkdir()
            self._fd = self._lock()
            self.title_dir.mkdir()
        except OSError as exc:
            shutil.rmtree(self.root, ignore_errors=True)
            raise store_error(exc, self.store) from None
        return self

    def _lock(self) -> int:
        """The lock file, locked before it takes its name: another ingest's clean_stale
        never finds it unlocked (between an open and a flock) and takes the folder for a
        dead one's."""
        part = self.root / f"{LOCK}.{self._token()}"
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(part, self.root / LOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_free(self) -> None:
        if self.target.exists() and not self.replace:
            raise StoreError(
                f"title '{self.title_id}' already exists in {self.store}; use --replace"
            )

    def publish(self) -> None:
        """Make the built title the live one in a single step a reader cannot see half of."""
        self.check_free()
        try:
            fsync_dir(self.title_dir)
            if self.target.exists():
                self._keep_old()
                self._swap()
            else:
                self._rename_new()
            fsync_dir(titles_dir(self.store))
        except OSError as exc:
            raise store_error(exc, self.store) from None

    def remove(self) -> int:
        """Take the live title out of the store (`origin rm`): one rename stops its listing
        and serving (appliances prune it when the fleet sees it gone), then the segments
        kept for its replaced versions' players go too. Returns the bytes it held."""
        if not self.target.is_dir() or self.target.is_symlink():
            raise StoreError(f"no title '{self.title_id}' in store {self.store}")
        parked = self.root / REMOVED
        try:
            os.rename(self.target, parked)
            fsync_dir(titles_dir(self.store))
        except OSError as exc:
            raise store_error(exc, self.store) from None
        replaced.sweep(self.store, self.clock(), all_of=self.title_id)
        return sum(p.stat().st_size for p in parked.rglob("*") if p.is_file())

    def _keep_old(self) -> None:
        """Link the live version's segments the new one lacks aside, before the swap, for
        the players still on it. Best effort: without them those players fail over, as
        before, but the new version is published all the same."""
        if self.keep_s <= 0:
            return
        try:
            model, _ = read(self.title_dir)
            new_paths = {e.path for e in model.files}
            until = self.clock() + self.keep_s
            self.kept = replaced.keep(
                self.store, self.title_id, self.target, new_paths, until, self.root
            )
        except (OSError, TitleFilesError) as exc:
            self.keep_error = str(exc)

    def _rename_new(self) -> None:
        try:
            _renameat2(self.title_dir, self.target, _RENAME_NOREPLACE)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise StoreError(f"title '{self.title_id}' appeared while ingesting") from None
            if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            os.rename(self.title_dir, self.target)

    def _swap(self) -> None:
        try:
            # Atomic exchange: the new title goes live and the old lands in our temp folder.
            _renameat2(self.title_dir, self.target, _RENAME_EXCHANGE)
            os.rename(self.title_dir, self.root / OLD)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
            # No exchange here: for an instant there is no title (never half of one); a
            # crash in that instant is repaired by clean_stale() from OLD.
            os.rename(self.target, self.root / OLD)
            os.rename(self.title_dir, self.target)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_title(store: Path, title_id: str) -> int:
    """`origin rm`: Staging.remove in a temp folder of its own, so a crash halfway leaves a
    folder the next ingest's clean_stale deletes. Returns the bytes the title held."""
    check_store(store)
    if not (titles_dir(store) / check_title_id(title_id)).is_dir():  # not a store made here
        raise StoreError(f"no title '{title_id}' in store {store}")
    with Staging(store, title_id, replace=True) as staging:
        return staging.remove()


def store_error(exc: OSError, store: Path) -> StoreError:
    """An OSError from the store, as one line the operator can act on."""
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full: no space left in store {store}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"store {store} is not writable ({exc.strerror})")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return StoreError(f"store {store} is not a directory")
    return StoreError(f"store {store}: {exc.strerror or exc}")

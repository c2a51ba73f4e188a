"""Small files written whole or not at all: a fresh temporary name, fsync, rename, fsync of
the folder. For keys, tokens and control-plane state (fleet/tls.py, fleet/admin.py,
appliance/fleetlink_state.py); segment files have their own path (appliance/safefiles.py),
which shares `fsync_dir` with it and with the origin's publish (origin/store.py).

A process killed between the temporary's creation and its rename leaves it behind:
`is_temporary_of` recognises one and `sweep_temporaries` removes them, for the owners of a
folder who know no writer of theirs is in progress there (appliance/startup.py, sweeper.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Collection
from pathlib import Path

TMP_SUFFIX = ".tmp"
# The random part of a temporary's name: 8 hex digits here; mkstemp's 8 of [a-z0-9_] in
# the versions before, whose leftovers are recognised too.
_RANDOM = r"[a-z0-9_]{8}"
_TRIES = 100  # as mkstemp: a clash of 32 random bits 100 times running is no accident


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` (mode 0600 unless told: most of these files are secrets).
    Raises OSError; a crash leaves the old file or the new one, never a mix."""
    # A fresh name opened O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, not a fixed one: a symlink
    # planted at `.name.tmp` would have been followed, its target truncated, written and
    # chmod'd, and then renamed onto `path`.
    fd, tmp = _create_temporary(path)
    try:
        try:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a failed or interrupted write leaves nothing behind
        raise
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (os.write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def temporary_name(name: str) -> str:
    """A fresh temporary name for the file `name`: `.{name}.<8 hex>.tmp`, as the store's
    temporary files (appliance/safefiles.py)."""
    return f".{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def is_temporary_of(name: str, final: str) -> bool:
    """`name` is a temporary write_atomic made for the file `final`: `.{final}.<random>.tmp`,
    or `.{final}.tmp` (the fixed name of the versions before mkstemp)."""
    if name == f".{final}{TMP_SUFFIX}":
        return True
    return re.fullmatch(re.escape(f".{final}.") + _RANDOM + re.escape(TMP_SUFFIX), name) is not None


def _create_temporary(path: Path) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TRIES):
        tmp = str(path.parent / temporary_name(path.name))
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def sweep_temporaries(
    folder: Path, finals: Collection[str], min_age_s: float = 0.0, now: float | None = None
) -> list[Path]:
    """Remove the temporaries write_atomic left in `folder` (not below it) for the files
    named in `finals`: regular files of this user only (never a link, a folder or someone
    else's file), last written at least `min_age_s` before `now` (wall clock) so that a
    writer in progress keeps its own. The caller vouches that no writer of those files
    older than that is alive (its lock, or a start). Returns what was removed; raises
    OSError when the folder cannot be read (an absent one holds nothing)."""
    now = time.time() if now is None else now
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        if not any(is_temporary_of(name, final) for final in finals):
            continue
        path = folder / name
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            if now - st.st_mtime < min_age_s:
                continue  # perhaps still being written
            path.unlink()
        except FileNotFoundError:
            continue  # renamed into place or removed meanwhile
        removed.append(path)
    if removed:
        fsync_dir(folder)
    return removed

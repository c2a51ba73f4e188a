"""Small files written whole or not at all: a fresh temporary name, fsync, rename, fsync of
the folder. For keys, tokens and control-plane state (fleet/tls.py, fleet/admin.py,
appliance/fleetlink_state.py); segment files have their own path (appliance/safefiles.py),
which shares `fsync_dir` with it and with the origin's publish (origin/store.py).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` (mode 0600 unless told: most of these files are secrets).
    Raises OSError; a crash leaves the old file or the new one, never a mix."""
    # A fresh name opened O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600 (mkstemp), not a fixed one:
    # a symlink planted at `.name.tmp` would have been followed, its target truncated,
    # written and chmod'd, and then renamed onto `path`. Named `.{name}.<random>.tmp`, as
    # the store's temporary files (appliance/safefiles.py).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)  # mkstemp's is 0600 whatever is asked
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

"""Small files written whole or not at all: temporary name, fsync, rename, fsync of the folder.
For keys, tokens and control-plane state (fleet/tls.py, fleet/admin.py,
appliance/fleetlink_state.py); segment files have their own path (appliance/safefiles.py),
which shares `fsync_dir` with it and with the origin's publish (origin/store.py).
"""

from __future__ import annotations

import os
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
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode does not apply to a leftover tmp file
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)

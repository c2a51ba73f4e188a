"""One pass over a title's folder on a disk, for reconcile (repair.py): every entry below it
as lstat sees it, read through os.scandir (one directory read per folder, one lstat per
regular file for its size, one realpath per folder scanned, no link ever followed).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FolderScan:
    """What is under a title's folder on one disk. Paths are relative, '/'-separated, like
    the index's."""

    # No symbolic link on the way to the folder (its disk path is resolved, so any difference
    # is a link someone placed): only then is a file found here one the server may open.
    direct: bool
    # Every non-folder below it, links to folders included (never followed), in walk order.
    entries: tuple[str, ...]
    # Size of each entry that is a regular file (reached without links: none is followed).
    sizes: dict[str, int]


def scan_folder(top: Path) -> FolderScan | None:
    """The scan of `top`, or None when it is not a folder (absent, a link, a file)."""
    try:
        if not stat.S_ISDIR(os.lstat(top).st_mode):
            return None
    except OSError:
        return None
    entries: list[str] = []
    sizes: dict[str, int] = {}
    stack = [("", str(top))]
    while stack:
        prefix, folder = stack.pop()
        try:
            listing = os.scandir(folder)
        except OSError:
            continue  # an unreadable folder is skipped, as os.walk does
        below = []
        with listing:
            for entry in listing:
                rel = prefix + entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        below.append((rel + "/", entry.path))
                        continue
                    regular = entry.is_file(follow_symlinks=False)
                    size = entry.stat(follow_symlinks=False).st_size if regular else None
                except FileNotFoundError:
                    continue  # gone since the folder was read
                except OSError:
                    size = None  # unreadable: the full check (repair.check_size) says why
                entries.append(rel)
                if size is not None:
                    sizes[rel] = size
        stack.extend(reversed(below))
    return FolderScan(os.path.realpath(top) == str(top), tuple(entries), sizes)

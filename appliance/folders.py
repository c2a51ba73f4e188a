"""A title's folders on the disks: their names, and the grace of a replaced version's folder.

A title's files live in DISK/titles/FOLDER/ (index.file_path). FOLDER is the title's id, or
`ID~TAG` (TAG: hex) for a version loaded over another: it is written beside the one being
served, one transaction points the title at it, and the old folder goes after a grace. So
an update never takes a title out of service, and after a crash at any point the folder the
index names is whole; any other folder of the title is swept by reconcile. `~` is never in
an id, so no folder of one title can be another's.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from appliance.disks import Disk
from edgeflix.titlefiles import TitleFilesError, check_title_id

FOLDER_TAG_SEP = "~"
_TAG_RE = re.compile(r"[0-9a-f]{1,32}")

# A folder of a title that an update retired is left alone by any reconcile for this long (its
# mtime is set at retirement): the process that retired it deletes it after its own grace,
# and a request that located a file there just before the swap can still open it.
RETIRED_GRACE_S = 60.0


def new_folder(title_id: str) -> str:
    return f"{title_id}{FOLDER_TAG_SEP}{secrets.token_hex(4)}"


def folder_title(name: str) -> str | None:
    """The title a folder under DISK/titles belongs to, or None when it is no title's."""
    base, sep, tag = name.partition(FOLDER_TAG_SEP)
    if sep and not _TAG_RE.fullmatch(tag):
        return None
    try:
        return check_title_id(base)
    except TitleFilesError:
        return None


def mark_retired(disks: Sequence[Disk], folder: str) -> None:
    for disk in disks:
        with contextlib.suppress(OSError):  # a disk gone read-only: reconcile sweeps it later
            os.utime(disk.titles_dir / folder)


def recently_retired(path: Path, now: float) -> bool:
    try:
        return now - path.stat().st_mtime < RETIRED_GRACE_S
    except OSError:
        return False

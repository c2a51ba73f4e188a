"""What staging already holds of a title, for downloader.py: files.json written for the
version being fetched (older versions' files dropped), files a killed or failed run left
verified (hashed again before the store adopts them), and partial downloads to resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

from appliance.fill.layout import PART, StagingLayout
from appliance.fill.stream import StreamJob
from edgeflix import titlefiles
from edgeflix.log import event
from edgeflix.titlefiles import FILES_JSON, TitleFiles

log = logging.getLogger("appliance.fill")


def prepare_staging(staging: StagingLayout, raw: bytes, digest: str) -> None:
    """Start over (on every disk) when staging holds a different version of the title;
    then write files.json."""
    current = staging.folder / FILES_JSON
    if current.exists() and titlefiles.digest_bytes(current.read_bytes()) != digest:
        for folder in staging.folders():
            shutil.rmtree(folder, ignore_errors=True)
    staging.folder.mkdir(parents=True, exist_ok=True)
    tmp = staging.folder / (FILES_JSON + PART)
    tmp.write_bytes(raw)
    os.replace(tmp, current)


def reverify_staged(staging: StagingLayout, model: TitleFiles, job: StreamJob) -> None:
    """Hash again each file an earlier process left verified in staging (a run killed or
    failed after it staged): the store adopts staged files without a second look, and a
    crash, a torn write or a rotting disk may have changed one since. A file that no longer
    matches files.json is removed, so it is downloaded (or reused) again."""
    present = _files_in(staging, model)
    for entry in model.files:
        job.check()
        final = staging.file(entry.path)
        found = present.get(str(final))
        if found is None:
            continue
        try:
            size = found.stat().st_size
            if size == entry.size and titlefiles.sha256_file(final) == entry.sha256:
                continue
            final.unlink()
        except FileNotFoundError:
            continue  # removed meanwhile: downloaded again (a failing disk's EIO goes up)
        event(
            log,
            "fill.staged_file_corrupt",
            logging.WARNING,
            title=model.id,
            path=entry.path,
            size=size,
        )


def scan_staging(
    staging: StagingLayout, model: TitleFiles
) -> tuple[dict[str, int], dict[str, int]]:
    """Files already verified (final name, in this process: reverify_staged ran first) and
    partial downloads (.part) in staging."""
    present = _files_in(staging, model)
    complete: dict[str, int] = {}
    partial: dict[str, int] = {}
    for entry in model.files:
        final = staging.file(entry.path)
        for found, into in (
            (present.get(str(final)), complete),
            (present.get(f"{final}{PART}"), partial),
        ):
            if found is not None:
                with contextlib.suppress(FileNotFoundError):
                    into[entry.path] = found.stat().st_size
    return complete, partial


def _files_in(staging: StagingLayout, model: TitleFiles) -> dict[str, os.DirEntry[str]]:
    """The regular files (by path) in the staging folders of `model`'s files, one listing
    per folder: a stat per file, absent or not, cost a second for a 2,409-file title."""
    folders = {str(staging.file(entry.path).parent) for entry in model.files}
    found: dict[str, os.DirEntry[str]] = {}
    for folder in folders:
        try:
            with os.scandir(folder) as listing:
                found.update((e.path, e) for e in listing if e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found

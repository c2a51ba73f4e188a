"""fill/runner.py's staging_failure: which download failures are this appliance's own
staging (a disk full or failing, a name too long, a folder in the way), reported as the
title's one-line failure while the run goes on, and which are bugs that must surface."""

from __future__ import annotations

import errno

from appliance.fill.runner import staging_failure


def test_disk_errors_are_local_even_inside_a_task_group() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    assert staging_failure(full) is full
    assert staging_failure(ExceptionGroup("streams", [full, OSError(errno.EIO, "I/O")])) is full
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [full])])
    assert staging_failure(nested) is full


def test_any_other_oserror_fails_the_title_too() -> None:
    long = OSError(errno.ENAMETOOLONG, "File name too long")
    assert staging_failure(long) is long
    folder = IsADirectoryError(errno.EISDIR, "Is a directory")
    assert staging_failure(ExceptionGroup("streams", [folder])) is folder
    # A full disk among them is what the title reports (its partial files are dropped).
    full = OSError(errno.ENOSPC, "No space left on device")
    both = ExceptionGroup("streams", [long, ExceptionGroup("inner", [full])])
    assert staging_failure(both) is full


def test_bugs_are_not() -> None:
    assert staging_failure(ValueError("bug")) is None
    full = OSError(errno.ENOSPC, "No space left on device")
    assert staging_failure(ExceptionGroup("streams", [full, KeyError("bug")])) is None

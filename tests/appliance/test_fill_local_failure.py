"""fill/runner.py's local_failure: which download failures are this appliance's own disk
(full, failing, read-only), reported as the title's one-line failure, and which are not."""

from __future__ import annotations

import errno

from appliance.fill.runner import local_failure


def test_disk_errors_are_local_even_inside_a_task_group() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    assert local_failure(full) is full
    assert local_failure(ExceptionGroup("streams", [full, OSError(errno.EIO, "I/O")])) is full
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [full])])
    assert local_failure(nested) is full


def test_network_errors_and_bugs_are_not() -> None:
    assert local_failure(ConnectionResetError(errno.ECONNRESET, "reset")) is None
    assert local_failure(ValueError("bug")) is None
    full = OSError(errno.ENOSPC, "No space left on device")
    assert local_failure(ExceptionGroup("streams", [full, KeyError("bug")])) is None

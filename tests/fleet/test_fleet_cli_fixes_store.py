"""What `fleet serve` may change beside `[server] db` (fleet/store.py, edgeflix/pidlock.py):
only regular files SQLite has read as a database are tightened, never through a symlink;
and a lock file a failed start made is removed, safely for whoever opened it meanwhile."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from edgeflix import pidlock
from fleet.store import Store, StoreError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_database_reached_through_a_symlink_is_left_as_it_is_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real = tmp_path / "elsewhere" / "fleet.sqlite"
    Store(real).close()
    real.chmod(0o644)  # the operator's choice, or mistake: not ours to change
    link = tmp_path / "fleet.sqlite"
    link.symlink_to(real)
    with caplog.at_level(logging.WARNING, logger="fleet"):
        store = Store(link)
        store.set_meta("x", "1")  # it is the database, opened through the link
        store.close()
    assert mode(real) == 0o644
    said = [r for r in caplog.records if r.getMessage() == "fleet.db_not_private"]
    assert len(said) == 1 and not [r for r in caplog.records if "made_private" in r.getMessage()]


def test_what_is_no_database_is_refused_before_it_is_changed(tmp_path: Path) -> None:
    folder = tmp_path / "victim"
    folder.mkdir()
    folder.chmod(0o755)
    with pytest.raises(StoreError, match="it is a folder, not a file"):
        Store(folder)
    text = tmp_path / "notes.txt"
    text.write_text("not a database, but mine\n")
    text.chmod(0o644)
    with pytest.raises(StoreError, match="file is not a database"):
        Store(text)
    assert (mode(folder), mode(text)) == (0o755, 0o644)
    assert text.read_text() == "not a database, but mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "victim"]


def test_discard_removes_the_lock_file_only_if_this_take_made_it(tmp_path: Path) -> None:
    made = tmp_path / "a.lock"
    pidlock.take(made).discard()
    assert not made.exists()
    there = tmp_path / "b.lock"
    there.write_text("")
    pidlock.take(there).discard()
    assert there.exists()
    pidlock.take(there).release()  # and it is free again


def test_a_take_that_locked_a_discarded_file_takes_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race discard() opens: B opens the file, A (holding it) discards it, B locks the
    unlinked file. B must notice and lock the file now at the path, or C could lock that
    one too and two managers would run on one database."""
    path = tmp_path / "fleet.sqlite.lock"
    real_open = pidlock._open
    calls = []

    def open_then_lose_it(p: Path) -> tuple[int, bool] | None:
        opened = real_open(p)
        if not calls:
            os.unlink(p)  # A's discard, between B's open and B's flock
        calls.append(p)
        return opened

    monkeypatch.setattr(pidlock, "_open", open_then_lose_it)
    lock = pidlock.take(path)
    assert len(calls) == 2 and path.exists()
    monkeypatch.undo()
    # The file at the path is the one held (flock belongs to the open file: a second take
    # in this process is refused as another process's would be).
    with pytest.raises(pidlock.LockHeld):
        pidlock.take(path)
    lock.release()

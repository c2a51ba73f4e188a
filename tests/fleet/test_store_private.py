"""The fleet database holds every URL-signing secret (fleet/store.py make_private): its
files are the owner's alone, a folder made for it is too, and an install from before is
tightened at its first start, said once; a folder that was there already is left as it is."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.store import Store

DB_FILES = ("fleet.sqlite", "fleet.sqlite-wal", "fleet.sqlite-shm")


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask of most systems (files 0644 unless told): what the leak came from."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write(store: Store) -> None:
    """A write, so that SQLite has made its -wal and -shm beside the database."""
    store.set_meta("x", "1")


def test_a_new_database_and_its_folder_are_the_owners_alone(tmp_path: Path) -> None:
    folder = tmp_path / "var" / "fleet"
    store = Store(folder / "fleet.sqlite")
    write(store)
    assert mode(folder) == 0o700
    assert {f: mode(folder / f) for f in DB_FILES} == dict.fromkeys(DB_FILES, 0o600)
    assert mode(tmp_path / "var") == 0o755  # a parent on the way is an ordinary folder
    store.close()


def test_a_folder_that_was_there_is_left_as_it_is(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    store = Store(tmp_path / "fleet.sqlite")
    write(store)
    assert mode(tmp_path) == 0o755
    assert {f: mode(tmp_path / f) for f in DB_FILES} == dict.fromkeys(DB_FILES, 0o600)
    store.close()


def test_an_older_install_is_tightened_at_start_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = Store(tmp_path / "fleet.sqlite")  # keeps its -wal and -shm in place
    write(running)
    for name in DB_FILES:  # as an older version left them
        (tmp_path / name).chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="fleet"):
        Store(tmp_path / "fleet.sqlite").close()
        Store(tmp_path / "fleet.sqlite").close()  # the next start has nothing to say
    assert {f: mode(tmp_path / f) for f in DB_FILES} == dict.fromkeys(DB_FILES, 0o600)
    said = [r for r in caplog.records if r.getMessage() == "fleet.db_made_private"]
    assert len(said) == 1
    write(running)  # the running one's connection is unharmed
    assert running.meta("x") == "1"
    running.close()

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from appliance.disks import StorageError
from appliance.index import IndexReader, connect_writer, disks_with_files, transaction


def test_reader_sees_commits_of_other_connections(tmp_path: Path) -> None:
    index = tmp_path / "index.sqlite"
    connect_writer(index).close()  # the writer gone, as when the supervisor hands over
    reader = IndexReader(index)
    assert reader.locate("a", "x.m4s") is None
    writer = connect_writer(index)
    with transaction(writer) as conn:
        conn.execute("INSERT INTO titles VALUES ('a', 'd', 'loading', 'hdd', 5, 0, NULL)")
        conn.execute("INSERT INTO files VALUES ('a', 'x.m4s', '/d0', 5, 'ab', 7, 'ok')")
    assert reader.locate("a", "x.m4s") is None  # not ready: not served (cached answer redone)
    with transaction(writer) as conn:
        conn.execute("UPDATE titles SET state = 'ready' WHERE id = 'a'")
    found = reader.locate("a", "x.m4s")
    assert found is not None
    assert (found.path, found.size, found.sha256, found.mtime_ns, found.disk, found.tier) == (
        Path("/d0/titles/a/x.m4s"),
        5,
        "ab",
        7,
        "/d0",
        "hdd",
    )
    assert reader.locate("a", "x.m4s") is found  # cached while nothing changes
    with transaction(writer) as conn:
        conn.execute("UPDATE files SET state = 'missing'")
    assert reader.locate("a", "x.m4s") is None
    with pytest.raises(Exception, match="readonly"):
        reader._conn.execute("DELETE FROM files")  # the serving side cannot write


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    writer = connect_writer(tmp_path / "index.sqlite")
    with pytest.raises(RuntimeError), transaction(writer) as conn:
        conn.execute("INSERT INTO titles VALUES ('a', 'd', 'ready', 'hdd', 5, 0, NULL)")
        raise RuntimeError("crash half-way")
    assert writer.execute("SELECT COUNT(*) FROM titles").fetchone()[0] == 0


def test_reader_needs_an_index(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no index at"):
        IndexReader(tmp_path / "none.sqlite")


def test_disks_with_files_reads_the_index_without_the_store(tmp_path: Path) -> None:
    index = tmp_path / "var" / "index.sqlite"
    assert disks_with_files(index) == set()  # no index yet
    with closing(connect_writer(index)) as conn:
        assert disks_with_files(index) == set()
        conn.execute("INSERT INTO titles VALUES ('a', 'd', 'ready', 'hdd', 5, 0, NULL)")
        conn.execute("INSERT INTO files VALUES ('a', 'x', '/d1', 5, 's', 0, 'missing')")
        conn.execute("INSERT INTO files VALUES ('a', 'y', '/d2', 5, 's', 0, 'ok')")
    assert disks_with_files(index) == {"/d1", "/d2"}
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"not a database" * 100)
    assert disks_with_files(damaged) == set()

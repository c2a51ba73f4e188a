"""The index reader's memory of lookups (appliance/index.py) stays small however many junk
paths clients ask for: misses are remembered, but a bounded few, while real files are."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from appliance.index import IndexReader, connect_writer, transaction


def _index(tmp_path: Path) -> Path:
    index = tmp_path / "index.sqlite"
    writer = connect_writer(index)
    with transaction(writer) as conn:
        conn.execute("INSERT INTO titles VALUES ('a', 'd', 'ready', 'hdd', 5, 0, NULL)")
        conn.execute("INSERT INTO files VALUES ('a', 'x.m4s', '/d0', 5, 'ab', 7, 'ok')")
    writer.close()
    return index


def test_junk_paths_do_not_fill_the_reader(tmp_path: Path) -> None:
    reader = IndexReader(_index(tmp_path), refresh_per_call=False)
    junk = 4000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(junk):
            # What a scanner or a broken player sends: long paths that exist nowhere (each
            # 4 KiB, as request heads of up to 16 KiB allow), a new one every request.
            assert reader.locate("a", f"{i:08d}/" + "j" * 4096) is None
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Remembering every one would hold junk x 4 KiB (16 MB); a bounded few, a fraction.
    assert grown < 6 * 1024 * 1024, grown
    reader.close()


def test_misses_and_hits_are_still_remembered(tmp_path: Path) -> None:
    index = _index(tmp_path)
    reader = IndexReader(index, refresh_per_call=False)
    found = reader.locate("a", "x.m4s")
    assert found is not None
    assert reader.locate("a", "missing.m4s") is None
    # A change by another connection: both answers are looked up afresh after refresh().
    writer = connect_writer(index)
    with transaction(writer) as conn:
        conn.execute("INSERT INTO files VALUES ('a', 'missing.m4s', '/d0', 3, 'cd', 7, 'ok')")
        conn.execute("UPDATE files SET state = 'missing' WHERE path = 'x.m4s'")
    writer.close()
    assert reader.locate("a", "missing.m4s") is None  # not refreshed yet: the remembered miss
    assert reader.locate("a", "x.m4s") is found
    reader.refresh()
    assert reader.locate("a", "missing.m4s") is not None
    assert reader.locate("a", "x.m4s") is None
    reader.close()

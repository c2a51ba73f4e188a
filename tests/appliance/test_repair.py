"""reconcile's scope (`only`) and its scan-based size check, which must answer exactly as the
per-file check_size it stands in for (test_store*.py covers what reconcile repairs)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import DiskConfig, StorageConfig
from appliance.folderscan import scan_folder
from appliance.index import OK, FileRow, transaction
from appliance.repair import check_size, reconcile, scanned_size_problem
from appliance.store import Store
from tests.appliance.storage_fixtures import make_title


def _store(tmp_path: Path) -> Store:
    disk = tmp_path / "disk0"
    disk.mkdir()
    config = StorageConfig(
        disks=(DiskConfig(path=disk, tier="hdd"),), index=tmp_path / "var" / "index.sqlite"
    )
    return Store(config)


def test_reconcile_of_some_titles_leaves_the_others_alone(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for title_id in ("a", "b"):
        store.load(title_id, make_title(tmp_path / "src", title_id))
    titles = store.disks[0].titles_dir
    partial_a = titles / "a" / "v0" / ".seg0000.m4s.0123abcd.tmp"
    partial_b = titles / "b" / "v0" / ".seg0000.m4s.0123abcd.tmp"
    for partial in (partial_a, partial_b):
        partial.write_bytes(b"half")
    (titles / "b" / "v1" / "seg0001.m4s").unlink()
    ghost = titles / "ghost" / "seg.m4s"
    ghost.parent.mkdir()
    ghost.write_bytes(b"x")
    with transaction(store.conn) as conn:  # a load killed half-way
        conn.execute("INSERT INTO titles VALUES ('dead', 'x', 'loading', 'hdd', 10, 0, NULL)")

    report = reconcile(store, only=["a", "nosuch"])
    assert [str(f).split(" on ")[0] for f in report.findings] == [
        "a/v0/.seg0000.m4s.0123abcd.tmp: removed partial file"
    ]
    assert report.checked_files == 8  # a's six segments, playlist and files.json
    assert not partial_a.exists() and partial_b.exists() and ghost.exists()
    assert {t.id: t.state for t in store.listing()} == {
        "a": "ready",
        "b": "ready",
        "dead": "loading",
    }

    found = {str(f).split(";")[0].split(" on ")[0] for f in reconcile(store).findings}
    assert found == {
        "b/v0/.seg0000.m4s.0123abcd.tmp: removed partial file",
        "b/v1/seg0001.m4s: missing from its disk",
        "dead: removed an interrupted load",
        "ghost: removed 1 stray files of a title not in the index",
    }
    assert not partial_b.exists() and not ghost.exists()
    assert {t.id: t.state for t in store.listing()} == {"a": "ready", "b": "incomplete"}
    store.close()


FILES = {"master.m3u8": 40, "v0/seg0000.m4s": 300, "v0/seg0002.m4s": 200, "v1/seg0001.m4s": 100}
# What can sit in a stored file's place after a crash or someone's meddling.
FILE_DAMAGE = ("ok", "truncated", "grown", "missing", "folder", "full folder", "link to a copy",
               "dangling link", "fifo")  # fmt: skip
# For v1/, the title's folder and the disk's titles folder above it.
FOLDER_DAMAGE = ("real", "link to a copy")


def _damage(path: Path, size: int, how: str, spare: Path) -> None:
    if how == "truncated":
        os.truncate(path, size // 2)
    elif how == "grown":
        os.truncate(path, size + 1)
    elif how != "ok":
        path.unlink()
    if how in ("folder", "full folder"):
        path.mkdir()
        if how == "full folder":
            (path / "inside").write_bytes(b"x" * size)
    elif how == "link to a copy":
        spare.write_bytes(b"c" * size)
        path.symlink_to(spare)
    elif how == "dangling link":
        path.symlink_to(spare.parent / "nowhere")
    elif how == "fifo":
        os.mkfifo(path)


def _link_to_copy(folder: Path, copy: Path) -> None:
    """The same files, now reached through a link in the folder's place."""
    folder.rename(copy)
    folder.symlink_to(copy)


@settings(max_examples=60, deadline=None)
@given(
    files=st.fixed_dictionaries({path: st.sampled_from(FILE_DAMAGE) for path in FILES}),
    v1=st.sampled_from(FOLDER_DAMAGE),
    top=st.sampled_from(FOLDER_DAMAGE),
    above=st.sampled_from(FOLDER_DAMAGE),
)
def test_the_scan_answers_as_check_size_does(
    files: dict[str, str], v1: str, top: str, above: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp).resolve() / "disk"
        folder = disk / "titles" / "film"
        elsewhere = Path(tmp).resolve() / "elsewhere"
        elsewhere.mkdir()
        rows = []
        for i, (rel, size) in enumerate(FILES.items()):
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"s" * size)
            _damage(path, size, files[rel], elsewhere / f"spare{i}")
            rows.append(FileRow("film", rel, str(disk), size, "0" * 64, 0, OK, "film"))
        if v1 != "real":
            _link_to_copy(folder / "v1", elsewhere / "v1")
        if top != "real":
            _link_to_copy(folder, elsewhere / "film")
        if above != "real":
            _link_to_copy(folder.parent, elsewhere / "titles")
        scan = scan_folder(folder)
        for row in rows:
            answer = scanned_size_problem(row, scan)
            assert answer == check_size(row), (row.path, files, v1, top, above)

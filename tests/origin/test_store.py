from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

import pytest

from edgeflix import titlefiles
from edgeflix.titlefiles import TitleFiles
from origin.errors import StoreError
from origin.store import Staging, clean_stale, list_titles


def build(staging: Staging, marker: str) -> None:
    (staging.title_dir / "seg.m4s").write_text(marker)
    seal(staging, marker)


def seal(staging: Staging, title: str) -> None:
    """files.json for whatever the staging folder holds."""
    files = titlefiles.scan(staging.title_dir)
    model = TitleFiles(
        id=staging.title_id, title=title, duration=1.0, segment_seconds=1.0,
        created="2026-01-01T00:00:00Z", renditions=(), files=tuple(files),
        total_bytes=sum(f.size for f in files),
    )  # fmt: skip
    (staging.title_dir / "files.json").write_bytes(titlefiles.render(model))


def test_publish_then_refuse_then_replace(tmp_path: Path) -> None:
    with Staging(tmp_path, "t", replace=False) as s:
        build(s, "one")
        s.publish()
    assert [t.title for t in list_titles(tmp_path)] == ["one"]
    with pytest.raises(StoreError, match="--replace"), Staging(tmp_path, "t", replace=False):
        pass
    with Staging(tmp_path, "t", replace=True) as s:
        build(s, "two")
        s.publish()
    (title,) = list_titles(tmp_path)
    assert title.title == "two" and (title.path / "seg.m4s").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["titles"]


def test_leaving_without_publish_removes_everything(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), Staging(tmp_path, "t", replace=False) as s:
        build(s, "half")
        raise RuntimeError("encoder crashed")
    assert list_titles(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["titles"]


def test_clean_stale_spares_live_ingests_and_restores_parked_titles(tmp_path: Path) -> None:
    dead = tmp_path / ".tmp-a-0001"
    (dead / "title").mkdir(parents=True)
    (dead / ".lock").touch()  # its lock file, which nobody holds any more
    parked = tmp_path / ".tmp-b-0002"
    (parked / "old").mkdir(parents=True)
    (parked / "old" / "x").write_text("old title")
    (parked / ".lock").touch()
    live = tmp_path / ".tmp-c-0003"
    live.mkdir()
    fd = os.open(live / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        (tmp_path / "titles").mkdir()
        removed = clean_stale(tmp_path)
    finally:
        os.close(fd)
    assert sorted(removed) == [".tmp-a-0001", ".tmp-b-0002"]
    assert live.exists()
    assert (tmp_path / "titles" / "b" / "x").read_text() == "old title"


def test_list_skips_folders_without_a_valid_files_json(tmp_path: Path) -> None:
    (tmp_path / "titles" / "junk").mkdir(parents=True)
    assert list_titles(tmp_path) == [] and list_titles(tmp_path / "missing") == []


def test_list_skips_a_title_folder_copied_under_another_name(tmp_path: Path) -> None:
    with Staging(tmp_path, "t", replace=False) as s:
        build(s, "one")
        s.publish()
    shutil.copytree(tmp_path / "titles" / "t", tmp_path / "titles" / "copy")
    assert [t.id for t in list_titles(tmp_path)] == ["t"]


def test_a_temp_folder_without_its_lock_yet_is_spared_until_it_is_old(tmp_path: Path) -> None:
    """An ingest between creating its folder and locking it is alive: cleaning must not
    delete its folder (or create its lock file, and so hold it)."""
    setting_up = tmp_path / ".tmp-a-0001"
    setting_up.mkdir()
    assert clean_stale(tmp_path) == [] and setting_up.is_dir()
    assert not (setting_up / ".lock").exists()
    later = time.time() + 3600
    assert clean_stale(tmp_path, now=lambda: later) == [".tmp-a-0001"]


def test_staging_locks_its_folder_from_the_start(tmp_path: Path) -> None:
    with Staging(tmp_path, "t", replace=False) as s:
        assert clean_stale(tmp_path) == [] and s.root.is_dir()
        assert sorted(p.name for p in s.root.iterdir()) == [".lock", "title"]

"""files.json helpers: the listing the origin checks a packaged title with, and the hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgeflix import titlefiles


def make_title(root: Path) -> None:
    (root / "v").mkdir(parents=True)
    (root / "v" / "init.mp4").write_bytes(b"init")
    (root / "v" / "seg_00000.m4s").write_bytes(b"x" * 3000)
    (root / "master.m3u8").write_text("#EXTM3U\n")
    (root / titlefiles.FILES_JSON).write_text("{}")


def test_sizes_lists_every_file_but_files_json(tmp_path: Path) -> None:
    make_title(tmp_path)
    assert titlefiles.sizes(tmp_path) == {
        "master.m3u8": 8,
        "v/init.mp4": 4,
        "v/seg_00000.m4s": 3000,
    }


def test_scan_hashes_what_sizes_lists(tmp_path: Path) -> None:
    make_title(tmp_path)
    entries = titlefiles.scan(tmp_path)
    assert [(e.path, e.size) for e in entries] == list(titlefiles.sizes(tmp_path).items())
    seg = next(e for e in entries if e.path == "v/seg_00000.m4s")
    assert seg.sha256 == hashlib.sha256(b"x" * 3000).hexdigest()

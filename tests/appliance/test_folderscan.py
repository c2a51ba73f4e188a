from __future__ import annotations

import os
from pathlib import Path

from appliance.folderscan import scan_folder


def test_scan_lists_every_non_folder_and_follows_no_link(tmp_path: Path) -> None:
    top = tmp_path / "film"
    (top / "v0").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "master.m3u8").write_bytes(b"m" * 7)
    (top / "v0" / "seg0000.m4s").write_bytes(b"s" * 300)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.m4s").write_bytes(b"x" * 5)
    (top / "v0" / "to-file.m4s").symlink_to(outside / "secret.m4s")
    (top / "to-folder").symlink_to(outside)
    (top / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(top / "v0" / "pipe")
    scan = scan_folder(top)
    assert scan is not None and scan.direct
    assert sorted(scan.entries) == [
        "dangling",
        "master.m3u8",
        "to-folder",
        "v0/pipe",
        "v0/seg0000.m4s",
        "v0/to-file.m4s",
    ]
    # Only regular files have sizes; nothing behind a link is read.
    assert scan.sizes == {"master.m3u8": 7, "v0/seg0000.m4s": 300}


def test_no_scan_of_what_is_not_a_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "file").write_bytes(b"")
    for name in ("link", "file", "absent"):
        assert scan_folder(tmp_path / name) is None, name


def test_a_folder_reached_through_a_link_is_not_direct(tmp_path: Path) -> None:
    (tmp_path / "real" / "film").mkdir(parents=True)
    (tmp_path / "real" / "film" / "seg.m4s").write_bytes(b"s")
    (tmp_path / "via").symlink_to(tmp_path / "real")
    scan = scan_folder(tmp_path / "via" / "film")
    assert scan is not None and not scan.direct and scan.sizes == {"seg.m4s": 1}

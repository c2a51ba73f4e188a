"""--ladder auto (VMAF trials) and multi-codec ladders, through the CLI."""

from __future__ import annotations

from pathlib import Path

import m3u8
import pytest

from edgeflix import titlefiles
from tests.integration.test_origin_ingest import check_as_player, ingest


def test_auto_ladder_reports_vmaf_and_spends_no_more(tmp_path: Path, bikes: Path) -> None:
    fixed = ingest(bikes, tmp_path, "fixed", "--heights", "240")
    auto = ingest(bikes, tmp_path, "auto", "--heights", "240", "--ladder", "auto")
    (rung,) = [r for r in auto["renditions"] if r["kind"] == "video"]
    assert rung["vmaf"] is not None and 50 < rung["vmaf"] <= 100
    assert rung["average_bandwidth"] <= fixed["renditions"][0]["average_bandwidth"] * 1.1
    model, _ = titlefiles.read(tmp_path / "titles" / "auto")
    assert model.renditions[0].vmaf == rung["vmaf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["titles"]  # trials cleaned up


@pytest.mark.slow
def test_auto_ladder_full_bunny(tmp_path: Path, bunny: Path) -> None:
    summary = ingest(bunny, tmp_path, "bunny", "--ladder", "auto")
    videos = [r for r in summary["renditions"] if r["kind"] == "video"]
    assert len(videos) == 4 and all(r["vmaf"] for r in videos)
    check_as_player(tmp_path / "titles" / "bunny", bunny)


@pytest.mark.slow
def test_three_codecs(tmp_path: Path, bikes: Path) -> None:
    summary = ingest(bikes, tmp_path, "multi", "--codecs", "h264,hevc,av1", "--heights", "240")
    codecs = {r["codec"]: r["codecs"] for r in summary["renditions"]}
    assert codecs["h264"].startswith("avc1.") and codecs["hevc"].startswith("hvc1.")
    assert codecs["av1"].startswith("av01.")
    master = m3u8.load(str(tmp_path / "titles" / "multi" / "master.m3u8"))
    assert len(master.playlists) == 3

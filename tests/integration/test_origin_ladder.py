"""--ladder auto (VMAF trials) and multi-codec ladders, through the CLI."""

from __future__ import annotations

from pathlib import Path

import m3u8
import pytest

from edgeflix import titlefiles
from tests.integration.test_origin_ingest import check_as_player, ingest


def test_auto_ladder_is_an_abr_ladder_with_fewer_bits(tmp_path: Path, bikes: Path) -> None:
    """bikes (272p): the fixed ladder's 272p and 240p become two rungs of the size that wins
    the hull, spaced apart, the lower one no dearer than the fixed floor, VMAF reported."""
    fixed = ingest(bikes, tmp_path, "fixed")
    auto = ingest(bikes, tmp_path, "auto", "--ladder", "auto")
    fixed_v = [r for r in fixed["renditions"] if r["kind"] == "video"]
    auto_v = [r for r in auto["renditions"] if r["kind"] == "video"]
    assert len(auto_v) == len(fixed_v) == 2
    assert all(r["height"] <= 272 and r["vmaf"] is not None and 50 < r["vmaf"] <= 100
               for r in auto_v)  # fmt: skip
    rates = sorted(r["average_bandwidth"] for r in auto_v)
    assert rates[0] <= min(r["average_bandwidth"] for r in fixed_v)  # weak networks' floor
    assert rates[1] >= 1.15 * rates[0]  # chosen 1.2x apart; a whole-title CRF lands near
    assert sum(rates) < sum(r["average_bandwidth"] for r in fixed_v)
    model, _ = titlefiles.read(tmp_path / "titles" / "auto")
    assert {r.id: r.vmaf for r in model.renditions if r.vmaf is not None} == {
        r["id"]: r["vmaf"] for r in auto_v
    }
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

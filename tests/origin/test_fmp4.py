"""The fragment-box reader against real ffmpeg output: the same facts a demuxer (PyAV) reports,
and a segment cut off a keyframe is caught by the ingest's alignment check."""

from __future__ import annotations

import io
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from origin import fmp4
from origin.errors import EncodeError
from origin.ingest import check_alignment
from origin.runner import find_ffmpeg
from origin.segments import measure


def encode(src: Path, folder: Path, *extra: str, codec: str = "libx264") -> Path:
    """Two seconds of `src` at 25 fps as CMAF segments of 0.48 s (GOP 12 unless `extra` says)."""
    folder.mkdir()
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-t", "2", "-i", str(src),
         "-map", "0:v:0", "-vf", "fps=25,scale=-2:120", "-c:v", codec, "-preset", "veryfast",
         "-g", "12", "-keyint_min", "12", "-sc_threshold", "0", *extra,
         "-f", "hls", "-hls_time", "0.48", "-hls_playlist_type", "vod",
         "-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4",
         "-hls_segment_filename", str(folder / "seg_%05d.m4s"), str(folder / "x.m3u8")],
        check=True, timeout=120,
    )  # fmt: skip
    return folder


def demuxed(init: bytes, segment: bytes) -> tuple[int, int, int, bool]:
    """(start, duration, frames, opens on keyframe) as FFmpeg's demuxer sees the segment."""
    with av.open(io.BytesIO(init + segment)) as container:
        packets = [p for p in container.demux(container.streams[0]) if p.size]
    start = min(int(p.pts if p.pts is not None else p.dts or 0) for p in packets)
    return start, sum(int(p.duration or 0) for p in packets), len(packets), packets[0].is_keyframe


@pytest.mark.parametrize("bframes", ["0", "3"])
def test_box_facts_match_the_demuxer(tmp_path: Path, bikes: Path, bframes: str) -> None:
    folder = encode(bikes, tmp_path / "v", "-bf", bframes)
    init = (folder / "init.mp4").read_bytes()
    defaults = fmp4.track_defaults(init)
    segments = sorted(folder.glob("seg_*.m4s"))
    assert len(segments) >= 3
    for path in segments:
        body = path.read_bytes()
        facts = fmp4.fragments(body, defaults)
        got = (facts.start, facts.duration, facts.samples, facts.first_is_sync)
        assert got == demuxed(init, body), path.name


def test_segment_cut_off_a_keyframe_is_refused(tmp_path: Path, bikes: Path) -> None:
    # split_by_time cuts at 0.48 s whatever the GOP (25 frames): segments open mid-GOP.
    folder = encode(bikes, tmp_path / "v", "-g", "25", "-hls_flags", "split_by_time")
    media = measure(folder, Fraction(25))
    opens = [s.starts_with_keyframe for s in media.segments]
    assert opens[0] and not all(opens)
    with pytest.raises(EncodeError, match="does not start on a keyframe"):
        check_alignment([media], 0.48, sum(s.frames for s in media.segments))


def test_aligned_segments_pass(tmp_path: Path, bikes: Path) -> None:
    media = measure(encode(bikes, tmp_path / "v"), Fraction(25))
    assert all(s.starts_with_keyframe for s in media.segments)
    assert sum(s.frames for s in media.segments) == 50
    check_alignment([media], 0.48, 50)


def test_truncated_segment_is_an_encode_error(tmp_path: Path, bikes: Path) -> None:
    folder = encode(bikes, tmp_path / "v")
    seg = folder / "seg_00001.m4s"
    seg.write_bytes(seg.read_bytes()[:200])
    with pytest.raises(EncodeError, match=r"seg_00001\.m4s: unreadable media segment"):
        measure(folder, Fraction(25))


@given(st.binary(max_size=200))
def test_any_bytes_give_facts_or_a_box_error(data: bytes) -> None:
    try:
        facts = fmp4.fragments(data, fmp4.TrackDefaults())
    except (fmp4.BoxError, IndexError, ValueError):
        return
    assert facts.samples > 0


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _trak(handler: bytes, a: int, b: int, version: int) -> bytes:
    times = bytes(32 if version else 20)  # creation … duration
    matrix = struct.pack(">9i", a, b, 0, -b, a, 0, 0, 0, 1 << 30)
    tkhd = bytes([version, 0, 0, 3]) + times + bytes(16) + matrix + bytes(8)
    hdlr = bytes(8) + handler + bytes(13)
    return _box(b"trak", _box(b"tkhd", tkhd) + _box(b"mdia", _box(b"hdlr", hdlr)))


@pytest.mark.parametrize("version", [0, 1])
def test_quarter_turned_reads_the_video_tracks_matrix(version: int) -> None:
    one = 1 << 16
    turned = _trak(b"vide", 0, one, version)
    upright = _trak(b"vide", one, 0, version)
    assert fmp4.quarter_turned(_box(b"mvhd", bytes(100)) + turned)
    assert fmp4.quarter_turned(_trak(b"vide", 0, -one, version))  # 270 degrees
    assert not fmp4.quarter_turned(upright)
    assert not fmp4.quarter_turned(_trak(b"vide", -one, 0, version))  # 180 degrees
    # The first video track counts; a turned audio track (nonsense) does not.
    assert not fmp4.quarter_turned(_trak(b"soun", 0, one, version) + upright)

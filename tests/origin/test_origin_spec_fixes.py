"""Spec conformance of what ingest publishes, read from the boxes of a real short ingest: each
segment index (sidx) gives its segment's real earliest presentation time after ingest moved
the timeline (ISO/IEC 14496-12 8.16.3), and each init segment declares the CMAF brand
`cmfc` (ISO/IEC 23000-19) with sizes and hashes in files.json those of the patched files.
Also the one-line error for an empty --codecs."""

from __future__ import annotations

import io
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import pytest

from edgeflix import titlefiles
from origin import fmp4
from origin.config import EncodeConfig
from origin.errors import SourceError
from origin.ingest import IngestRequest, check_request, ingest
from origin.runner import find_ffmpeg
from origin.segments import CMAF_BRAND, shift_segment, with_brand
from tests.conftest import run_cli

# What ffmpeg's mp4 muxer writes into every init segment (plus av01 for AV1).
FFMPEG_BRANDS = [b"iso5", b"iso6", b"mp41"]


@pytest.fixture(scope="module")
def title(tmp_path_factory: pytest.TempPathFactory, bunny: Path) -> Path:
    """Two seconds of bunny at 320x180 with its sound, ingested as H.264 and HEVC, 1 s
    segments. At `ultrafast` x264 writes no B-frames while x265 does, so the H.264
    rendition starts earlier and is moved, and so is the sound (its priming is shorter)."""
    tmp = tmp_path_factory.mktemp("spec")
    src = tmp / "short.mp4"
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-t", "2", "-i", str(bunny),
         "-vf", "scale=320:180", "-c:v", "libx264", "-preset", "ultrafast",
         "-c:a", "aac", "-b:a", "64k", str(src)],
        check=True, timeout=120,
    )  # fmt: skip
    req = IngestRequest(src, "spec", "Spec", tmp / "store", segment_seconds=1.0,
                        codecs=("h264", "hevc"))  # fmt: skip
    ingest(req, EncodeConfig(preset="ultrafast"))
    return tmp / "store" / "titles" / "spec"


def renditions(title_dir: Path) -> list[Path]:
    return sorted(p for p in title_dir.iterdir() if p.is_dir())


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("seg_*.m4s"))


def sidx_time(segment: bytes) -> tuple[int, int]:
    """(earliest_presentation_time, timescale) of the segment's one top-level sidx."""
    found = [body for kind, body in fmp4.boxes(segment) if kind == b"sidx"]
    assert len(found) == 1
    sidx = found[0]
    (timescale,) = struct.unpack_from(">I", sidx, 8)
    (ept,) = struct.unpack_from(">Q" if sidx[0] == 1 else ">I", sidx, 12)
    return ept, timescale


def first_decode_time(segment: bytes) -> int:
    moof = fmp4.child(memoryview(segment), b"moof")
    traf = fmp4.child(moof, b"traf") if moof is not None else None
    tfdt = fmp4.child(traf, b"tfdt") if traf is not None else None
    assert tfdt is not None
    return int(struct.unpack_from(">Q" if tfdt[0] == 1 else ">I", tfdt, 4)[0])


def brands(init: bytes) -> tuple[bytes, list[bytes]]:
    """(major brand, compatible brands) of the init's ftyp, its first box."""
    kind, ftyp = next(fmp4.boxes(init))
    assert kind == b"ftyp"
    data = bytes(ftyp)
    return data[:4], [data[i : i + 4] for i in range(8, len(data), 4)]


# --- 1. sidx after the timeline moved ---


def test_every_sidx_gives_its_segment_s_earliest_presentation_time(title: Path) -> None:
    moved = set()
    for folder in renditions(title):
        init = next(folder.glob("init*.mp4")).read_bytes()
        defaults = fmp4.track_defaults(init)
        with av.open(io.BytesIO(init)) as container:
            track_scale = int(1 / container.streams[0].time_base)
        for path in segments(folder):
            body = path.read_bytes()
            start = fmp4.fragments(body, defaults).start  # in the track's timescale
            ept, timescale = sidx_time(body)
            assert Fraction(ept, timescale) == Fraction(start, track_scale), path
        if first_decode_time(segments(folder)[0].read_bytes()) > 0:  # ffmpeg starts at 0
            moved.add(folder.name)
    # The case in point: ingest moved the sound and a video rendition.
    assert "audio" in moved and "h264_180p" in moved


def test_a_sidx_is_moved_in_its_own_timescale_and_never_wrapped() -> None:
    def sidx(version: int, timescale: int, ept: int) -> bytes:
        times = struct.pack(">QQ" if version else ">II", ept, 0)
        payload = struct.pack(">B3xII", version, 1, timescale) + times + struct.pack(">HH", 0, 0)
        return struct.pack(">I4s", 8 + len(payload), b"sidx") + payload

    # 2816 ticks of 48 kHz are 58.67 ms: 59 in a millisecond sidx.
    assert sidx_time(shift_segment(sidx(1, 1000, 5), 2816, 48000)) == (64, 1000)
    assert sidx_time(shift_segment(sidx(0, 48000, 0), 2816, 48000)) == (2816, 48000)
    assert sidx_time(shift_segment(sidx(1, 48000, 2**32 - 1), 1, 48000)) == (2**32, 48000)
    with pytest.raises(fmp4.BoxError, match="32-bit"):
        shift_segment(sidx(0, 48000, 2**32 - 1), 1, 48000)


# --- 2. the CMAF brand ---


def test_every_init_declares_cmaf_and_files_json_lists_the_patched_bytes(title: Path) -> None:
    for folder in renditions(title):
        init_path = next(folder.glob("init*.mp4"))
        init = init_path.read_bytes()
        major, compatible = brands(init)
        assert major == b"iso5"
        assert CMAF_BRAND in compatible and compatible.count(CMAF_BRAND) == 1
        assert set(FFMPEG_BRANDS) <= set(compatible)  # ffmpeg's own ones kept
        # Still a playable track: init + first segment demux and decode.
        first = segments(folder)[0].read_bytes()
        with av.open(io.BytesIO(init + first)) as container:
            assert any(True for _ in container.decode(container.streams[0]))
    model, _ = titlefiles.read(title)
    assert titlefiles.verify(title, model) == []  # sizes and SHA-256 of the files on disk


def test_with_brand_adds_once_and_refuses_an_init_with_chunk_offsets() -> None:
    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    ftyp = box(b"ftyp", b"iso5" + bytes(4) + b"iso5iso6")

    def init(chunks: int) -> bytes:
        stco = box(b"stco", bytes(4) + struct.pack(">I", chunks) + bytes(4 * chunks))
        stbl = box(b"stbl", stco)
        return ftyp + box(b"moov", box(b"trak", box(b"mdia", box(b"minf", stbl))))

    empty = init(0)
    branded = with_brand(empty, b"cmfc")
    assert branded == box(b"ftyp", b"iso5" + bytes(4) + b"iso5iso6cmfc") + empty[len(ftyp) :]
    assert with_brand(branded, b"cmfc") == branded
    with pytest.raises(fmp4.BoxError, match="chunk offsets"):
        with_brand(init(1), b"cmfc")


# --- 3. an empty --codecs ---


def test_an_empty_codecs_list_is_named_as_such(tmp_path: Path, bunny: Path) -> None:
    req = IngestRequest(bunny, "y", "x", tmp_path, codecs=())
    with pytest.raises(SourceError, match=r"^--codecs is empty; choose from h264, hevc, av1$"):
        check_request(req)
    proc = run_cli(["origin", "ingest", str(bunny), "--id", "y", "--title", "x",
                    "--codecs", ",", "--store", str(tmp_path / "store")], timeout=60)  # fmt: skip
    assert proc.returncode != 0
    assert "--codecs is empty" in proc.stderr and "unknown codec" not in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

"""Moving a rendition's timeline (`shift_timeline`) against real ffmpeg output: every sample
presents exactly that much later as FFmpeg's demuxer reads it, and the measured facts and
digest are those of the files as rewritten."""

from __future__ import annotations

import io
from pathlib import Path

import av

from origin.segments import measure, shift_timeline
from tests.origin.test_fmp4 import encode


def presentation_times(folder: Path) -> list[int]:
    data = (folder / "init.mp4").read_bytes() + b"".join(
        p.read_bytes() for p in sorted(folder.glob("seg_*.m4s"))
    )
    with av.open(io.BytesIO(data)) as container:
        return [int(p.pts) for p in container.demux(container.streams[0]) if p.size]


def test_shift_moves_every_sample_and_nothing_else(tmp_path: Path, bikes: Path) -> None:
    folder = encode(bikes, tmp_path / "v", "-hls_segment_options", "use_editlist=0")
    before = measure(folder)
    pts = presentation_times(folder)
    sizes = {p.name: p.stat().st_size for p in folder.glob("seg_*.m4s")}
    ticks = 1024
    shifted = shift_timeline(folder, before, ticks)
    assert presentation_times(folder) == [t + ticks for t in pts]
    assert {p.name: p.stat().st_size for p in folder.glob("seg_*.m4s")} == sizes
    assert [s.start for s in shifted.segments] == [s.start + ticks for s in before.segments]
    assert shifted == measure(folder)  # starts and digest as the files now are
    assert shifted.digest != before.digest

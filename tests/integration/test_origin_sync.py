"""Lip sync as a viewer sees it: a white flash and a beep that start together in the source
start together in every published rendition (each decoded from its init and segments, as
a player joins them), within a few milliseconds. The encoders' own delays (B-frame reorder,
AAC priming) must not show."""

from __future__ import annotations

import array
import io
import subprocess
from pathlib import Path

import av
import imageio_ffmpeg
import m3u8
import pytest

from tests.conftest import media_playlist, run_cli

EVENT_S = 1.0  # the flash and the beep, in the source


def joined(folder: Path) -> bytes:
    playlist = m3u8.load(str(media_playlist(folder)))
    parts = [playlist.segment_map[0].uri, *(s.uri for s in playlist.segments)]
    return b"".join((folder / p).read_bytes() for p in parts)


def flash_at(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        for frame in c.decode(stream):
            luma = bytes(frame.reformat(format="gray").planes[0])
            if sum(luma[::97]) / len(luma[::97]) > 128:
                return float(frame.pts * stream.time_base)
    raise AssertionError("no flash")


def beep_at(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.audio[0]
        mono = av.AudioResampler(format="s16", layout="mono")
        for frame in c.decode(stream):
            for out in mono.resample(frame):
                samples = array.array("h", bytes(out.planes[0])[: out.samples * 2])
                loud = next((i for i, v in enumerate(samples) if abs(v) > 1500), None)
                if loud is not None:
                    return float(frame.pts * stream.time_base) + loud / out.sample_rate
    raise AssertionError("no beep")


@pytest.mark.parametrize("rate", ["25", "30000/1001"])
def test_flash_and_beep_stay_together(tmp_path: Path, rate: str) -> None:
    src = tmp_path / "sync.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error",
         "-f", "lavfi", "-i", f"color=c=black:s=320x180:r={rate}:d=2.5",
         "-f", "lavfi", "-i", f"color=c=white:s=320x180:r={rate}:d=2.5",
         "-f", "lavfi", "-i", "sine=f=1000:r=48000:d=2.5",
         "-filter_complex", f"[0][1]overlay=enable='gte(t,{EVENT_S})'[v];"
         f"[2]volume=enable='lt(t,{EVENT_S})':volume=0[a]",
         "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast",
         "-c:a", "pcm_s16le", "-f", "mov", str(src.with_suffix(".mov"))],
        check=True, timeout=60,
    )  # fmt: skip
    run_cli(["origin", "ingest", str(src.with_suffix(".mov")), "--id", "s", "--title", "S",
             "--store", str(tmp_path / "store"), "--segment-seconds", "1", "--heights", "180"],
            check=True)  # fmt: skip
    title = tmp_path / "store" / "titles" / "s"
    beep = beep_at(joined(title / "audio"))
    flash = flash_at(joined(title / "h264_180p"))
    # Both land on the event: a frame starts at 1.0 s (1.001 s at 29.97), the beep on a
    # sample. The AAC priming alone would put the beep 21 ms late.
    assert abs(beep - flash) < 0.005, (flash, beep)

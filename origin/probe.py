"""Probe a source file with PyAV (no ffprobe binary needed): video geometry, frame rate,
duration, frame count, and whether there is audio. Feeds the ladder choice and the encoder.
PyAV is imported by `probe()` itself, so whatever an ingest starts before probing (the check
of the ffmpeg binary) runs while PyAV loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from origin.errors import SourceError

if TYPE_CHECKING:
    import av.container
    import av.video.stream


@dataclass(frozen=True)
class Source:
    path: Path
    width: int  # display width (sample aspect ratio applied)
    height: int
    frame_rate: Fraction
    duration: float  # seconds
    frames: int  # estimated from duration x frame rate when the container does not say
    video_codec: str
    has_audio: bool

    @property
    def fps(self) -> float:
        return float(self.frame_rate)


def probe(path: Path) -> Source:
    """Describe `path`, or raise `SourceError` with a reason a user understands."""
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file")
    import av

    try:
        container = av.open(str(path))
    except av.error.PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
        raise SourceError(f"{path}: not a video file (no container ffmpeg can read)") from None
    with container:
        if not container.streams.video:
            raise SourceError(f"{path}: has no video stream (audio-only or data file)")
        video = container.streams.video[0]
        ctx = video.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise SourceError(f"{path}: video stream has no picture size")
        rate = video.average_rate or video.guessed_rate or video.base_rate
        if not rate or rate <= 0:
            raise SourceError(f"{path}: video stream has no frame rate")
        frame_rate = Fraction(rate).limit_denominator(1001)
        duration = _duration(container, video)
        if duration <= 0:
            raise SourceError(f"{path}: video stream has no duration")
        sar = video.sample_aspect_ratio
        if sar and sar > 0 and sar != 1:
            width = round(width * float(sar) / 2) * 2
        frames = int(video.frames) or round(duration * float(frame_rate))
        return Source(
            path=path,
            width=width,
            height=height,
            frame_rate=frame_rate,
            duration=duration,
            frames=frames,
            video_codec=ctx.name or "unknown",
            has_audio=bool(container.streams.audio),
        )


def _duration(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> float:
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    if container.duration is not None:
        import av

        return container.duration / av.time_base
    return 0.0

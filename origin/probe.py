"""Probe a source file with PyAV (no ffprobe binary needed): video geometry, frame rate,
duration, frame count, HDR, and whether there is audio. Feeds the ladder choice and the encoder.
PyAV is imported by `probe()` itself, so whatever an ingest starts before probing (the check
of the ffmpeg binary) runs while PyAV loads.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from origin.errors import SourceError

if TYPE_CHECKING:
    import av.container
    import av.video.stream


# AVColorTransferCharacteristic values of HDR video → ffmpeg's names for them.
HDR_TRANSFERS = {16: "smpte2084", 18: "arib-std-b67"}
# Rungs are never upscaled, and the poster (a JPEG) fails below a few pixels: smaller
# sources are refused with that reason rather than with ffmpeg's.
MIN_SIDE = 8


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
    # HDR: the source's transfer, as ffmpeg names it ("smpte2084" for PQ, "arib-std-b67"
    # for HLG); None for SDR. Every rendition is tone-mapped to SDR (origin/ffmpeg.py).
    hdr_transfer: str | None = None

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

    # Absolute: ffmpeg and PyAV read `name:rest` as a protocol (`take2:final.mp4`), and a
    # path starting with `/` never is one. Everything downstream gets this path.
    target = path.absolute()
    try:
        container = av.open(str(target))
    except av.error.PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
        if _starts_like_mp4(target):
            # Cameras and encoders write the index last: a copy cut short has none.
            raise SourceError(
                f"{path}: an MP4/MOV without its index (moov box): truncated, or still "
                "being written?"
            ) from None
        raise SourceError(f"{path}: not a video file (no container ffmpeg can read)") from None
    with container:
        # Cover art (a song's album picture) is a one-frame "video" stream: not the video.
        cover = av.stream.Disposition.attached_pic
        video = next((s for s in container.streams.video if not s.disposition & cover), None)
        if video is None:
            raise SourceError(f"{path}: has no video stream (audio-only or data file)")
        ctx = video.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise SourceError(f"{path}: video stream has no picture size")
        rate = video.average_rate or video.guessed_rate or video.base_rate
        if not rate or rate <= 0:
            raise SourceError(f"{path}: video stream has no frame rate")
        frame_rate = Fraction(rate).limit_denominator(1001)
        duration, frames = _length(container, video, frame_rate, target)
        if duration <= 0:
            raise SourceError(f"{path}: video stream has no duration")
        sar = video.sample_aspect_ratio
        if sar and sar > 0 and sar != 1:
            width = round(width * float(sar) / 2) * 2
        if _quarter_turned(target, container, video):
            # ffmpeg turns the frames upright before our filters: the ladder is of those.
            width, height = height, width
        if min(width, height) < MIN_SIDE:
            raise SourceError(
                f"{path}: a {width}x{height} picture is too small to encode "
                f"(at least {MIN_SIDE}x{MIN_SIDE})"
            )
        return Source(
            path=target,
            width=width,
            height=height,
            frame_rate=frame_rate,
            duration=duration,
            frames=frames,
            video_codec=ctx.name or "unknown",
            has_audio=bool(container.streams.audio),
            hdr_transfer=HDR_TRANSFERS.get(int(ctx.color_trc or 0)),
        )


def _starts_like_mp4(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(8)[4:] == b"ftyp"
    except OSError:
        return False


def _quarter_turned(
    path: Path, container: av.container.InputContainer, video: av.video.stream.VideoStream
) -> bool:
    """Whether the video's display matrix turns it a quarter. MP4/MOV (phones): from the
    tkhd box, reading only the moov; other containers: from the first decoded frame (a
    decode costs ~15 ms for a 720p frame, before ffmpeg can start; the box walk well under 1)."""
    if container.format.name.startswith("mov,"):
        return _moov_quarter_turned(path)
    import av

    try:
        frame = next(container.decode(video), None)
    except av.error.FFmpegError:
        return False  # ffmpeg will say what is wrong with it
    return frame is not None and round(frame.rotation) % 180 == 90


def _moov_quarter_turned(path: Path) -> bool:
    from origin import fmp4

    try:
        with path.open("rb") as f:
            end = os.fstat(f.fileno()).st_size
            pos = 0
            while pos + 8 <= end:  # top-level boxes: headers only, up to the moov
                f.seek(pos)
                head = f.read(16)
                size, kind = struct.unpack_from(">I4s", head)
                header = 8
                if size == 1 and len(head) == 16:
                    (size,) = struct.unpack_from(">Q", head, 8)
                    header = 16
                elif size == 0:
                    size = end - pos
                if size < header:
                    return False
                if kind == b"moov":
                    f.seek(pos + header)
                    return fmp4.quarter_turned(f.read(size - header))
                pos += size
    except (OSError, struct.error, fmp4.BoxError):
        pass  # PyAV read this file: a moov we cannot walk is one without a turn we know of
    return False


def _length(
    container: av.container.InputContainer,
    video: av.video.stream.VideoStream,
    frame_rate: Fraction,
    path: Path,
) -> tuple[float, int]:
    """Seconds and frames of the title the encode makes: from the container's start (its
    earliest stream), because ffmpeg repeats the first frame back to there when the video
    starts after the audio."""
    if container.format.name.startswith("matroska"):
        # Matroska/WebM state no stream's length: the video stream has no duration or is
        # given the container's, its longest stream's. Sound running past the picture would
        # count as frames never decoded (and a poster past the last one).
        import av

        hint = (container.duration or 0) / av.time_base
        end = _video_end(path, video.index, hint)
        if end is not None:
            seconds = end - (container.start_time or 0) / av.time_base
            return seconds, round(seconds * frame_rate)
    if video.duration is not None and video.time_base is not None:
        lead = 0.0
        if video.start_time is not None and container.start_time is not None:
            import av

            start = float(video.start_time * video.time_base)
            lead = max(0.0, start - container.start_time / av.time_base)
        # From the duration, not the track's sample count: an edit list (a cut made without
        # re-encoding) hides samples that still count there.
        seconds = lead + float(video.duration * video.time_base)
        return seconds, round(seconds * frame_rate)
    if container.duration is not None:  # it already spans from the container's start
        import av

        duration = container.duration / av.time_base
        return duration, round(duration * frame_rate)
    # Nothing says (a raw .h264 stream, Matroska written live to a pipe): count the frames,
    # reading packets only, in a container of its own (the caller's still decodes from 0).
    return _counted(path, video.index, frame_rate)


def _counted(path: Path, index: int, frame_rate: Fraction) -> tuple[float, int]:
    import av

    frames = 0
    try:
        with av.open(str(path)) as again:
            for packet in again.demux(again.streams[index]):
                frames += packet.size > 0  # the last, empty packet only flushes
    except av.error.FFmpegError:
        pass  # a damaged tail: the frames before it are the title
    return float(frames / frame_rate), frames


# How far before the container's end the tail read starts: the last keyframe before it is
# where the demuxer lands (Matroska's cues index video keyframes), so only the last GOP or
# two are read, never the whole file.
TAIL_SECONDS = 10.0


def _video_end(path: Path, index: int, hint: float) -> float | None:
    """When the video stream's last picture ends (pts + duration of its latest packet), in
    seconds on the container's clock; from packets only, no decoding. Reads the tail from a
    seek `TAIL_SECONDS` before `hint` (the container's duration), or the whole stream if
    that seek fails; None if no packet says."""
    import av

    end: float | None = None
    try:
        with av.open(str(path)) as again:
            stream = again.streams[index]
            tb = stream.time_base
            if tb is None:
                return None
            rate = stream.average_rate or stream.guessed_rate
            frame = float(1 / rate) if rate else 0.0
            target = max(0.0, hint - TAIL_SECONDS)
            if target > 0:
                try:
                    again.seek(int(target / float(tb)), stream=stream, backward=True)
                except av.error.FFmpegError:
                    again.seek(0, stream=stream, backward=True)
            for packet in again.demux(stream):
                if packet.pts is None or not packet.size:
                    continue
                length = float(packet.duration * tb) if packet.duration else frame
                finish = float(packet.pts * tb) + length
                end = finish if end is None else max(end, finish)
    except av.error.FFmpegError:
        pass  # a damaged tail: what was read before it stands (the encode will say more)
    return end

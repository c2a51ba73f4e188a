"""Probe a source file with PyAV (no ffprobe binary needed): which video and audio streams make
the title, the video's geometry, frame rate, duration, frame count and HDR, the audio's
language. Feeds the ladder choice and the encoder.
PyAV is imported by `probe()` itself, so whatever an ingest starts before probing (the check
of the ffmpeg binary) runs while PyAV loads.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from origin.errors import SourceError
from origin.languages import language_tag

if TYPE_CHECKING:
    import av.audio.stream
    import av.container
    import av.video.stream


# AVColorTransferCharacteristic values of HDR video → ffmpeg's names for them.
HDR_TRANSFERS = {16: "smpte2084", 18: "arib-std-b67"}
# Rungs are never upscaled, and the poster (a JPEG) fails below a few pixels: smaller
# sources are refused with that reason rather than with ffmpeg's.
MIN_SIDE = 8


@dataclass(frozen=True)
class AudioTrack:
    """The source's sound the title carries."""

    index: int  # the stream's index in the file: ffmpeg's `-map 0:<index>`
    language: str | None = None  # RFC 5646 ("en", "haw"); None when the file does not say


@dataclass(frozen=True)
class Source:
    path: Path
    video_stream: int  # the picture's stream index in the file: ffmpeg's `[0:<index>]`
    width: int  # display width (sample aspect ratio applied)
    height: int
    # The nominal rate (ffmpeg's guess: r_frame_rate, unless implausible): every rendition's
    # constant rate, the gaps of a variable-rate source filled by repeating frames.
    frame_rate: Fraction
    duration: float  # seconds
    frames: int  # at `frame_rate`: duration x frame rate, or counted when nothing says
    video_codec: str
    audio: AudioTrack | None
    # HDR: the source's transfer, as ffmpeg names it ("smpte2084" for PQ, "arib-std-b67"
    # for HLG); None for SDR. Every rendition is tone-mapped to SDR (origin/ffmpeg.py).
    hdr_transfer: str | None = None

    @property
    def fps(self) -> float:
        return float(self.frame_rate)

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


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
        video = main_video(container)
        if video is None:
            raise SourceError(f"{path}: has no video stream (audio-only or data file)")
        ctx = video.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise SourceError(f"{path}: video stream has no picture size")
        # Not the average: a variable-rate source (a phone's, a screen recording's) timed at
        # its average would lose frames where it runs faster and gain some where slower.
        rate = video.guessed_rate or video.base_rate or video.average_rate
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
        sound = main_audio(container)
        return Source(
            path=target,
            video_stream=video.index,
            width=width,
            height=height,
            frame_rate=frame_rate,
            duration=duration,
            frames=frames,
            video_codec=ctx.name or "unknown",
            audio=None if sound is None else AudioTrack(sound.index, _language(sound)),
            hdr_transfer=HDR_TRANSFERS.get(int(ctx.color_trc or 0)),
        )


def main_video(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The title's picture: of the video streams that are no cover art (a song's album
    picture, flagged as attached), the one flagged default, else the longest. A stream of
    one picture (a thumbnail muxed as video: MP4 flags the first track of a kind default on
    its own) is never that default over a longer one."""
    import av

    cover = av.stream.Disposition.attached_pic
    default = av.stream.Disposition.default
    videos = [s for s in container.streams.video if not s.disposition & cover]
    if len(videos) <= 1:
        return videos[0] if videos else None

    def rank(stream: av.video.stream.VideoStream) -> tuple[bool, float]:
        seconds = _stated_seconds(stream)
        rate = stream.guessed_rate or stream.average_rate
        one_frame = seconds is not None and rate is not None and seconds * rate < 1.5
        still = stream.frames == 1 or one_frame
        return bool(stream.disposition & default) and not still, seconds or 0.0

    return max(videos, key=rank)  # the first of equals: the file's order


def main_audio(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    """The title's sound: the audio stream flagged default, else the first."""
    import av

    default = av.stream.Disposition.default
    streams = list(container.streams.audio)
    return next((s for s in streams if s.disposition & default), streams[0] if streams else None)


def _language(stream: av.audio.stream.AudioStream) -> str | None:
    return language_tag(stream.metadata.get("language"))


# Matroska's per-track DURATION tag (what ffmpeg writes): the track's end, `01:02:03.040000000`.
_MATROSKA_DURATION = re.compile(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")


def _stated_seconds(stream: av.video.stream.VideoStream) -> float | None:
    """How long the file says a stream lasts, without reading its packets; None if unsaid."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    match = _MATROSKA_DURATION.fullmatch(str(stream.metadata.get("DURATION", "")))
    if match:
        hours, minutes, seconds = match.groups()
        end = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        tb = stream.time_base
        start = float(stream.start_time * tb) if stream.start_time and tb else 0.0
        return max(0.0, end - start)
    rate = stream.guessed_rate or stream.average_rate
    return float(stream.frames / rate) if stream.frames and rate else None


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
        end = _video_end(path, video.index, hint, frame_rate)
        if end is not None:
            seconds = end - (container.start_time or 0) / av.time_base
            return seconds, round(seconds * frame_rate)
    if video.duration is not None and video.time_base is not None:
        import av

        lead = 0.0
        origin = (container.start_time or 0) / av.time_base
        if video.start_time is not None and container.start_time is not None:
            start = float(video.start_time * video.time_base)
            lead = max(0.0, start - origin)
        # From the duration, not the track's sample count: an edit list (a cut made without
        # re-encoding) hides samples that still count there.
        seconds = lead + float(video.duration * video.time_base)
        if video.average_rate != video.guessed_rate:
            # Variable frame rate: MP4 muxers state the track's length as its samples'
            # decode times add up, which can end before the last picture does (6 fps
            # pictures after B-frames: 5.6 s of a 6 s track); the encode's constant rate
            # fills up to that picture's end.
            end = _video_end(path, video.index, origin + seconds, frame_rate)
            if end is not None:
                seconds = max(seconds, end - origin)
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


def _video_end(path: Path, index: int, hint: float, frame_rate: Fraction) -> float | None:
    """When the video stream's last picture ends (pts + duration of its latest packet, one
    frame at `frame_rate` where a packet states none), in seconds on the container's clock;
    from packets only, no decoding. Reads the tail from a seek `TAIL_SECONDS` before `hint`
    (where the container says it ends), or the whole stream if that seek fails; None if no
    packet says."""
    import av

    end: float | None = None
    frame = float(1 / frame_rate)
    try:
        with av.open(str(path)) as again:
            stream = again.streams[index]
            tb = stream.time_base
            if tb is None:
                return None
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

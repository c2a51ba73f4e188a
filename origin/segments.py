"""Measure what ffmpeg wrote (I/O shell): per rendition the init segment's codec
configuration (PyAV) and, per media segment, its size, start, duration, frame count and
whether it opens on a keyframe (its fragment boxes, origin/fmp4.py). The manifests are
written from these facts, never from intentions. A rendition's timeline can be moved
later (`shift_timeline`, its tfdt and sidx boxes), its init segment declared CMAF
(`brand_cmaf`), and then each rendition's files take names made from a digest of their bytes
(`name_by_content`), which caches may keep for ever.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from edgeflix.http.content import content_tag, init_name, segment_name
from origin import fmp4
from origin.codecs import codec_string
from origin.errors import EncodeError
from origin.ffmpeg import INIT_NAME

_DECODER_CODEC = {"libdav1d": "av1", "libaom-av1": "av1", "av1": "av1"}
# ISO/IEC 23000-19 (CMAF) 7.2: a CMAF header's FileTypeBox lists this structural brand among
# its compatible brands. ffmpeg writes it only with movflags=+cmaf, which also forces negative
# composition offsets (origin/ffmpeg.py avoids them), so ingest adds it (`brand_cmaf`).
CMAF_BRAND = b"cmfc"


@dataclass(frozen=True)
class Segment:
    name: str  # file name inside the rendition folder
    size: int
    start: int  # earliest presentation time, in the rendition's timescale
    duration: int  # in the rendition's timescale
    frames: int
    starts_with_keyframe: bool


@dataclass(frozen=True)
class Media:
    """One packaged rendition: folder name, codec facts and its segments in order."""

    id: str
    kind: str  # video | audio
    codec: str  # h264 | hevc | av1 | aac
    codecs: str  # RFC 6381
    timescale: int
    segments: tuple[Segment, ...]
    init_size: int
    # Hex SHA-256 over the init segment and every media segment, in order (length-prefixed).
    digest: str
    init_name: str = INIT_NAME
    width: int | None = None
    height: int | None = None
    frame_rate: Fraction | None = None
    sample_rate: int | None = None
    channels: int | None = None

    @property
    def seconds(self) -> float:
        return sum(s.duration for s in self.segments) / self.timescale

    @property
    def target_seconds(self) -> int:
        """The HLS target duration: every segment's duration, rounded to the nearest whole
        second, is at most this (RFC 8216 4.3.3.1)."""
        return max(1, *(int(s.duration / self.timescale + 0.5) for s in self.segments))

    def peak_bps(self) -> int:
        """The peak segment bit rate of RFC 8216 (4.3.4.2's BANDWIDTH; DASH's @bandwidth
        too): the highest bit rate of any run of consecutive segments lasting 0.5 to 1.5
        times the target duration. A short last segment alone (a GOP's tail: a few frames,
        one of them a keyframe) would claim many times the real rate, and players pick
        renditions by this figure. A rendition too short for any run: its average."""
        low = self.target_seconds * self.timescale / 2
        high = low * 3
        best = 0
        for i in range(len(self.segments)):
            size = duration = 0
            for segment in self.segments[i:]:
                size, duration = size + segment.size, duration + segment.duration
                if duration > high:
                    break
                if duration >= low:
                    best = max(best, round(size * 8 * self.timescale / duration))
        return best or self.average_bps()

    def average_bps(self) -> int:
        total = sum(s.size for s in self.segments)
        return round(total * 8 / self.seconds) if self.seconds else 0


def measure(folder: Path, frame_rate: Fraction | None = None) -> Media:
    """Read the init segment in `folder` and every `seg_*.m4s` beside it, in order: as ffmpeg
    wrote them (`init.mp4`, `seg_00000.m4s`) or as published (`name_by_content`)."""
    inits = [p.name for p in folder.glob("init*.mp4")]
    init_path = folder / (inits[0] if len(inits) == 1 else INIT_NAME)
    try:
        init = init_path.read_bytes()
    except OSError as exc:
        raise EncodeError(f"{init_path}: ffmpeg wrote no init segment ({exc.strerror})") from None
    # Numeric order: past 99999 the numbers grow a digit and would sort wrongly as text.
    names = sorted(
        (p.name for p in folder.glob("seg_*.m4s")), key=lambda n: int(n[:-4].rpartition("_")[2])
    )
    if not names:
        raise EncodeError(f"{folder}: ffmpeg wrote no media segments")
    try:
        container = av.open(io.BytesIO(init), "r")
    except av.error.FFmpegError as exc:
        raise EncodeError(f"{init_path}: unreadable init segment ({exc})") from None
    with container:
        stream = container.streams[0]
        ctx: Any = stream.codec_context
        kind = stream.type
        timescale = int(1 / stream.time_base) if stream.time_base else 0
        # Decoder names, not codec names, for some: map them back (libdav1d decodes av1).
        codec = _DECODER_CODEC.get(ctx.name, ctx.name)
        extradata = bytes(ctx.extradata) if ctx.extradata else None
        facts: dict[str, Any] = {}
        if kind == "video":
            facts = {"width": ctx.width, "height": ctx.height, "frame_rate": frame_rate}
        elif kind == "audio":
            facts = {"sample_rate": ctx.sample_rate, "channels": ctx.channels}
    if kind not in ("video", "audio") or timescale <= 0:
        raise EncodeError(f"{init_path}: not a video or audio init segment")
    try:
        codecs = codec_string(codec, extradata)
    except ValueError as exc:
        raise EncodeError(f"{init_path}: {exc}") from None
    defaults = fmp4.track_defaults(init)
    digest = hashlib.sha256()
    _feed(digest, init)
    segments = [_segment(folder / name, defaults, digest) for name in names]
    return Media(
        id=folder.name,
        kind=kind,
        codec=codec,
        codecs=codecs,
        timescale=timescale,
        segments=tuple(segments),
        init_size=len(init),
        digest=digest.hexdigest(),
        init_name=init_path.name,
        **facts,
    )


def _feed(digest: Any, data: bytes) -> None:
    # Length-prefixed, so no two different sequences of files hash alike.
    digest.update(len(data).to_bytes(8, "big"))
    digest.update(data)


def _segment(path: Path, defaults: fmp4.TrackDefaults, digest: Any) -> Segment:
    """The segment's facts from its moof boxes (sample flags, counts, durations, composition
    offsets): what a demuxer would report, without demuxing or decoding anything."""
    body = path.read_bytes()
    _feed(digest, body)
    try:
        facts = fmp4.fragments(body, defaults)
    except (fmp4.BoxError, struct.error) as exc:
        raise EncodeError(f"{path}: unreadable media segment ({exc})") from None
    return Segment(
        name=path.name,
        size=len(body),
        start=facts.start,
        duration=facts.duration,
        frames=facts.samples,
        starts_with_keyframe=facts.first_is_sync,
    )


def name_by_content(folder: Path, media: Media) -> Media:
    """Rename the rendition's init and media segments after their content (see
    edgeflix/http/content.py), numbered from 0 in order; return `media` with the new names.
    The same bytes get the same names: a title re-encoded to identical bytes keeps its URLs."""
    tag = content_tag(media.digest)
    new_init = init_name(tag)
    os.rename(folder / media.init_name, folder / new_init)
    segments = []
    for number, seg in enumerate(media.segments):
        name = segment_name(tag, number)
        os.rename(folder / seg.name, folder / name)
        segments.append(replace(seg, name=name))
    return replace(media, init_name=new_init, segments=tuple(segments))


def brand_cmaf(folder: Path) -> None:
    """Add the CMAF brand to the compatible brands of the init segment ffmpeg wrote into
    `folder`, in place (before `measure`, so sizes and digests are those of the patched file)."""
    path = folder / INIT_NAME
    try:
        init = path.read_bytes()
    except OSError as exc:
        raise EncodeError(f"{path}: ffmpeg wrote no init segment ({exc.strerror})") from None
    try:
        branded = with_brand(init, CMAF_BRAND)
    except (fmp4.BoxError, struct.error) as exc:
        raise EncodeError(f"{path}: unreadable init segment ({exc})") from None
    if branded != init:
        path.write_bytes(branded)


def with_brand(init: bytes, brand: bytes) -> bytes:
    """`init` with `brand` among its ftyp's compatible brands (as it was if there already).
    The ftyp grows by 4 bytes and moves what follows it: refused if the init holds chunk
    offsets (samples inside it, counted from the file's start), which a fragmented init,
    its sample tables empty, does not."""
    body = bytearray(init)
    top = _spans(body, 0, len(body))
    if not top or top[0][0] != b"ftyp":
        raise fmp4.BoxError("init segment does not start with an ftyp box")
    at, end = top[0][1]
    ftyp = bytes(body[at:end])  # major brand, minor version, compatible brands
    if len(ftyp) < 8 or len(ftyp) % 4:
        raise fmp4.BoxError("ftyp is not a whole list of brands")
    if brand in (ftyp[i : i + 4] for i in range(8, len(ftyp), 4)):
        return init
    if _has_chunk_offsets(body, top):
        raise fmp4.BoxError("init segment holds chunk offsets a longer ftyp would break")
    return struct.pack(">I4s", 8 + len(ftyp) + 4, b"ftyp") + ftyp + brand + init[end:]


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def _has_chunk_offsets(body: bytearray, spans: list[tuple[bytes, tuple[int, int]]]) -> bool:
    """Whether any stco/co64 under moov lists a chunk (its entry count is not 0)."""
    for kind, (at, end) in spans:
        if kind in (b"stco", b"co64"):
            (count,) = struct.unpack_from(">I", body, at + 4)
            if count:
                return True
        elif kind in _CONTAINERS and _has_chunk_offsets(body, _spans(body, at, end)):
            return True
    return False


def shift_timeline(folder: Path, media: Media, ticks: int) -> Media:
    """Add `ticks` (the rendition's timescale) to every time the segments state, in place
    (`shift_segment`): every sample presents that much later, nothing else changes. Return
    `media` with its starts and digest as they now are."""
    digest = hashlib.sha256()
    _feed(digest, (folder / media.init_name).read_bytes())
    segments = []
    for seg in media.segments:
        path = folder / seg.name
        try:
            body = shift_segment(path.read_bytes(), ticks, media.timescale)
        except (fmp4.BoxError, struct.error) as exc:
            raise EncodeError(f"{path}: unreadable media segment ({exc})") from None
        path.write_bytes(body)
        _feed(digest, body)
        segments.append(replace(seg, start=seg.start + ticks))
    return replace(media, segments=tuple(segments), digest=digest.hexdigest())


def shift_segment(segment: bytes, ticks: int, timescale: int) -> bytes:
    """`segment` presenting `ticks` (of `timescale`) later. The times it holds, as ffmpeg
    writes it (no prft, no emsg): each fragment's decode time (moof/traf/tfdt) and each
    segment index's earliest presentation time (sidx, ISO/IEC 14496-12 8.16.3: the
    segment's earliest presentation time, in the sidx's own timescale). Sizes, durations
    and offsets stay as they are. BoxError if a time would overflow its field."""
    body = bytearray(segment)
    top = _spans(body, 0, len(body))
    for kind, (at, end) in top:
        if kind == b"moof":
            for tkind, traf in _spans(body, at, end):
                if tkind == b"traf":
                    for bkind, (tfdt, _) in _spans(body, *traf):
                        if bkind == b"tfdt":
                            _add(body, tfdt, 4, ticks, "tfdt")
        elif kind == b"sidx":
            (sidx_scale,) = struct.unpack_from(">I", body, at + 8)
            if not sidx_scale:
                raise fmp4.BoxError("sidx with a timescale of 0")
            # After version/flags, reference_ID and timescale.
            _add(body, at, 12, round(Fraction(ticks * sidx_scale, timescale)), "sidx")
    return bytes(body)


def _add(body: bytearray, at: int, field: int, ticks: int, what: str) -> None:
    """Add `ticks` to the time at body[at + field] of the full box whose payload starts at
    `at`: 64 bits wide in version 1, else 32. Refused, never wrapped, past its width."""
    fmt, bits = (">Q", 64) if body[at] == 1 else (">I", 32)
    (value,) = struct.unpack_from(fmt, body, at + field)
    if not 0 <= value + ticks < 1 << bits:
        raise fmp4.BoxError(f"{what} time {value + ticks} does not fit its {bits}-bit field")
    struct.pack_into(fmt, body, at + field, value + ticks)


def _spans(body: bytearray, start: int, end: int) -> list[tuple[bytes, tuple[int, int]]]:
    """(type, (payload start, payload end)) of the boxes in body[start:end], by offset:
    `fmp4.boxes` gives payloads, not where they sit."""
    spans = []
    for kind, payload in fmp4.boxes(memoryview(body), start, end):  # checks sizes
        (size,) = struct.unpack_from(">I", body, start)
        at = start + (16 if size == 1 else 8)  # size 1: a 64-bit size follows the type
        spans.append((kind, (at, at + payload.nbytes)))
        start = at + payload.nbytes
    return spans

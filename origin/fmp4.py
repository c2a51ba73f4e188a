"""Read a CMAF media segment's fragment boxes, pure (bytes in, facts out): per segment the
sample count, decode start, total duration, earliest presentation time and whether the first
sample is a sync sample, from moof/traf (tfhd, tfdt, trun) and the init segment's trex
defaults. No demuxer, no decoder: `origin/segments.py` calls this once per segment.
Also the display matrix of a source's video track (`quarter_turned`), for the probe.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

# ISO/IEC 14496-12 sample flags: is_non_sync_sample, and sample_depends_on == 1 ("depends on
# others"). A sample is a keyframe when neither is set (what FFmpeg's mov demuxer does too).
NON_SYNC = 0x0001_0000
DEPENDS_YES = 0x0100_0000


class BoxError(ValueError):
    """The bytes are not the fragmented MP4 they claim to be."""


@dataclass(frozen=True)
class TrackDefaults:
    """From moov/mvex/trex: what a tfhd may leave out."""

    duration: int = 0
    size: int = 0
    flags: int = 0


@dataclass(frozen=True)
class Fragments:
    """The samples of one media segment (all its moof boxes, in order)."""

    samples: int
    start: int  # earliest presentation time (decode time + composition offset), timescale units
    duration: int  # sum of sample durations
    first_is_sync: bool


def boxes(
    data: bytes | memoryview, start: int = 0, end: int | None = None
) -> Iterator[tuple[bytes, memoryview]]:
    """(type, payload) of each box between `start` and `end`; refuses a box that overruns."""
    view = memoryview(data)
    end = len(view) if end is None else end
    pos = start
    while pos < end:
        if end - pos < 8:
            raise BoxError(f"truncated box header at byte {pos}")
        size, kind = struct.unpack_from(">I4s", view, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                raise BoxError(f"truncated box header at byte {pos}")
            (size,) = struct.unpack_from(">Q", view, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise BoxError(f"box {kind!r} at byte {pos} overruns its container")
        yield kind, view[pos + header : pos + size]
        pos += size


def child(payload: memoryview, kind: bytes) -> memoryview | None:
    return next((body for k, body in boxes(payload) if k == kind), None)


def track_defaults(init: bytes) -> TrackDefaults:
    """The trex defaults of the (single) track of an init segment; zeros when absent."""
    moov = child(memoryview(init), b"moov")
    mvex = child(moov, b"mvex") if moov is not None else None
    trex = child(mvex, b"trex") if mvex is not None else None
    if trex is None or len(trex) < 24:
        return TrackDefaults()
    _, _, duration, size, flags = struct.unpack_from(">IIIII", trex, 4)
    return TrackDefaults(duration, size, flags)


def fragments(segment: bytes, defaults: TrackDefaults) -> Fragments:
    """Facts of every sample in `segment`'s moof boxes; BoxError when it has none."""
    samples, duration = 0, 0
    start: int | None = None
    first_flags: int | None = None
    for kind, moof in boxes(segment):
        if kind != b"moof":
            continue
        for tkind, traf in boxes(moof):
            if tkind != b"traf":
                continue
            n, d, s, f = _traf(traf, defaults)
            if n and first_flags is None:
                first_flags = f
            if s is not None:
                start = s if start is None else min(start, s)
            samples += n
            duration += d
    if not samples or start is None or first_flags is None:
        raise BoxError("no samples in any moof/traf/trun")
    return Fragments(samples, start, duration, not first_flags & (NON_SYNC | DEPENDS_YES))


def _traf(traf: memoryview, defaults: TrackDefaults) -> tuple[int, int, int | None, int]:
    """(samples, duration, earliest presentation time, first sample's flags) of one traf."""
    dflt_duration, dflt_flags = defaults.duration, defaults.flags
    decode_time: int | None = None
    runs: list[memoryview] = []
    for kind, body in boxes(traf):
        if kind == b"tfhd":
            dflt_duration, dflt_flags = _tfhd(body, dflt_duration, dflt_flags)
        elif kind == b"tfdt":
            version = body[0]
            fmt = ">Q" if version == 1 else ">I"
            (decode_time,) = struct.unpack_from(fmt, body, 4)
        elif kind == b"trun":
            runs.append(body)
    if decode_time is None:
        raise BoxError("traf without tfdt (no decode time)")
    samples, t = 0, decode_time
    earliest: int | None = None
    first_flags = dflt_flags
    for run in runs:
        version, flags = run[0], int.from_bytes(run[1:4], "big")
        (count,) = struct.unpack_from(">I", run, 4)
        pos = 8 + (4 if flags & 0x1 else 0)
        run_first_flags = None
        if flags & 0x4:
            (run_first_flags,) = struct.unpack_from(">I", run, pos)
            pos += 4
        width = 4 * sum(1 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
        if pos + count * width > len(run):
            raise BoxError("trun shorter than its sample count")
        for i in range(count):
            duration, sample_flags, offset = dflt_duration, dflt_flags, 0
            if flags & 0x100:
                (duration,) = struct.unpack_from(">I", run, pos)
                pos += 4
            if flags & 0x200:
                pos += 4
            if flags & 0x400:
                (sample_flags,) = struct.unpack_from(">I", run, pos)
                pos += 4
            if flags & 0x800:
                (offset,) = struct.unpack_from(">i" if version else ">I", run, pos)
                pos += 4
            if i == 0 and run_first_flags is not None:
                sample_flags = run_first_flags
            if samples == 0:
                first_flags = sample_flags
            pts = t + offset
            earliest = pts if earliest is None else min(earliest, pts)
            t += duration
            samples += 1
    return samples, t - decode_time, earliest, first_flags


def _tfhd(body: memoryview, duration: int, flags: int) -> tuple[int, int]:
    tf_flags = int.from_bytes(body[1:4], "big")
    pos = 8  # version + flags, track_ID
    pos += 8 if tf_flags & 0x1 else 0  # base_data_offset
    pos += 4 if tf_flags & 0x2 else 0  # sample_description_index
    if tf_flags & 0x8:
        (duration,) = struct.unpack_from(">I", body, pos)
        pos += 4
    pos += 4 if tf_flags & 0x10 else 0  # default_sample_size
    if tf_flags & 0x20:
        (flags,) = struct.unpack_from(">I", body, pos)
    return duration, flags


def quarter_turned(moov: bytes | memoryview) -> bool:
    """Whether the first video track's tkhd matrix turns the picture by 90 or 270 degrees
    (a phone held upright: landscape pixels shown portrait)."""
    for kind, trak in boxes(moov):
        if kind != b"trak":
            continue
        mdia = child(trak, b"mdia")
        hdlr = child(mdia, b"hdlr") if mdia is not None else None
        tkhd = child(trak, b"tkhd")
        if hdlr is None or bytes(hdlr[8:12]) != b"vide" or tkhd is None:
            continue
        at = 52 if tkhd[0] == 1 else 40  # matrix offset after the version 1 / 0 fields
        if len(tkhd) < at + 8:
            return False
        a, b = struct.unpack_from(">ii", tkhd, at)
        return abs(a) < abs(b)
    return False

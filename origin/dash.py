"""DASH manifest, pure: one static MPD over the same CMAF segments the HLS playlists use.
One AdaptationSet per video codec (players switch within a set) and one for audio; each
Representation has a SegmentTemplate with an exact SegmentTimeline from the measured segments.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from fractions import Fraction

from origin.segments import Media

MPD_NAME = "manifest.mpd"
NS = "urn:mpeg:dash:schema:mpd:2011"
PROFILE = "urn:mpeg:dash:profile:isoff-live:2011"


def iso_duration(seconds: float) -> str:
    return f"PT{seconds:.3f}S"


def timeline(media: Media) -> list[tuple[int, int, int]]:
    """(t, d, r) runs: segment start, duration, and how many more follow back to back."""
    runs: list[tuple[int, int, int]] = []
    expected = None
    for seg in media.segments:
        if runs and seg.start == expected and seg.duration == runs[-1][1]:
            t, d, r = runs[-1]
            runs[-1] = (t, d, r + 1)
        else:
            runs.append((seg.start, seg.duration, 0))
        expected = seg.start + seg.duration
    return runs


def _frame_rate(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def _number_template(name: str) -> str:
    """`seg_<tag>_00000.m4s` → `seg_<tag>_$Number%05d$.m4s`: every segment of a rendition is
    named alike, numbered from 0 (startNumber) with five digits."""
    stem, _, number = name.rpartition("_")
    return f"{stem}_$Number%0{len(number) - len('.m4s')}d$.m4s"


def _template(parent: ET.Element, media: Media, start: Fraction) -> None:
    """`start`: the media time (seconds) where the period begins, the same for every
    Representation, so that each keeps its place against the others."""
    template = ET.SubElement(
        parent,
        "SegmentTemplate",
        timescale=str(media.timescale),
        presentationTimeOffset=str(round(start * media.timescale)),
        initialization=f"$RepresentationID$/{media.init_name}",
        media=f"$RepresentationID$/{_number_template(media.segments[0].name)}",
        startNumber="0",
    )
    line = ET.SubElement(template, "SegmentTimeline")
    for i, (t, d, r) in enumerate(timeline(media)):
        attrs = {"d": str(d)}
        if i == 0 or t != _end_of_previous(line):
            attrs = {"t": str(t), **attrs}
        if r:
            attrs["r"] = str(r)
        ET.SubElement(line, "S", attrs)


def _end_of_previous(line: ET.Element) -> int:
    # Only called while building: recompute from the runs written so far.
    t = 0
    for s in line:
        t = int(s.get("t", t))
        t += int(s.get("d", "0")) * (int(s.get("r", "0")) + 1)
    return t


def mpd(
    videos: Sequence[Media],
    audio: Media | None,
    duration: float,
    segment_seconds: float,
    language: str | None = None,
) -> str:
    """The MPD; `language`: the audio's (RFC 5646, origin/languages.py), "und" if unsaid."""
    root = ET.Element(
        "MPD",
        xmlns=NS,
        profiles=PROFILE,
        type="static",
        mediaPresentationDuration=iso_duration(duration),
        minBufferTime=iso_duration(segment_seconds),
    )
    period = ET.SubElement(root, "Period", id="0", start="PT0S")
    # The period begins with the first picture. The audio's own first sample comes earlier:
    # the AAC encoder's priming (origin/ingest.py align_starts puts the sound proper with the
    # picture), which an offset of its own would play 21 ms late; before the offset, it is
    # not played, as HLS players skip it by the samples' times.
    start = max(Fraction(v.segments[0].start, v.timescale) for v in videos)
    for index, codec in enumerate(dict.fromkeys(v.codec for v in videos)):
        group = [v for v in videos if v.codec == codec]
        aset = ET.SubElement(
            period,
            "AdaptationSet",
            id=str(index),
            contentType="video",
            mimeType="video/mp4",
            segmentAlignment="true",
            startWithSAP="1",
            maxWidth=str(max(v.width or 0 for v in group)),
            maxHeight=str(max(v.height or 0 for v in group)),
        )
        for video in group:
            rep = ET.SubElement(
                aset,
                "Representation",
                id=video.id,
                bandwidth=str(video.peak_bps()),
                codecs=video.codecs,
                width=str(video.width),
                height=str(video.height),
                sar="1:1",
            )
            if video.frame_rate:
                rep.set("frameRate", _frame_rate(video.frame_rate))
            _template(rep, video, start)
    if audio is not None:
        aset = ET.SubElement(
            period,
            "AdaptationSet",
            id=str(len({v.codec for v in videos})),
            contentType="audio",
            mimeType="audio/mp4",
            segmentAlignment="true",
            startWithSAP="1",
            lang=language or "und",
        )
        rep = ET.SubElement(
            aset,
            "Representation",
            id=audio.id,
            bandwidth=str(audio.peak_bps()),
            codecs=audio.codecs,
            audioSamplingRate=str(audio.sample_rate or 48000),
        )
        ET.SubElement(
            rep,
            "AudioChannelConfiguration",
            schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011",
            value=str(audio.channels or 2),
        )
        _template(rep, audio, start)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

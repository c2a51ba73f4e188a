from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from fractions import Fraction

import m3u8

from origin.dash import mpd, timeline
from origin.hls import master_playlist, media_playlist
from origin.segments import Media, Segment

NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}
TAG = "0123456789"


def _video(height: int, sizes: list[int], codec: str = "h264") -> Media:
    # 12800 ticks/s, 2 s segments except a short last one, first frame at 1024 (B-frame delay).
    durations = [25600] * (len(sizes) - 1) + [16384]
    starts = [1024 + 25600 * i for i in range(len(sizes))]
    return Media(
        id=f"{codec}_{height}p", kind="video", codec=codec,
        codecs="avc1.64001f" if codec == "h264" else "hvc1.1.6.L93.90", timescale=12800,
        segments=tuple(Segment(f"seg_{TAG}_{i:05d}.m4s", s, t, d, 50, True)
                       for i, (s, t, d) in enumerate(zip(sizes, starts, durations, strict=True))),
        init_size=800, digest=TAG * 6, init_name=f"init_{TAG}.mp4",
        width=height * 16 // 9, height=height, frame_rate=Fraction(25),
    )  # fmt: skip


AUDIO = Media(
    id="audio", kind="audio", codec="aac", codecs="mp4a.40.2", timescale=48000,
    segments=(Segment("seg_00000.m4s", 32000, 0, 96000, 94, True),
              Segment("seg_00001.m4s", 16000, 96000, 48000, 47, True)),
    init_size=700, digest="ab" * 32, sample_rate=48000, channels=2,
)  # fmt: skip


def test_media_playlist_has_real_durations_and_map() -> None:
    video = _video(720, [500_000, 400_000, 100_000])
    parsed = m3u8.loads(media_playlist(video))
    assert [s.duration for s in parsed.segments] == [2.0, 2.0, 1.28]
    assert [s.uri for s in parsed.segments] == [f"seg_{TAG}_0000{i}.m4s" for i in range(3)]
    assert parsed.segment_map[0].uri == f"init_{TAG}.mp4"
    assert parsed.target_duration == 2 and parsed.is_endlist and parsed.playlist_type == "vod"


def test_master_bandwidth_includes_audio_and_peak() -> None:
    hi, lo = _video(720, [500_000, 400_000, 100_000]), _video(360, [100_000, 80_000, 20_000])
    parsed = m3u8.loads(master_playlist([hi, lo], AUDIO))
    first = parsed.playlists[0].stream_info
    assert first.bandwidth == hi.peak_bps() + AUDIO.peak_bps() == 2_000_000 + 128_000
    assert first.average_bandwidth == hi.average_bps() + AUDIO.average_bps()
    assert first.codecs == "avc1.64001f,mp4a.40.2"
    assert first.resolution == (1280, 720) and first.frame_rate == 25.0
    # Named by content, as their segments are; the audio (packaged before) keeps index.m3u8.
    playlist = f"index_{TAG}.m3u8"
    assert [p.uri for p in parsed.playlists] == [f"h264_720p/{playlist}", f"h264_360p/{playlist}"]
    (audio,) = parsed.media
    assert audio.type == "AUDIO" and audio.uri == "audio/index.m3u8"
    assert all(p.stream_info.audio == audio.group_id for p in parsed.playlists)


def test_a_short_last_segment_does_not_claim_a_peak_of_its_own() -> None:
    """RFC 8216's peak segment bit rate: runs of segments lasting 0.5-1.5 target durations.
    A 0.04 s tail (one keyframe) alone would claim ten times the real rate."""
    ticks = 12800
    tail = Media(
        id="h264_720p", kind="video", codec="h264", codecs="avc1.64001f", timescale=ticks,
        segments=(Segment("a.m4s", 1_172_640, 0, 4 * ticks, 100, True),
                  Segment("b.m4s", 118_885, 4 * ticks, 512, 1, True)),
        init_size=800, digest=TAG * 6, width=1280, height=720, frame_rate=Fraction(25),
    )  # fmt: skip
    assert tail.target_seconds == 4
    # The densest run is a with the tail (4.04 s, within 2-6 s): 2.56 Mbit/s, not 23.8.
    assert tail.peak_bps() == round((1_172_640 + 118_885) * 8 * ticks / (4 * ticks + 512))
    # The tail joins the run before it when that one alone is too short to count.
    short = replace(tail, segments=(replace(tail.segments[0], duration=ticks), tail.segments[1]))
    assert short.target_seconds == 1
    assert short.peak_bps() == round((1_172_640 + 118_885) * 8 * ticks / (ticks + 512))
    # Too short for any run: the average.
    only = replace(tail, segments=(tail.segments[1],))
    assert only.peak_bps() == only.average_bps() > 0
    # What the manifests say.
    assert "BANDWIDTH=2557475," in master_playlist([tail], None)
    assert 'bandwidth="2557475"' in mpd([tail], None, 4.04, 4.0)


def test_master_without_audio_has_no_group() -> None:
    text = master_playlist([_video(240, [1000, 1000])], None)
    assert "EXT-X-MEDIA" not in text and "AUDIO=" not in text and "mp4a" not in text


def test_timeline_runs() -> None:
    assert timeline(_video(720, [1, 1, 1, 1])) == [(1024, 25600, 2), (1024 + 3 * 25600, 16384, 0)]


def test_mpd_lists_the_same_representations() -> None:
    videos = [_video(720, [5, 4, 1]), _video(360, [2, 2, 1]), _video(720, [3, 3, 1], "hevc")]
    root = ET.fromstring(mpd(videos, AUDIO, 5.28, 2.0))
    assert root.get("type") == "static" and root.get("mediaPresentationDuration") == "PT5.280S"
    sets = root.findall("d:Period/d:AdaptationSet", NS)
    assert [s.get("contentType") for s in sets] == ["video", "video", "audio"]
    reps = [r.get("id") for r in root.iter("{urn:mpeg:dash:schema:mpd:2011}Representation")]
    assert reps == ["h264_720p", "h264_360p", "hevc_720p", "audio"]
    template = sets[0].find("d:Representation/d:SegmentTemplate", NS)
    assert template is not None
    assert template.get("media") == f"$RepresentationID$/seg_{TAG}_$Number%05d$.m4s"
    assert template.get("initialization") == f"$RepresentationID$/init_{TAG}.mp4"
    audio = sets[2].find("d:Representation/d:SegmentTemplate", NS)
    assert audio is not None and audio.get("media") == "$RepresentationID$/seg_$Number%05d$.m4s"
    assert template.get("presentationTimeOffset") == "1024" and template.get("startNumber") == "0"
    # One period start for all: the first picture's time (1024/12800 s = 3840/48000 s), so
    # audio samples before it (AAC priming) are not played, as in HLS, and none plays late.
    assert audio.get("presentationTimeOffset") == "3840"
    runs = template.findall("d:SegmentTimeline/d:S", NS)
    assert [(s.get("t"), s.get("d"), s.get("r")) for s in runs] == [
        ("1024", "25600", "1"),
        (None, "16384", None),
    ]


def test_the_audio_s_language_is_stated_when_known() -> None:
    videos = [_video(720, [5, 4, 1])]
    (media,) = m3u8.loads(master_playlist(videos, AUDIO, "fr")).media
    assert media.language == "fr" and media.default == "YES"
    assert "LANGUAGE" not in master_playlist(videos, AUDIO)
    for language, lang in (("fr", "fr"), (None, "und")):
        root = ET.fromstring(mpd(videos, AUDIO, 5.28, 2.0, language))
        sets = root.findall("d:Period/d:AdaptationSet", NS)
        assert sets[-1].get("lang") == lang

"""Sources whose streams are not what ffmpeg assumes: a variable frame rate, sound shorter
than the picture, several sound tracks (the default one, its language), a one-frame
picture before the real video, pictures too small for a codec or too narrow for the lower
rungs, a high frame rate. Each ingest publishes the title the source means, or refuses in
one line. Clips are tiny (320x180 at most, 3 s) and made by the origin's own ffmpeg.
"""

from __future__ import annotations

import array
import io
import itertools
import subprocess
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import av
import m3u8
import pytest

from origin.ladder import default_kbps
from origin.runner import find_ffmpeg
from tests.conftest import media_playlist
from tests.integration.test_origin_failures import assert_one_line_error
from tests.integration.test_origin_sources import NS, X264, check_title, ingest, video

AAC = ["-c:a", "aac"]


def sine(seconds: float = 2, frequency: int = 440) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate=48000:duration={seconds}"]


def make(folder: Path, name: str, *args: str) -> Path:
    out = folder / name
    subprocess.run([find_ffmpeg(), "-loglevel", "error", "-y", *args, str(out)],
                   check=True, timeout=60)  # fmt: skip
    return out


def sound(title_dir: Path) -> tuple[float, float, float, float]:
    """The title's audio rendition: seconds in its playlist, when the first and the last
    audible sample play, and its pitch (Hz, from the left channel's zero crossings)."""
    folder = title_dir / "audio"
    playlist = m3u8.load(str(media_playlist(folder)))
    data = (folder / playlist.segment_map[0].uri).read_bytes() + b"".join(
        (folder / s.uri).read_bytes() for s in playlist.segments
    )
    samples = array.array("f")
    rate = 48000
    with av.open(io.BytesIO(data)) as c:
        for frame in c.decode(audio=0):
            rate = frame.sample_rate
            samples.extend(array.array("f", bytes(frame.planes[0]))[: frame.samples])
    loud = [i for i, x in enumerate(samples) if abs(x) > 0.05]
    assert loud, "the audio is silent"
    span = samples[loud[0] : loud[-1]]
    crossings = sum((a < 0) != (b < 0) for a, b in itertools.pairwise(span))
    pitch = crossings / 2 / (len(span) / rate)
    seconds = sum(s.duration for s in playlist.segments)
    return seconds, loud[0] / rate, loud[-1] / rate, pitch


# --- variable frame rate ---


def test_variable_frame_rate_is_encoded_at_its_nominal_rate(tmp_path: Path) -> None:
    """1.5 s at 30 fps, then 1.5 s at 6 (a phone's, a screen recording's): 30 fps with the
    gaps filled, 90 frames, not the 19.3 fps average, which drops the fast part's frames;
    nor refused because the track's stated length (2.8 s, its decode times summed) ends
    before the last picture (2.83 s + 1/6)."""
    select = "select='if(lt(n\\,45)\\,1\\,not(mod(n\\,5)))'"
    # x264's default preset: B-frames, with which the MP4 muxer states the short length.
    src = make(tmp_path, "vfr.mp4", *video(rate="30", seconds=3), *sine(3), "-vf", select,
               "-fps_mode", "vfr", "-c:v", "libx264", *AAC)  # fmt: skip
    proc = ingest(src, tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    title = check_title(tmp_path / "store", 90, Fraction(30))
    assert title["model"].duration == 3.0
    seconds, first, _, _ = sound(title["dir"])
    assert abs(seconds - 3.0) < 0.05 and first < 0.05


# --- sound shorter than the picture ---


def test_sound_ending_early_is_padded_to_the_picture_s_length(tmp_path: Path) -> None:
    src = make(tmp_path, "short.mp4", *video(), *sine(1), *X264, *AAC)
    assert ingest(src, tmp_path / "store").returncode == 0
    title = check_title(tmp_path / "store", 50, Fraction(25))
    seconds, first, last, _ = sound(title["dir"])
    assert abs(seconds - 2.0) < 0.05, seconds  # was 1 s: the sound's own length
    assert first < 0.05 and abs(last - 1.0) < 0.05


def test_sound_starting_late_and_ending_early_stays_in_sync(tmp_path: Path) -> None:
    """Sound from 0.5 s to 1.5 s of a 2 s picture: silence before it (the sync's) and after
    it (the padding), and the sound itself where it was."""
    src = make(tmp_path, "late.mp4", *video(), "-itsoffset", "0.5", *sine(1), *X264, *AAC)
    assert ingest(src, tmp_path / "store").returncode == 0
    title = check_title(tmp_path / "store", 50, Fraction(25))
    seconds, first, last, _ = sound(title["dir"])
    assert abs(seconds - 2.0) < 0.05, seconds
    assert abs(first - 0.5) < 0.05 and abs(last - 1.5) < 0.05, (first, last)


# --- several sound tracks ---


def two_tracks(folder: Path, name: str, *flags: str) -> Path:
    """440 Hz in English, then 880 Hz in French (Matroska's bibliographic code `fre`)."""
    return make(folder, name, *video(), *sine(2, 440), *sine(2, 880), "-map", "0:v",
                "-map", "1:a", "-map", "2:a", *X264, *AAC, "-metadata:s:a:0", "language=eng",
                "-metadata:s:a:1", "language=fre", *flags)  # fmt: skip


def languages(title_dir: Path) -> tuple[str | None, str | None]:
    master = m3u8.load(str(title_dir / "master.m3u8"))
    (media,) = master.media
    mpd = ET.parse(title_dir / "manifest.mpd").getroot()
    sets = [a for a in mpd.iter(f"{NS}AdaptationSet") if a.get("contentType") == "audio"]
    return media.language, sets[0].get("lang")


def test_the_default_sound_track_is_taken_with_its_language(tmp_path: Path) -> None:
    src = two_tracks(tmp_path, "two.mkv", "-disposition:a:0", "0", "-disposition:a:1", "default")
    assert ingest(src, tmp_path / "store").returncode == 0
    title = check_title(tmp_path / "store", 50, Fraction(25))
    pitch = sound(title["dir"])[3]
    assert abs(pitch - 880) < 20, pitch  # the second track: the one flagged default
    assert languages(title["dir"]) == ("fr", "fr")  # RFC 5646: ISO 639-1 where there is one


def test_without_a_default_the_first_sound_track_is_taken(tmp_path: Path) -> None:
    src = two_tracks(tmp_path, "two.mkv", "-disposition:a:0", "0", "-disposition:a:1", "0")
    assert ingest(src, tmp_path / "store").returncode == 0
    title = check_title(tmp_path / "store", 50, Fraction(25))
    assert abs(sound(title["dir"])[3] - 440) < 20
    assert languages(title["dir"]) == ("en", "en")


def test_an_undetermined_language_is_not_stated(tmp_path: Path) -> None:
    src = make(tmp_path, "und.mp4", *video(), *sine(), *X264, *AAC)  # MP4 says "und"
    assert ingest(src, tmp_path / "store").returncode == 0
    assert languages(tmp_path / "store" / "titles" / "t") == (None, "und")


# --- which video stream ---


@pytest.mark.parametrize("name", ["thumb.mkv", "thumb.mp4"])
def test_a_one_frame_picture_before_the_video_is_not_the_title(tmp_path: Path, name: str) -> None:
    """[64x64 PNG, 1 frame][320x180 H.264, 2 s][audio], none flagged cover art: the title is
    the 2 s video, not one 64x64 frame (MP4 flags the PNG default: the first video track)."""
    thumb = ["-f", "lavfi", "-i", "testsrc2=size=64x64:rate=25:duration=0.04"]
    src = make(tmp_path, name, *thumb, *video(), *sine(), "-map", "0:v", "-map", "1:v",
               "-map", "2:a", "-c:v:0", "png", "-c:v:1", "libx264", "-preset", "ultrafast",
               *AAC)  # fmt: skip
    proc = ingest(src, tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    title = check_title(tmp_path / "store", 50, Fraction(25))
    assert title["sizes"] == {"h264_180p": (320, 180)}
    assert title["model"].duration == 2.0


def test_the_video_stream_flagged_default_is_the_title(tmp_path: Path) -> None:
    """Two videos (an edit and the film, say): the one flagged default, though shorter."""
    src = make(tmp_path, "two.mkv", *video(), *video(size="160x90", seconds=1), "-map", "0:v",
               "-map", "1:v", *X264, "-disposition:v:0", "0",
               "-disposition:v:1", "default")  # fmt: skip
    proc = ingest(src, tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    assert check_title(tmp_path / "store", 25, Fraction(25))["sizes"] == {"h264_90p": (160, 90)}


# --- picture sizes ---


def test_a_picture_too_small_for_a_codec_is_refused_in_one_line(tmp_path: Path) -> None:
    """SVT-AV1 takes no side under 64 pixels, x265 none under 16: said so before encoding,
    not as ffmpeg's last words about the poster's output."""
    small = make(tmp_path, "small.mp4", *video(size="96x54"), *X264)
    proc = ingest(small, tmp_path / "store", "--codecs", "h264,av1")
    assert_one_line_error(proc, "small.mp4", "av1", "64 pixels")
    tiny = make(tmp_path, "tiny.mp4", *video(size="12x12"), *X264)
    assert_one_line_error(ingest(tiny, tmp_path / "store", "--codecs", "hevc"), "hevc", "16")
    assert not (tmp_path / "store" / "titles" / "t").exists()


def test_a_very_narrow_source_gets_no_rung_narrower_than_8_pixels(tmp_path: Path) -> None:
    """8x480: its 360p and 240p rungs would be 6 and 4 pixels wide."""
    src = make(tmp_path, "narrow.mkv", *video(size="8x480", seconds=1), *X264)
    proc = ingest(src, tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    assert check_title(tmp_path / "store", 25, Fraction(25))["sizes"] == {"h264_480p": (8, 480)}


# --- frame rate and bits ---


def test_a_high_frame_rate_gets_more_bits(tmp_path: Path) -> None:
    src = make(tmp_path, "sixty.mp4", *video(rate="60", seconds=1), *X264)
    proc = ingest(src, tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    assert default_kbps(320, 180, "h264", 60) > default_kbps(320, 180, "h264")
    assert f"rungs=h264_180p@{default_kbps(320, 180, 'h264', 60)}k" in proc.stderr

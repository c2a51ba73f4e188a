"""Sources a real operator feeds `origin ingest`: NTSC and odd frame rates, variable frame
rate, odd and anamorphic sizes, rotated phone video, interlaced masters, HDR, audio or video
starting late or running long, other containers, streams that state no duration, cuts made
by edit lists, songs with cover art, names ffmpeg misreads, broken files; and the store:
read-only, replaced while served. Each becomes a title a player can play, or one line and a
non-zero exit. Clips are generated once per session with the same ffmpeg the origin uses.
"""

from __future__ import annotations

import array
import io
import json
import re
import shlex
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import m3u8
import pytest

from edgeflix import titlefiles
from origin.runner import find_ffmpeg
from origin.segments import measure
from tests.conftest import media_playlist, run_cli
from tests.integration.serve_support import start
from tests.integration.test_origin_failures import (
    assert_one_line_error,
    skip_without_mount_namespaces,
)

SEGMENT = 1.0
NS = "{urn:mpeg:dash:schema:mpd:2011}"
SINE = "sine=frequency=440:sample_rate={rate}:duration={seconds}"
BOX = (
    "color=c=gray:s=320x180:r=50:d=2[bg];color=c=white:s=40x100:r=50:d=2[fg];"
    "[bg][fg]overlay=x='mod(t*400\\,280)':y=40:eval=frame"
)
X264 = ["-c:v", "libx264", "-preset", "ultrafast"]


X265 = ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error"]


def hdr(transfer: str, nits: int) -> str:
    """The filter that turns SDR BT.709 into 10-bit HDR (BT.2020, `transfer`), SDR white at
    `nits`, tagged as such."""
    return (
        "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv,"
        f"zscale=t=linear:npl={nits},format=gbrpf32le,"
        f"zscale=p=bt2020:t={transfer}:m=bt2020nc:r=tv:npl={nits},format=yuv420p10le"
    )


def video(size: str = "320x180", rate: str = "25", seconds: float = 2) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]


def sine(seconds: float = 2, rate: int = 48000) -> list[str]:
    return ["-f", "lavfi", "-i", SINE.format(rate=rate, seconds=seconds)]


# name -> ffmpeg arguments (inputs, then output options) before the output file.
CLIPS: dict[str, list[str]] = {
    "ntsc.mp4": [*video(rate="30000/1001"), *sine(), *X264, "-c:a", "aac", "-shortest"],
    "film.mkv": [*video(rate="24000/1001"), *X264],
    "r5994.mp4": [*video(rate="60000/1001"), *X264],
    # 1 s at 30 fps then 1 s at 15 fps: variable frame rate, averaging 22.5.
    "vfr.mp4": [*video(rate="30", seconds=1), *video(rate="15", seconds=1),
                "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0", "-fps_mode", "vfr", *X264],
    "odd.mp4": [*video(size="642x362"), *X264],
    "pal_wide.mp4": [*video(size="720x576"), "-vf", "setsar=64/45", *X264],
    # A phone held upright: landscape pixels, a display matrix turning them a quarter.
    "phone.mp4": ["-display_rotation:v:0", "90", *video(size="640x360"), *X264],
    "phone.mkv": ["-display_rotation:v:0", "-90", *video(size="640x360"), *X264],
    # Audio whose first sample plays at 1 s (a timestamp offset, no silence in the file).
    "audio_late.mp4": [*video(), "-itsoffset", "1", *sine(1), *X264, "-c:a", "aac"],
    # Video whose first frame shows at 0.5 s, the audio from 0.
    "video_late.mp4": ["-itsoffset", "0.5", *video(seconds=1.5), *sine(), *X264, "-c:a", "aac"],
    "ten_bit.webm": [*video(), *sine(rate=22050), "-pix_fmt", "yuv420p10le", "-c:v",
                     "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus"],
    "surround.ts": [*video(), *sine(), *X264, "-c:a", "aac", "-ac", "6"],
    "one_frame.mp4": [*video(seconds=0.04), *X264],
    # No duration anywhere: a raw H.264 stream (CCTV exports), and Matroska written to a
    # pipe (a live recording: no Duration element, no cues).
    "raw.h264": [*video(), *X264],
    "live.mkv": [*video(), *sine(), *X264, "-c:a", "aac", "-f", "matroska"],
    "my clip ü 映画.mov": [*video(), *sine(), *X264, "-c:a", "aac"],
    # 25i: 50 fields a second woven into 25 frames, top field first (a broadcast master), of
    # a box moving fast across a flat background: combs on its edges, nothing else to misread.
    "interlaced.mp4": ["-f", "lavfi", "-i", BOX, "-vf", "interlace=scan=tff",
                       "-flags", "+ildct+ilme", *X264, "-x264-params", "tff=1"],
    # Sound running on 1.5 s past the last frame; Matroska and WebM state no stream's
    # length, only the container's (the sound's).
    "audio_longer.mp4": [*video(), *sine(3.5), *X264, "-c:a", "aac"],
    "audio_longer.mkv": [*video(), *sine(3.5), *X264, "-c:a", "aac"],
    "audio_longer.webm": [*video(), *sine(3.5), "-c:v", "libvpx-vp9", "-deadline", "realtime",
                          "-cpu-used", "8", "-c:a", "libopus"],
    # One picture and 2 s of sound (a podcast's still, cut by a tool that keeps one frame).
    "still.mkv": [*video(seconds=0.04), *sine(), *X264, "-c:a", "aac"],
    # A song with its album cover: an attached picture is a video stream to ffmpeg.
    "song.m4a": [*sine(), *video(size="300x300", rate="1", seconds=1), "-map", "0:a", "-map",
                 "1:v", "-c:a", "aac", "-c:v", "mjpeg", "-frames:v", "1",
                 "-disposition:v:0", "attached_pic"],
    "dot.mkv": [*video(), "-vf", "scale=1:1,format=yuv444p", "-c:v", "ffv1"],
    "speck.mp4": [*video(), "-vf", "scale=2:2", *X264],
    # A still image every 3 s (a podcast's slideshow): no whole number of frames lasts 4 s.
    "slides.mp4": [*video(rate="1/3", seconds=12), *X264],
    "whole.mp4": [*video(seconds=3), *X264, "-movflags", "+faststart"],
    # HDR as a phone or a grading suite writes it: the SDR test picture, its white at the
    # BT.2408 reference (203 nits) in PQ, or HLG for a 1000-nit display; 10-bit HEVC. And
    # that SDR picture, lossless, to compare the renditions' tone-mapped pictures with.
    "hdr_pq.mp4": [*video(), "-vf", hdr("smpte2084", 203), *X265],
    "hdr_hlg.mkv": [*video(), "-vf", hdr("arib-std-b67", 1000), *X265],
    "sdr_ref.mp4": [*video(), *X264, "-qp", "0", "-pix_fmt", "yuv420p"],
}  # fmt: skip


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    ffmpeg = find_ffmpeg()
    made = {}
    for name, args in CLIPS.items():
        if args[0] == "-display_rotation:v:0":
            # A display matrix is set on an input and copied into the output.
            plain = folder / f"plain-{name}"
            subprocess.run([ffmpeg, "-loglevel", "error", "-y", *args[2:], str(plain)],
                           check=True, timeout=60)  # fmt: skip
            args = [args[0], args[1], "-i", str(plain), "-c", "copy"]
        if name.startswith("live"):  # written to a pipe, as a live recorder does
            with (folder / name).open("wb") as out:
                subprocess.run([ffmpeg, "-loglevel", "error", *args, "pipe:1"], stdout=out,
                               check=True, timeout=60)  # fmt: skip
        else:
            subprocess.run([ffmpeg, "-loglevel", "error", "-y", *args, str(folder / name)],
                           check=True, timeout=60)  # fmt: skip
        made[name] = folder / name
    return made


def ingest(src: Path, store: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["origin", "ingest", str(src), "--id", "t", "--title", "T", "--store",
                    str(store), "--segment-seconds", str(SEGMENT), "--json", *extra])  # fmt: skip


def decode_rendition(folder: Path) -> tuple[list[Any], list[float], m3u8.M3U8]:
    """Every frame of a rendition from init + segments, and each segment's duration; every
    segment must open on a keyframe."""
    playlist = m3u8.load(str(media_playlist(folder)))
    init = (folder / playlist.segment_map[0].uri).read_bytes()
    for seg in playlist.segments:
        with av.open(io.BytesIO(init + (folder / seg.uri).read_bytes())) as c:
            packets = [p for p in c.demux(video=0) if p.size]
            assert packets[0].is_keyframe, f"{folder.name}/{seg.uri} opens on a non-keyframe"
    whole = init + b"".join((folder / s.uri).read_bytes() for s in playlist.segments)
    with av.open(io.BytesIO(whole)) as c:
        frames = list(c.decode(video=0))
    return frames, [s.duration for s in playlist.segments], playlist


def check_title(store: Path, frames: int, rate: Fraction) -> dict[str, Any]:
    """The title plays: files.json matches the disk, every rendition decodes to `frames`
    frames at `rate` in keyframe-aligned segments on target, HLS and DASH agree."""
    title_dir = store / "titles" / "t"
    model, _ = titlefiles.read(title_dir)
    assert titlefiles.verify(title_dir, model) == []
    assert {e.path for e in titlefiles.scan(title_dir)} == {f.path for f in model.files}
    master = m3u8.load(str(title_dir / "master.m3u8"))
    mpd = ET.parse(title_dir / "manifest.mpd").getroot()
    reps = {r.get("id"): r for r in mpd.iter(f"{NS}Representation")}
    sizes = {}
    for variant in master.playlists:
        folder = title_dir / Path(variant.uri).parent
        decoded, durations, _ = decode_rendition(folder)
        assert abs(len(decoded) - frames) <= 1, (folder.name, len(decoded), frames)
        for d in durations[:-1]:
            assert abs(d - SEGMENT) <= 0.1 * SEGMENT, (folder.name, durations)
        info = variant.stream_info
        assert info.frame_rate == round(float(rate), 3)
        assert info.resolution == (decoded[0].width, decoded[0].height)
        rep = reps[folder.name]
        assert Fraction(rep.get("frameRate")) == rate
        assert (int(rep.get("width")), int(rep.get("height"))) == info.resolution
        timeline = rep.find(f"{NS}SegmentTemplate/{NS}SegmentTimeline")
        assert timeline is not None
        assert sum(int(s.get("r", "0")) + 1 for s in timeline) == len(durations)
        sizes[folder.name] = info.resolution
    return {"sizes": sizes, "model": model, "dir": title_dir}


def first_sound(title_dir: Path) -> float:
    """Seconds of audio before the first audible sample, counted in decoded samples: a
    player that ignores the init segment's edit list (MSE players may) hears a late start
    only if the silence is really there."""
    playlist = m3u8.load(str(media_playlist(title_dir / "audio")))
    data = (title_dir / "audio" / playlist.segment_map[0].uri).read_bytes() + b"".join(
        (title_dir / "audio" / s.uri).read_bytes() for s in playlist.segments
    )
    before = 0
    with av.open(io.BytesIO(data)) as c:
        for frame in c.decode(audio=0):
            assert frame.format.name == "fltp"
            left = array.array("f", bytes(frame.planes[0]))[: frame.samples]
            loud = next((i for i, x in enumerate(left) if abs(x) > 0.05), None)
            if loud is not None:
                return (before + loud) / frame.sample_rate
            before += frame.samples
    raise AssertionError("the audio is silent")


@pytest.mark.parametrize(
    ("name", "frames", "rate"),
    [
        ("ntsc.mp4", 59, Fraction(30000, 1001)),
        ("film.mkv", 48, Fraction(24000, 1001)),
        ("r5994.mp4", 120, Fraction(60000, 1001)),
        # At its nominal 30 fps, not the 22.5 average: the 15 fps second's frames twice.
        ("vfr.mp4", 60, Fraction(30)),
    ],
)
def test_frame_rates(
    clips: dict[str, Path], tmp_path: Path, name: str, frames: int, rate: Fraction
) -> None:
    proc = ingest(clips[name], tmp_path)
    assert proc.returncode == 0, proc.stderr
    check_title(tmp_path, frames, rate)


def test_odd_size_keeps_its_shape(clips: dict[str, Path], tmp_path: Path) -> None:
    assert ingest(clips["odd.mp4"], tmp_path).returncode == 0
    sizes = check_title(tmp_path, 50, Fraction(25))["sizes"]
    assert sizes == {"h264_360p": (638, 360), "h264_240p": (426, 240)}


def test_anamorphic_uses_display_geometry(clips: dict[str, Path], tmp_path: Path) -> None:
    assert ingest(clips["pal_wide.mp4"], tmp_path, "--heights", "576,240").returncode == 0
    sizes = check_title(tmp_path, 50, Fraction(25))["sizes"]
    assert sizes == {"h264_576p": (1024, 576), "h264_240p": (426, 240)}


@pytest.mark.parametrize("name", ["phone.mp4", "phone.mkv"])
def test_rotated_phone_video_stays_upright(
    clips: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """ffmpeg turns the frames upright before our filters: the ladder must be portrait too,
    or every rung squashes a 360x640 picture into 640x360."""
    proc = ingest(clips[name], tmp_path)
    assert proc.returncode == 0, proc.stderr
    sizes = check_title(tmp_path, 50, Fraction(25))["sizes"]
    assert all(h > w for w, h in sizes.values()), sizes
    assert sizes["h264_640p"] == (360, 640)
    with av.open(str(tmp_path / "titles" / "t" / "poster.jpg")) as c:
        poster = c.streams.video[0].codec_context
        assert poster.height > poster.width


def test_audio_starting_late_stays_in_sync(clips: dict[str, Path], tmp_path: Path) -> None:
    proc = ingest(clips["audio_late.mp4"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    title_dir = check_title(tmp_path, 50, Fraction(25))["dir"]
    assert first_sound(title_dir) == pytest.approx(1.0, abs=0.05)


def test_video_starting_late_is_padded_not_refused(clips: dict[str, Path], tmp_path: Path) -> None:
    proc = ingest(clips["video_late.mp4"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    title_dir = check_title(tmp_path, 50, Fraction(25))["dir"]
    assert first_sound(title_dir) == pytest.approx(0.0, abs=0.05)


@pytest.mark.parametrize(
    ("name", "frames"),
    [("ten_bit.webm", 50), ("surround.ts", 50), ("one_frame.mp4", 1), ("my clip ü 映画.mov", 50),
     ("raw.h264", 50), ("live.mkv", 50)],
)  # fmt: skip
def test_other_containers_and_names(
    clips: dict[str, Path], tmp_path: Path, name: str, frames: int
) -> None:
    proc = ingest(clips[name], tmp_path)
    assert proc.returncode == 0, proc.stderr
    title = check_title(tmp_path, frames, Fraction(25))
    has_audio = name not in ("one_frame.mp4", "raw.h264")
    assert (title["dir"] / "audio").is_dir() == has_audio
    summary = json.loads(proc.stdout)
    audio = [r for r in summary["renditions"] if r["kind"] == "audio"]
    assert len(audio) == has_audio
    if has_audio:  # AAC stereo whatever came in (Opus at 22.05 kHz, 5.1 AAC)
        assert audio[0]["codecs"] == "mp4a.40.2"
        master = (title["dir"] / "master.m3u8").read_text()
        assert 'CHANNELS="2"' in master


def test_truncated_source_is_named_as_such(clips: dict[str, Path], tmp_path: Path) -> None:
    """The index (moov first) promises 75 frames, the file ends halfway: say so."""
    whole = clips["whole.mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 2])
    assert_one_line_error(ingest(cut, tmp_path / "s"), "cut.mp4", "truncated")
    assert not (tmp_path / "s" / "titles" / "t").exists()


def test_broken_files_are_one_line_errors(clips: dict[str, Path], tmp_path: Path) -> None:
    ffmpeg = find_ffmpeg()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert_one_line_error(ingest(empty, tmp_path / "s"), "not a video")
    moov_last = tmp_path / "moov_last.mp4"
    subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(clips["whole.mp4"]), "-c", "copy",
                    "-movflags", "-faststart", str(moov_last)], check=True)  # fmt: skip
    half = tmp_path / "half.mp4"
    half.write_bytes(moov_last.read_bytes()[: moov_last.stat().st_size // 2])
    assert_one_line_error(ingest(half, tmp_path / "s"), "half.mp4", "moov", "truncated")
    subs = tmp_path / "subs.mkv"
    srt = tmp_path / "s.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    subprocess.run([ffmpeg, "-loglevel", "error", *sine(1), "-i", str(srt), "-c:a", "libopus",
                    "-c:s", "srt", str(subs)], check=True)  # fmt: skip
    assert_one_line_error(ingest(subs, tmp_path / "s"), "no video stream")
    assert_one_line_error(ingest(clips["song.m4a"], tmp_path / "s"), "no video stream")
    assert_one_line_error(ingest(clips["dot.mkv"], tmp_path / "s"), "too small")
    assert_one_line_error(ingest(clips["speck.mp4"], tmp_path / "s"), "too small", "8x8")
    assert not (tmp_path / "s" / "titles" / "t").exists()


def test_replace_while_serving(clips: dict[str, Path], tmp_path: Path) -> None:
    """Readers polling a title while `--replace` swaps it get the old or the new files.json,
    never an error or a mix, and the new one as soon as the ingest has returned."""
    assert ingest(clips["ntsc.mp4"], tmp_path).returncode == 0
    title_dir = tmp_path / "titles" / "t"
    old = (title_dir / "files.json").read_bytes()
    server = start(["origin", "serve", "--store", str(tmp_path), "--listen", "127.0.0.1:0"],
                   ("listening",))  # fmt: skip
    seen: list[tuple[int, bytes]] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for _ in range(20_000):  # bounded; the ingest takes a few seconds
                if done.is_set():
                    return
                reply = client.get("/titles/t/files.json")
                seen.append((reply.status_code, reply.content))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        replaced = ingest(clips["odd.mp4"], tmp_path, "--replace")
        new = (title_dir / "files.json").read_bytes()
        time.sleep(0.3)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/titles/t/files.json").content == new
            listed = client.get("/titles").json()["titles"]
    finally:
        done.set()
        poller.join(30)
        assert server.stop() == 0
    assert replaced.returncode == 0, replaced.stderr
    assert seen and {status for status, _ in seen} == {200}
    assert {body for _, body in seen} <= {old, new}
    assert [t["digest"] for t in listed] == [titlefiles.digest_bytes(new)]


def combed_frames(data: bytes, tmp: Path) -> int:
    """Frames ffmpeg's interlace detector calls interlaced (combing) in an MP4."""
    path = tmp / "probe.mp4"
    path.write_bytes(data)
    proc = subprocess.run([find_ffmpeg(), "-hide_banner", "-nostats", "-i", str(path), "-vf",
                           "idet", "-f", "null", "-"], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    # The last report: ffmpeg may configure (and report) the filter more than once.
    line = [ln for ln in proc.stderr.splitlines() if "Multi frame detection" in ln][-1]
    counts = dict(re.findall(r"(TFF|BFF|Progressive):\s*(\d+)", line))
    return int(counts["TFF"]) + int(counts["BFF"])


def test_interlaced_source_is_deinterlaced(clips: dict[str, Path], tmp_path: Path) -> None:
    """Fields woven into one frame show as combs on every moving edge once scaled and played
    progressively: the renditions must come out progressive, frame for frame."""
    woven = clips["interlaced.mp4"].read_bytes()
    assert combed_frames(woven, tmp_path) > 40  # the detector sees the source for what it is
    assert ingest(clips["interlaced.mp4"], tmp_path).returncode == 0
    title_dir = check_title(tmp_path, 50, Fraction(25))["dir"]
    folder = title_dir / "h264_180p"
    playlist = m3u8.load(str(media_playlist(folder)))
    data = (folder / playlist.segment_map[0].uri).read_bytes() + b"".join(
        (folder / s.uri).read_bytes() for s in playlist.segments
    )
    assert combed_frames(data, tmp_path) <= 2


def test_names_ffmpeg_would_misread(clips: dict[str, Path], tmp_path: Path) -> None:
    """A colon in a file name ("take2:final.mp4") is a protocol prefix to ffmpeg: here it is
    just a name. A '%d' in the store's path is a segment number to ffmpeg's hls muxer (with
    no escape): a clear refusal before encoding, not 'ffmpeg wrote no media segments'."""
    src = tmp_path / "in" / "take2:final.mp4"
    src.parent.mkdir()
    src.write_bytes(clips["one_frame.mp4"].read_bytes())
    for store, ok in ((tmp_path / "store", True), (tmp_path / "store 100%d", False)):
        proc = subprocess.run(
            [sys.executable, "-m", "edgeflix.cli", "origin", "ingest", src.name, "--id", "t",
             "--title", "T", "--store", str(store), "--segment-seconds", "1"],
            cwd=src.parent, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if ok:
            assert proc.returncode == 0, proc.stderr
            check_title(store, 1, Fraction(25))
        else:
            assert_one_line_error(proc, "%d")
            assert not store.exists()


def test_segments_no_whole_gop_can_fill_are_refused_up_front(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    proc = run_cli(["origin", "ingest", str(clips["slides.mp4"]), "--id", "t", "--title", "T",
                    "--store", str(tmp_path), "--segment-seconds", "4"])  # fmt: skip
    assert_one_line_error(proc, "0.333 fps", "--segment-seconds 3")
    assert not (tmp_path / "titles" / "t").exists()
    assert ingest(clips["slides.mp4"], tmp_path, "--segment-seconds", "3").returncode == 0


@pytest.mark.parametrize("name", ["audio_longer.mp4", "audio_longer.mkv", "audio_longer.webm"])
def test_audio_longer_than_the_video_ends_with_it(
    clips: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """The title is as long as its picture, in HLS as in DASH: audio running on past the
    last frame would make HLS players (which play to the longest playlist) show a frozen
    frame for 1.5 s that DASH players (mediaPresentationDuration) never play. Matroska
    gives only the container a length (the sound's): the picture's is its own, not one
    that would count 88 frames in a file of 50 and refuse it as truncated."""
    proc = ingest(clips[name], tmp_path)
    assert proc.returncode == 0, proc.stderr
    title = check_title(tmp_path, 50, Fraction(25))
    video = m3u8.load(str(media_playlist(title["dir"] / "h264_180p")))
    audio = m3u8.load(str(media_playlist(title["dir"] / "audio")))
    seconds = sum(s.duration for s in audio.segments)
    assert seconds == pytest.approx(sum(s.duration for s in video.segments), abs=0.05)
    assert title["model"].duration == pytest.approx(2.0, abs=0.05)


def test_one_picture_and_longer_sound_in_matroska(clips: dict[str, Path], tmp_path: Path) -> None:
    """One frame and 2 s of sound publishes as the 0.04 s title it is (as from MP4), its
    poster that frame, not one picked 0.2 s in, past the only frame there is."""
    proc = ingest(clips["still.mkv"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    title = check_title(tmp_path, 1, Fraction(25))
    assert title["model"].duration == pytest.approx(0.04, abs=0.01)
    assert (title["dir"] / "poster.jpg").stat().st_size > 0
    audio = m3u8.load(str(media_playlist(title["dir"] / "audio")))
    assert sum(s.duration for s in audio.segments) < 0.1  # cut to the picture's length


def first_times(title_dir: Path) -> dict[str, dict[str, float]]:
    """When the first picture and the first sound play, in seconds, for each kind of
    player: on the segments' own timeline (tfdt + trun: hls.js and MSE, which ignore edit
    lists); through FFmpeg's mov demuxer on init + every segment joined (edit lists
    honoured; ffplay, mpv, VLC); and through FFmpeg's HLS demuxer on master.m3u8."""
    times: dict[str, dict[str, float]] = {"segments": {}, "joined": {}, "hls": {}}
    for rendition, kind in (("h264_180p", "video"), ("audio", "audio")):
        media = measure(title_dir / rendition)
        times["segments"][kind] = media.segments[0].start / media.timescale
        playlist = m3u8.load(str(media_playlist(title_dir / rendition)))
        data = (title_dir / rendition / playlist.segment_map[0].uri).read_bytes() + b"".join(
            (title_dir / rendition / s.uri).read_bytes() for s in playlist.segments
        )
        with av.open(io.BytesIO(data)) as c:
            times["joined"][kind] = float(next(c.decode(c.streams[0])).time)
    with av.open(str(title_dir / "master.m3u8")) as c:
        for packet in c.demux():  # interleaved: both kinds within the first second
            if packet.pts is not None and packet.stream.type not in times["hls"]:
                times["hls"][packet.stream.type] = float(packet.pts * packet.time_base)
            if len(times["hls"]) == 2:
                break
    return times


def test_picture_and_sound_start_together_for_every_player(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    """The source's first frame and first sound play together (within a frame) whichever
    way a player places samples. B-frames put the first picture two frames (80 ms at
    25 fps) after the first decode time: an edit list hiding that is ignored by MSE
    players, and negative composition offsets are shown late by FFmpeg's demuxer (by the
    largest it has read), so with either, one kind of player or the other got the
    picture 80-160 ms after the sound."""
    assert ingest(clips["my clip ü 映画.mov"], tmp_path).returncode == 0
    title_dir = check_title(tmp_path, 50, Fraction(25))["dir"]
    times = first_times(title_dir)
    for player, first in times.items():
        assert first["video"] == pytest.approx(first["audio"], abs=0.04), (player, times)
        assert 0 <= first["video"] <= 0.2, (player, times)  # the title starts at once


@pytest.mark.parametrize("title", ["", "  ", "Part 1\nPart 2", "tab\there"])
def test_title_is_one_printable_line(clips: dict[str, Path], tmp_path: Path, title: str) -> None:
    """A newline or tab in a title splits its row in `origin ls` (tab-separated in a pipe)."""
    proc = run_cli(["origin", "ingest", str(clips["one_frame.mp4"]), "--id", "t", "--title",
                    title, "--store", str(tmp_path)])  # fmt: skip
    assert_one_line_error(proc, "--title")
    assert not (tmp_path / "titles" / "t").exists()


def test_store_on_a_read_only_mount(clips: dict[str, Path], tmp_path: Path) -> None:
    """A read-only filesystem stops root too (permission bits do not): a tmpfs mounted ro
    in a user namespace, holding a published title, then a fresh one."""
    skip_without_mount_namespaces()
    store = tmp_path / "ro"
    store.mkdir()
    cli = [sys.executable, "-m", "edgeflix.cli", "origin", "ingest",
           shlex.quote(str(clips["one_frame.mp4"])), "--id", "t", "--title", "T",
           "--store", str(store), "--segment-seconds", "1"]  # fmt: skip
    once, replace = " ".join(cli), " ".join([*cli, "--replace"])
    script = (
        f"mount -t tmpfs -o size=4m tmpfs {store} || exit 99; {once} >/dev/null 2>&1 || exit 98;"
        f" mount -o remount,ro {store} || exit 97; {replace}; echo rc=$? >&2;"
        f" ls -A {store} {store}/titles >&2; umount {store};"
        f" mount -t tmpfs -o ro tmpfs {store}; {once}; echo rc=$? >&2"
    )
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert "rc=9" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and all("not writable" in e for e in errors), proc.stderr
    assert proc.stderr.count("rc=1") == 2 and "Traceback" not in proc.stderr
    assert ".tmp-" not in proc.stderr  # nothing half-made beside the old title
    assert f"{store}/titles:\nt\n" in proc.stderr  # which is still there


def test_trimmed_by_an_edit_list(clips: dict[str, Path], tmp_path: Path) -> None:
    """A cut without re-encoding (`ffmpeg -ss 1.2 -c copy`, a phone's Trim) keeps the GOP
    before the cut and hides it with an edit list: 100 frames in the track, 70 shown."""
    trimmed = tmp_path / "trimmed.mp4"
    subprocess.run([find_ffmpeg(), "-loglevel", "error", "-ss", "1.2", "-i",
                    str(clips["whole.mp4"]), "-c", "copy", str(trimmed)],
                   check=True, timeout=60)  # fmt: skip
    proc = ingest(trimmed, tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    check_title(tmp_path / "s", 45, Fraction(25))


def luma(frames: list[Any]) -> tuple[int, int]:
    """The 5th and 99th percentile of luma over `frames`: where blacks and whites sit."""
    values = []
    for frame in frames:
        gray = frame.reformat(format="gray")
        plane = gray.planes[0]
        data = bytes(plane)
        for row in range(gray.height):
            values.extend(data[row * plane.line_size : row * plane.line_size + gray.width])
    values.sort()
    return values[len(values) * 5 // 100], values[len(values) * 99 // 100]


@pytest.mark.parametrize("name", ["hdr_pq.mp4", "hdr_hlg.mkv"])
def test_hdr_is_tone_mapped_to_sdr(clips: dict[str, Path], tmp_path: Path, name: str) -> None:
    """Every rendition is SDR BT.709 with blacks and whites where the SDR picture has them;
    left as HDR code values in 8 bits they would sit grey (PQ: whites at 138 of 235; HLG:
    blacks at 90)."""
    store = tmp_path / "store"
    assert ingest(clips[name], store).returncode == 0
    title = check_title(store, 50, Fraction(25))
    with av.open(str(clips["sdr_ref.mp4"])) as c:
        black, white = luma(list(c.decode(video=0)))
    for rendition in title["sizes"]:
        frames, _, _ = decode_rendition(title["dir"] / rendition)
        low, high = luma(frames)
        assert abs(low - black) <= 12 and abs(high - white) <= 30, (rendition, low, high)
        init = m3u8.load(str(media_playlist(title["dir"] / rendition))).segment_map[0].uri
        with av.open(str(title["dir"] / rendition / init)) as c:
            ctx = c.streams.video[0].codec_context
            assert (ctx.color_primaries, ctx.color_trc, ctx.colorspace) == (1, 1, 1)  # BT.709

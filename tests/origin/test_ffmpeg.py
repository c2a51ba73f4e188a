from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from origin.errors import SourceError
from origin.ffmpeg import (
    AUDIO_SYNC,
    DEINTERLACE,
    EncodeSettings,
    Poster,
    audio_codec_args,
    encode_args,
    filter_graph,
    parse_progress,
    poster_frame,
    poster_time,
    trial_args,
    video_codec_args,
    vmaf_args,
)
from origin.ingest import check_segments
from origin.ladder import Rung

RUNGS = [Rung("h264", 1280, 720, 2800), Rung("h264", 640, 360, 800)]


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_gop_is_one_segment_of_frames() -> None:
    assert EncodeSettings(Fraction(25), 4).gop == 100
    ntsc = EncodeSettings(Fraction(30000, 1001), 2)
    assert ntsc.gop == 60 and ntsc.hls_time == pytest.approx(60 * 1001 / 30000)


@pytest.mark.parametrize(
    ("codec", "params_flag", "no_scenecut"),
    [("h264", "-x264-params", "scenecut=0"), ("hevc", "-x265-params", "scenecut=0"),
     ("av1", "-svtav1-params", "scd=0")],
)  # fmt: skip
def test_every_encoder_gets_fixed_gop_and_no_scene_cuts(
    codec: str, params_flag: str, no_scenecut: str
) -> None:
    args = video_codec_args(Rung(codec, 640, 360, 800), EncodeSettings(Fraction(25), 2))
    assert _value(args, "-g") == "50" and _value(args, "-keyint_min") == "50"
    assert _value(args, "-sc_threshold") == "0"
    assert _value(args, "-force_key_frames") == "expr:eq(mod(n,50),0)"
    assert no_scenecut in _value(args, params_flag) and "keyint=50" in _value(args, params_flag)
    assert _value(args, "-b:v") == "800k"
    assert codec == "av1" or _value(args, "-maxrate") == "1200k"


WITH_AUDIO = EncodeSettings(Fraction(25), 2, audio_stream=1)


def test_one_process_one_output_per_rendition(tmp_path: Path) -> None:
    args = encode_args("ffmpeg", Path("in.mp4"), RUNGS, WITH_AUDIO, tmp_path)
    assert args.count("-i") == 1 and args.count("hls") == 3  # two renditions + audio
    graph = _value(args, "-filter_complex")
    assert graph.startswith(f"[0:0]{DEINTERLACE},fps=25,split=2[s0][s1]")
    segs = [args[i + 1] for i, a in enumerate(args) if a == "-hls_segment_filename"]
    assert segs == [str(tmp_path / d / "seg_%05d.m4s") for d in ("h264_720p", "h264_360p", "audio")]
    assert all(args[i + 1] == "fmp4" for i, a in enumerate(args) if a == "-hls_segment_type")
    audio = args[args.index("0:1") :]
    assert _value(audio, "-c:a") == "aac" and _value(audio, "-ac") == "2"


def test_no_audio_output_without_audio(tmp_path: Path) -> None:
    args = encode_args(
        "ffmpeg", Path("in.mp4"), RUNGS[:1], EncodeSettings(Fraction(25), 2), tmp_path
    )
    assert "-c:a" not in args and args.count("hls") == 1


def test_the_probe_s_streams_are_mapped_not_ffmpeg_s_first() -> None:
    """A source's title is the streams the probe chose (a default-flagged second audio, a
    video after a one-frame thumbnail), by index: ffmpeg's `0:a:0`/`0:V:0` take the first."""
    settings = EncodeSettings(Fraction(25), 2, video_stream=1, audio_stream=3)
    args = encode_args("ffmpeg", Path("in.mkv"), RUNGS, settings, Path("out"))
    assert _value(args, "-filter_complex").startswith(f"[0:1]{DEINTERLACE},")
    maps = [args[i + 1] for i, a in enumerate(args) if a == "-map"]
    assert maps == ["[v0]", "[v1]", "0:3"]
    trials = trial_args("ffmpeg", Path("in.mkv"), 0.0, 2.0, [(RUNGS[0], Path("t.mp4"))], settings)
    assert _value(trials, "-filter_complex").startswith("[0:1]")
    vmaf = vmaf_args("ffmpeg", Path("in.mkv"), 0.0, 2.0, [(Path("t.mp4"), Path("t.json"))],
                     1280, 720, Fraction(25), video_stream=1)  # fmt: skip
    assert _value(vmaf, "-filter_complex").startswith(f"[1:1]{DEINTERLACE},")


def test_audio_lasts_exactly_the_picture_s_length(tmp_path: Path) -> None:
    """Padded with silence where it ends early (after the sync that fills a late start),
    cut where it runs on."""
    args = encode_args("ffmpeg", Path("in.mp4"), RUNGS, WITH_AUDIO, tmp_path, seconds=2.5)
    audio = args[args.index("0:1") :]
    assert _value(audio, "-af") == f"{AUDIO_SYNC},apad=whole_dur=2.500000"
    assert _value(audio, "-t") == "2.500000"
    assert "apad" not in "".join(audio_codec_args(WITH_AUDIO))  # no length: never endless


def test_filter_graph_scales_each_rung() -> None:
    graph = filter_graph(RUNGS, EncodeSettings(Fraction(30000, 1001), 2))
    assert "fps=30000/1001" in graph and "[s1]scale=640:360" in graph and graph.endswith("[v1]")


def test_vmaf_graph_escapes_log_paths() -> None:
    args = vmaf_args(
        "ffmpeg",
        Path("ref.mp4"),
        1.0,
        2.0,
        [(Path("a.mp4"), Path("/t/a:b.json"))],
        1280,
        720,
        Fraction(25),
        video_stream=0,
    )
    graph = _value(args, "-filter_complex")
    assert "log_path=/t/a\\\\:b.json" in graph and "model=version=vmaf_v0.6.1" in graph


def test_hdr_is_tone_mapped_once_before_every_branch_and_the_vmaf_reference(
    tmp_path: Path,
) -> None:
    """One tone map per decode (before the split), and VMAF compares the renditions with the
    same SDR picture they were made from."""
    settings = EncodeSettings(Fraction(25), 2, hdr_transfer="arib-std-b67")
    poster = Poster(frame=3, width=640, path=tmp_path / "poster.jpg")
    graph = _value(
        encode_args("ffmpeg", Path("in.mp4"), RUNGS, settings, tmp_path, poster),
        "-filter_complex",
    )
    head, _, branches = graph.partition(",split=3")
    assert head.startswith(f"[0:0]{DEINTERLACE},fps=25,setparams=")
    assert "color_trc=arib-std-b67" in head and "tonemap=tonemap=mobius" in head
    assert head.endswith("zscale=t=bt709:m=bt709:r=tv,format=yuv420p")
    assert "tonemap" not in branches and graph.count("tonemap=tonemap") == 1
    assert "tonemap" not in filter_graph(RUNGS, EncodeSettings(Fraction(25), 2))  # SDR
    vmaf = vmaf_args("ffmpeg", Path("ref.mp4"), 0.0, 2.0, [(Path("a.mp4"), Path("a.json"))],
                     1280, 720, Fraction(25), hdr_transfer="smpte2084", video_stream=0)  # fmt: skip
    reference = _value(vmaf, "-filter_complex").split(";")[0]
    assert reference.startswith("[1:0]") and "color_trc=smpte2084" in reference
    assert "tonemap=tonemap=mobius" in reference


def test_progress_takes_the_last_out_time() -> None:
    block = ["frame=10", "out_time_us=1500000", "out_time_us=2500000", "progress=continue"]
    assert parse_progress(block) == 2.5
    assert parse_progress(["out_time_us=N/A", "progress=continue"]) is None
    assert parse_progress(["out_time_us=-5"]) == 0.0


def test_poster_time_is_early_but_not_the_first_frame() -> None:
    assert poster_time(5.3) == pytest.approx(0.53)
    assert poster_time(7200) == 30.0


def test_poster_is_one_more_branch_of_the_same_decode(tmp_path: Path) -> None:
    poster = Poster(frame=13, width=1280, path=tmp_path / "poster.jpg")
    args = encode_args("ffmpeg", Path("in.mp4"), RUNGS, WITH_AUDIO, tmp_path, poster)
    graph = _value(args, "-filter_complex")
    assert args.count("-i") == 1 and graph.startswith(
        f"[0:0]{DEINTERLACE},fps=25,split=3[s0][s1][s2]"
    )
    assert "[s2]trim=start_frame=13:end_frame=14,scale='min(1280,iw)':-2[poster]" in graph
    tail = args[args.index("[poster]") :]
    assert _value(tail, "-frames:v") == "1" and tail[-1] == str(tmp_path / "poster.jpg")


def test_poster_frame_stays_inside_the_title() -> None:
    assert poster_frame(5.3, Fraction(25), 132) == 13
    assert poster_frame(7200, Fraction(25), 180000) == 750
    assert poster_frame(0.04, Fraction(25), 1) == 0
    assert poster_frame(10, Fraction(25), 20) == 19  # container said fewer frames than rate x time


@pytest.mark.parametrize(
    ("rate", "seconds", "ok"),
    [
        (Fraction(30000, 1001), 4.0, True),
        (Fraction(24000, 1001), 0.5, True),
        (Fraction(15), 0.5, True),  # 8 frames: 0.533 s, within 10%
        (Fraction(5), 0.5, False),  # 2 frames: 0.4 s
        (Fraction(1, 3), 4.0, False),  # 1 frame: 3 s
        (Fraction(1, 3), 3.0, True),
    ],
)
def test_check_segments(rate: Fraction, seconds: float, ok: bool) -> None:
    settings = EncodeSettings(frame_rate=rate, segment_seconds=seconds)
    if ok:
        check_segments(settings, seconds)
    else:
        with pytest.raises(SourceError, match="--segment-seconds"):
            check_segments(settings, seconds)

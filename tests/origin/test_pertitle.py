"""The per-title shell's pure parts: the trial window, sorting measured trials, and the
encoder options of trial and per-title rungs (capped CRF, same fixed GOP as the fixed ladder)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from origin.ffmpeg import CRF_CAP, EncodeSettings, trial_args, video_codec_args
from origin.ladder import Rung, default_ladder, trial_rungs
from origin.pertitle import MIN_SCORED_FRAMES, excerpt, score_size, split_trials, trial_subsample
from origin.probe import Source

SETTINGS = EncodeSettings(Fraction(25), 4)


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_excerpt_is_the_middle_or_the_whole_short_title() -> None:
    assert excerpt(5.28, 6.0) == (0.0, 5.28)
    assert excerpt(10.0, 6.0) == (0.0, 10.0)  # under twice the window: all of it
    assert excerpt(100.0, 6.0) == (47.0, 6.0)


def test_vmaf_is_scored_at_the_source_size_up_to_1080p() -> None:
    def src(w: int, h: int) -> Source:
        return Source(Path("x"), 0, w, h, Fraction(25), 1.0, 25, "h264", None)

    assert score_size(src(1280, 720)) == (1280, 720)
    assert score_size(src(640, 272)) == (640, 272)
    assert score_size(src(3840, 2160)) == (1920, 1080)


def test_per_title_rung_is_capped_crf_with_the_same_gop() -> None:
    fixed = video_codec_args(Rung("h264", 854, 480, 1400), SETTINGS)
    auto = video_codec_args(Rung("h264", 854, 480, 700, crf=21.25), SETTINGS)
    assert "-crf" not in fixed and "-b:v" not in auto
    assert _value(auto, "-crf") == "21.25"
    assert _value(auto, "-maxrate") == f"{round(700 * CRF_CAP)}k"
    assert _value(auto, "-bufsize") == f"{round(700 * CRF_CAP) * 2}k"
    for flag in ("-g", "-keyint_min", "-sc_threshold", "-force_key_frames", "-x264-params"):
        assert _value(auto, flag) == _value(fixed, flag)


def test_trial_crf_encodes_run_uncapped() -> None:
    args = video_codec_args(Rung("h264", 640, 360, 0, crf=28.0), SETTINGS)
    assert _value(args, "-crf") == "28" and "-maxrate" not in args and "-b:v" not in args


def test_trial_encodes_one_decode_one_output_each(tmp_path: Path) -> None:
    trials = [(r, tmp_path / f"t{i}.mp4") for i, r in enumerate(trial_rungs(
        default_ladder(1280, 720, ["h264"])))]  # fmt: skip
    args = trial_args("ffmpeg", Path("in.mp4"), 10.0, 6.0, trials, SETTINGS)
    assert args.count("-i") == 1 and _value(args, "-ss") == "10.000"
    assert args.count("-crf") == 4 * 3 and args.count("-b:v") == 4
    assert sum(a.endswith(".mp4") for a in args) == len(trials) + 1


def test_split_trials_separates_reference_from_crf_points() -> None:
    rungs = default_ladder(1280, 720, ["h264"], only=[720, 360])
    trials = trial_rungs(rungs)
    kbps = [float(100 + i) for i in range(len(trials))]
    vmaf = [float(50 + i) for i in range(len(trials))]
    reference, points = split_trials(trials, kbps, vmaf)
    assert set(reference) == {"h264_720p", "h264_360p"}
    assert reference["h264_720p"].kbps == 100 and reference["h264_360p"].vmaf == 51
    assert len(points) == len(trials) - 2
    assert {(p.height, p.crf) for p in points} == {
        (t.height, t.crf) for t in trials if t.crf is not None
    }
    with pytest.raises(ValueError):
        split_trials(trials, kbps[:-1], vmaf)


def test_trial_vmaf_stride_is_an_odd_prime_that_keeps_enough_frames() -> None:
    assert trial_subsample(132) == 7  # bunny, 5.3 s at 25 fps: 18 frames scored
    assert trial_subsample(100) == 5 and trial_subsample(60) == 3 and trial_subsample(40) == 1
    for frames in range(1, 400):
        n = trial_subsample(frames)
        assert n == 1 or (n % 2 == 1 and frames // n >= MIN_SCORED_FRAMES)

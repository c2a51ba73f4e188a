"""Per-title ladder (`--ladder auto`, I/O shell): trial-encode an excerpt of the source — the
fixed ladder's rungs as they are, and every ladder size at three CRFs — score each with VMAF
(on a stride of frames) against the source at its display size (libvmaf in the ffmpeg
binary), and let the pure `origin.ladder.auto_ladder` pick each rung on the rate-quality hull
across sizes: as many rungs as the fixed ladder, its mean VMAF kept at fewer bits, the lowest
rung never dearer than the fixed one (the policy is stated in origin/ladder.py).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from edgeflix.log import event
from origin.errors import EncodeError
from origin.ffmpeg import EncodeSettings, trial_args, vmaf_args
from origin.ladder import MEAN_MARGIN, MEAN_MARGIN_WHOLE_TITLE, Rung, auto_ladder, trial_rungs
from origin.ladder_hull import RatePoint, TrialPoint
from origin.probe import Source
from origin.runner import ProgressCallback, run_ffmpeg

log = logging.getLogger("origin.pertitle")
# VMAF is computed at the source's size, but never above 1080p (the model's design point).
MAX_SCORE_HEIGHT = 1080
# Trials score every n-th frame (libvmaf's n_subsample), the largest of these strides that
# still scores MIN_SCORED_FRAMES: 20 bunny trials took 134 CPU-s to score on every frame, 58
# on every 3rd, 32 on every 7th (decoding and scaling still see every frame). Odd primes, so
# the scored frames are less likely to lock onto a period of the encoder (mini-GOPs of 2-4-8
# frames) or of the GOP: every 6th frame read bunny's ladder 0.7 VMAF high, enough to misplace
# rungs; every 7th kept its mean within 0.1 of scoring every frame, on both clips.
TRIAL_STRIDES = (7, 5, 3)
MIN_SCORED_FRAMES = 18


def excerpt(duration: float, seconds: float) -> tuple[float, float]:
    """(start, length) of the trial window: the middle of the title, past openings — or the
    whole title when it is under twice the window (a part of a short title predicts it badly,
    and the whole costs little more)."""
    if duration <= 2 * seconds:
        return 0.0, duration
    return (duration - seconds) / 2, seconds


def score_size(source: Source) -> tuple[int, int]:
    height = min(source.height, MAX_SCORE_HEIGHT)
    width = round(source.width * height / source.height / 2) * 2
    return width, height


def trial_subsample(frames: int) -> int:
    """The VMAF stride for a trial window of `frames` frames (see TRIAL_STRIDES)."""
    return next((n for n in TRIAL_STRIDES if frames // n >= MIN_SCORED_FRAMES), 1)


def score(
    ffmpeg: str,
    source: Source,
    start: float,
    length: float,
    distorted: Sequence[Path],
    work: Path,
    subsample: int = 1,
    on_progress: ProgressCallback | None = None,
) -> list[float]:
    """Mean VMAF of each distorted file against the source window [start, start+length)."""
    width, height = score_size(source)
    logs = [work / f"vmaf-{i}.json" for i in range(len(distorted))]
    args = vmaf_args(
        ffmpeg,
        source.path,
        start,
        length,
        list(zip(distorted, logs, strict=True)),
        width,
        height,
        source.frame_rate,
        subsample=subsample,
        hdr_transfer=source.hdr_transfer,
        video_stream=source.video_stream,
    )
    run_ffmpeg(args, "measuring VMAF", on_progress)
    scores = []
    for log in logs:
        try:
            scores.append(float(json.loads(log.read_text())["pooled_metrics"]["vmaf"]["mean"]))
        except (OSError, ValueError, KeyError) as exc:
            raise EncodeError(f"VMAF log {log.name} unreadable: {exc}") from None
    return scores


def choose(
    ffmpeg: str,
    source: Source,
    rungs: Sequence[Rung],
    settings: EncodeSettings,
    work: Path,
    trial_seconds: float,
    on_progress: ProgressCallback | None = None,
) -> tuple[Rung, ...]:
    """The per-title ladder replacing `rungs` (the fixed ladder), from trials run in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    start, length = excerpt(source.duration, trial_seconds)
    trials = [(rung, work / f"trial-{i}.mp4") for i, rung in enumerate(trial_rungs(rungs))]

    def encode_progress(seconds: float) -> None:
        if on_progress:
            on_progress(seconds / length / 3)

    def vmaf_progress(seconds: float) -> None:
        if on_progress:
            on_progress(1 / 3 + seconds / length * 2 / 3)

    try:
        run_ffmpeg(
            trial_args(ffmpeg, source.path, start, length, trials, settings),
            "trial-encoding for --ladder auto",
            encode_progress,
        )
        paths = [p for _, p in trials]
        stride = trial_subsample(int(length * source.frame_rate))
        scores = score(ffmpeg, source, start, length, paths, work, stride, vmaf_progress)
        kbps = [p.stat().st_size * 8 / length / 1000 for p in paths]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for (rung, _), rate, quality in zip(trials, kbps, scores, strict=True):
        event(log, "ladder.trial", logging.DEBUG, rung=rung.id, crf=rung.crf,
              kbps=round(rate), vmaf=round(quality, 2))  # fmt: skip
    reference, points = split_trials([r for r, _ in trials], kbps, scores)
    whole = start == 0.0 and length >= source.duration
    return auto_ladder(
        rungs, reference, points, margin=MEAN_MARGIN_WHOLE_TITLE if whole else MEAN_MARGIN
    )


def split_trials(
    trials: Sequence[Rung], kbps: Sequence[float], vmaf: Sequence[float]
) -> tuple[dict[str, TrialPoint], list[RatePoint]]:
    """Measured trials into the fixed rungs' results (by id) and the CRF points of each size."""
    reference: dict[str, TrialPoint] = {}
    points: list[RatePoint] = []
    for rung, rate, quality in zip(trials, kbps, vmaf, strict=True):
        if rung.crf is None:
            reference[rung.id] = TrialPoint(rate, quality)
        else:
            points.append(RatePoint(rung.codec, rung.width, rung.height, rung.crf, rate, quality))
    return reference, points

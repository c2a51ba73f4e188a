"""Per-title ladder (`--ladder auto`, I/O shell): trial-encode an excerpt of the source at a
few bitrates per rung, score each with VMAF (libvmaf in the ffmpeg binary), and let the pure
`origin.ladder.auto_ladder` pick each rung's bitrate on its convex hull.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from origin.errors import EncodeError
from origin.ffmpeg import EncodeSettings, trial_args, vmaf_args
from origin.ladder import Rung, TrialPoint, auto_ladder, trial_kbps
from origin.probe import Source
from origin.runner import ProgressCallback, run_ffmpeg

# VMAF is computed at the source's size, but never above 1080p (the model's design point).
MAX_SCORE_HEIGHT = 1080


def excerpt(duration: float, seconds: float) -> tuple[float, float]:
    """(start, length) of the trial window: the middle of the title, past openings."""
    length = min(seconds, duration)
    return max(0.0, (duration - length) / 2), length


def score_size(source: Source) -> tuple[int, int]:
    height = min(source.height, MAX_SCORE_HEIGHT)
    width = round(source.width * height / source.height / 2) * 2
    return width, height


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
    """The per-title ladder for `rungs` (default-priced), from trials run inside `work`."""
    work.mkdir(parents=True, exist_ok=True)
    start, length = excerpt(source.duration, trial_seconds)
    trials = [
        (replace(rung, kbps=kbps), work / f"{rung.id}-{kbps}.mp4")
        for rung in rungs
        for kbps in trial_kbps(rung)
    ]

    def encode_progress(seconds: float) -> None:
        if on_progress:
            on_progress(seconds / length / 2)

    def vmaf_progress(seconds: float) -> None:
        if on_progress:
            on_progress(0.5 + seconds / length / 2)

    try:
        run_ffmpeg(
            trial_args(ffmpeg, source.path, start, length, trials, settings),
            "trial-encoding for --ladder auto",
            encode_progress,
        )
        scores = score(
            ffmpeg, source, start, length, [p for _, p in trials], work, 2, vmaf_progress
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    points: dict[str, list[TrialPoint]] = {}
    for (rung, _), vmaf in zip(trials, scores, strict=True):
        points.setdefault(rung.id, []).append(TrialPoint(rung.kbps, vmaf))
    return auto_ladder(rungs, points)

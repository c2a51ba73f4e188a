"""The rate-quality hull: dominated and noisy trials dropped, each size's curve filled in
between trials (checked against real encodes between real trials), the envelope across sizes.
The ladder-level behaviour on a synthetic rate-quality model is in test_ladder.py."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from origin.ladder_hull import (
    RatePoint,
    TrialPoint,
    _hermite,
    pchip_slopes,
    resolution_curve,
    upper_hull,
    vmaf_at,
)


def test_hull_drops_dominated_and_non_concave_points() -> None:
    points = [TrialPoint(100, 50), TrialPoint(200, 60), TrialPoint(400, 90), TrialPoint(800, 88)]
    hull = upper_hull(points)
    # (200, 60) lies under the chord from 100 to 400; 800 buys nothing over 400.
    assert [(p.kbps, p.vmaf) for p in hull] == [(100, 50), (400, 90)]


def test_interpolation_is_log_linear() -> None:
    hull = [TrialPoint(100, 50), TrialPoint(400, 90)]
    assert vmaf_at(hull, 200) == pytest.approx(70)
    assert vmaf_at(hull, 50) == 50 and vmaf_at(hull, 1000) == 90


# Measured (bikes.mp4, 272p, x264 veryfast, VMAF every 3rd frame): (CRF, kbit/s, VMAF).
BIKES_272P_TRIALS = [(18.0, 592.1, 97.68), (23.0, 347.7, 93.67), (28.0, 201.0, 84.43)]
BIKES_272P_ENCODES = [(19.0, 531.5, 97.14), (20.0, 476.8, 96.52), (20.5, 451.9, 96.17),
                      (21.0, 428.9, 95.75), (22.0, 387.3, 94.76), (25.0, 279.4, 90.61)]  # fmt: skip


def test_curve_through_real_trials_predicts_real_encodes_in_between() -> None:
    trials = [RatePoint("h264", 640, 272, c, k, v) for c, k, v in BIKES_272P_TRIALS]
    curve = {p.crf: p for p in resolution_curve(trials)}
    for crf, kbps, vmaf in BIKES_272P_ENCODES:
        assert curve[crf].kbps == pytest.approx(kbps, rel=0.015)
        assert curve[crf].vmaf == pytest.approx(vmaf, abs=0.15)


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=2, max_size=6))
def test_pchip_never_overshoots_its_points(ys: list[float]) -> None:
    xs = [float(5 * k) for k in range(len(ys))]
    pts = [RatePoint("h264", 2, 2, x, 100.0, y) for x, y in zip(xs, ys, strict=True)]
    slopes = pchip_slopes(xs, ys)
    for k, (lo, hi) in enumerate(itertools.pairwise(pts)):
        for t in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
            v = _hermite(lo, hi, slopes[k], slopes[k + 1], t)
            assert min(lo.vmaf, hi.vmaf) - 1e-9 <= v <= max(lo.vmaf, hi.vmaf) + 1e-9

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from origin.ladder import (
    DEFAULT_LADDER,
    TrialPoint,
    auto_ladder,
    default_ladder,
    kbps_for,
    ladder_heights,
    upper_hull,
    vmaf_at,
)


def test_720p_source_gets_no_1080_rung() -> None:
    rungs = default_ladder(1280, 720, ["h264"])
    assert [r.height for r in rungs] == [720, 480, 360, 240]
    assert [r.kbps for r in rungs] == sorted((r.kbps for r in rungs), reverse=True)
    assert all(r.width % 2 == 0 and r.height % 2 == 0 for r in rungs)


@given(st.integers(min_value=16, max_value=4320), st.integers(min_value=16, max_value=7680))
def test_never_upscale(height: int, width: int) -> None:
    for rung in default_ladder(width, height, ["h264"]):
        assert rung.height <= height
        assert rung.width <= width + 2  # even rounding only


def test_tall_source_between_rungs_gets_a_native_rung() -> None:
    assert ladder_heights(272) == [272, 240]
    assert ladder_heights(250) == [240]  # within 10% of a rung: that rung is enough
    assert ladder_heights(144) == [144]  # smaller than every rung: the source size
    assert ladder_heights(2160)[:2] == [2160, 1080]


def test_only_heights_filters_but_never_adds() -> None:
    assert ladder_heights(720, [1080, 360, 240]) == [360, 240]


def test_codecs_multiply_and_cheaper_codecs_get_fewer_bits() -> None:
    rungs = default_ladder(1920, 1080, ["h264", "hevc", "av1"])
    assert len(rungs) == 3 * len(DEFAULT_LADDER)
    by_id = {r.id: r for r in rungs}
    assert by_id["hevc_1080p"].kbps < by_id["h264_1080p"].kbps
    assert by_id["av1_1080p"].kbps < by_id["hevc_1080p"].kbps
    with pytest.raises(ValueError):
        default_ladder(1920, 1080, ["vp8"])


def test_hull_drops_dominated_and_non_concave_points() -> None:
    points = [TrialPoint(100, 50), TrialPoint(200, 60), TrialPoint(400, 90), TrialPoint(800, 88)]
    hull = upper_hull(points)
    # (200, 60) lies under the chord from 100 to 400; 800 buys nothing over 400.
    assert [(p.kbps, p.vmaf) for p in hull] == [(100, 50), (400, 90)]


def test_interpolation_is_log_linear() -> None:
    hull = [TrialPoint(100, 50), TrialPoint(400, 90)]
    assert vmaf_at(hull, 200) == pytest.approx(70)
    assert vmaf_at(hull, 50) == 50 and vmaf_at(hull, 1000) == 90
    assert kbps_for(hull, 70) == pytest.approx(200)
    assert kbps_for(hull, 95) is None


def _curve(kbps: float, half: float, top: float) -> float:
    """A saturating rate-quality curve: easy content has a small `half`."""
    return top * kbps / (kbps + half)


def _trials(rungs, half: dict[int, float], top: dict[int, float]) -> dict[str, list[TrialPoint]]:
    return {
        r.id: [
            TrialPoint(k, _curve(k, half[r.height], top[r.height]))
            for k in (r.kbps * 0.35, r.kbps * 0.6, r.kbps)
        ]
        for r in rungs
    }


def test_auto_spends_fewer_bits_on_easy_content_and_never_more() -> None:
    rungs = default_ladder(1280, 720, ["h264"])
    top = {720: 100, 480: 95, 360: 88, 240: 75}
    easy = auto_ladder(rungs, _trials(rungs, {720: 150, 480: 100, 360: 60, 240: 30}, top))
    hard = auto_ladder(rungs, _trials(rungs, {720: 1500, 480: 900, 360: 600, 240: 300}, top))
    assert sum(r.kbps for r in easy) < 0.8 * sum(r.kbps for r in rungs)
    assert sum(r.kbps for r in easy) < sum(r.kbps for r in hard)
    for auto, fixed in zip(hard, rungs, strict=True):
        assert auto.kbps <= fixed.kbps
    assert all(r.vmaf is not None for r in easy)
    # Easy content: the top rung stops at its knee instead of spending the full 2800k.
    assert easy[0].kbps <= 0.65 * 2800 and easy[0].vmaf is not None and easy[0].vmaf > 90


def test_auto_stops_at_the_vmaf_ceiling() -> None:
    rungs = default_ladder(1280, 720, ["h264"], only=[720])
    steep = {rungs[0].id: [TrialPoint(980, 80), TrialPoint(1680, 93), TrialPoint(2800, 99)]}
    (top,) = auto_ladder(rungs, steep)
    assert top.vmaf == pytest.approx(95, abs=0.1) and 1680 < top.kbps < 2800


def test_auto_keeps_the_ladder_increasing() -> None:
    rungs = default_ladder(1280, 720, ["h264"])
    flat = {r.id: [TrialPoint(r.kbps * f, 96.0) for f in (0.35, 0.6, 1.0)] for r in rungs}
    result = auto_ladder(rungs, flat)
    kbps = [r.kbps for r in sorted(result, key=lambda r: r.height)]
    assert kbps == sorted(kbps) and len(set(kbps)) == len(kbps)
    assert len({r.height for r in result}) == len(rungs)


def test_auto_needs_trials_for_every_rung() -> None:
    rungs = default_ladder(1280, 720, ["h264"])
    with pytest.raises(ValueError):
        auto_ladder(rungs, {})

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from origin.ladder import (
    CODECS,
    DEFAULT_LADDER,
    MAX_RUNG_LOSS,
    MAX_TOP_RUNG_LOSS,
    MEAN_MARGIN_WHOLE_TITLE,
    MIN_RUNG_STEP,
    MIN_SIDE,
    TRIAL_CRF,
    Rung,
    TooSmall,
    auto_ladder,
    default_kbps,
    default_ladder,
    fps_factor,
    ladder_heights,
    select,
    trial_crfs,
    trial_rungs,
)
from origin.ladder_hull import (
    RatePoint,
    TrialPoint,
    rate_quality_hull,
    resolution_curve,
    vmaf_at,
)
from tests.origin.test_ladder_hull import BIKES_272P_TRIALS


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


@given(st.integers(min_value=16, max_value=8640), st.integers(min_value=16, max_value=15360))
def test_no_rung_above_4k_pixels(height: int, width: int) -> None:
    rungs = default_ladder(width, height, ["h264"])
    assert rungs and all(r.width * r.height <= 3840 * 2160 for r in rungs)


def test_a_source_above_4k_gets_a_4k_top_rung() -> None:
    assert [(r.width, r.height) for r in default_ladder(7680, 4320, ["h264"])][:2] == [
        (3840, 2160),
        (1920, 1080),
    ]
    top = default_ladder(9000, 5000, ["h264"])[0]
    assert top.height == 2146 and top.width * top.height <= 3840 * 2160
    assert default_ladder(2160, 3840, ["h264"])[0].height == 3840  # portrait 4K stays whole


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


def _sizes(rungs: tuple[Rung, ...]) -> list[tuple[int, int]]:
    return [(r.width, r.height) for r in rungs]


def test_a_codec_gets_no_rung_under_its_minimum_side() -> None:
    """x265 refuses pictures under 16 pixels a side, SVT-AV1 under 64: such rungs would fail
    the whole encode. A very narrow source's lower rungs round to 2-6 pixels wide."""
    assert _sizes(default_ladder(8, 1000, ["h264"])) == [(8, 1000)]  # not 6x720 ... 2x240
    assert _sizes(default_ladder(96, 480, ["h264"])) == [(96, 480), (72, 360), (48, 240)]
    assert _sizes(default_ladder(96, 480, ["av1"])) == [(96, 480), (72, 360)]
    assert _sizes(default_ladder(3000, 8, ["h264"])) == [(3000, 8)]
    with pytest.raises(TooSmall, match=r"96x54 source is too small for av1: .* at least 64"):
        default_ladder(96, 54, ["h264", "av1"])
    with pytest.raises(TooSmall, match=r"too small for hevc: .* at least 16"):
        default_ladder(3000, 8, ["hevc"])
    assert default_ladder(1280, 720, ["h264"], only=[1080]) == ()  # --heights: not too small


@given(
    st.integers(min_value=8, max_value=4000),
    st.integers(min_value=8, max_value=4000),
    st.sampled_from(CODECS),
)
def test_every_rung_fits_its_codec(width: int, height: int, codec: str) -> None:
    try:
        rungs = default_ladder(width, height, [codec])
    except TooSmall:
        assert min(width, height) < MIN_SIDE[codec] + 2  # + even rounding
        return
    assert rungs and all(min(r.width, r.height) >= MIN_SIDE[codec] for r in rungs)


def test_high_frame_rates_get_more_bits_up_to_a_cap() -> None:
    base = default_kbps(1920, 1080, "h264")
    for fps in (23.976, 25.0, 29.97, 30.0):
        assert default_kbps(1920, 1080, "h264", fps) == base
    assert base < default_kbps(1920, 1080, "h264", 40) < default_kbps(1920, 1080, "h264", 50)
    assert default_kbps(1920, 1080, "h264", 50) == default_kbps(1920, 1080, "h264", 60) == 7500
    assert default_kbps(1920, 1080, "h264", 120) == 7500  # capped
    factors = [fps_factor(tenths / 10) for tenths in range(300, 1300)]
    assert factors == sorted(factors) and max(b - a for a, b in itertools.pairwise(factors)) < 0.01
    assert [r.kbps for r in default_ladder(1280, 720, ["hevc"], fps=59.94)] == [
        default_kbps(r.width, r.height, "hevc", 59.94) for r in default_ladder(1280, 720, ["hevc"])
    ]
    assert default_ladder(1280, 720, ["hevc"], fps=59.94)[0].kbps > 1.45 * default_kbps(
        1280, 720, "hevc"
    )


# Synthetic rate-quality model: VMAF follows the CRF, towards a ceiling that falls with the
# size (upscaling blurs); bits halve every 6 CRF from a start that grows with the size and
# with `ease` (animation: small). Sizes overlap, so the hull switches between them.
BASE_KBPS = {720: 2700.0, 480: 1600.0, 360: 1000.0, 240: 560.0}
CEILING = {720: 100.0, 480: 93.0, 360: 85.0, 240: 72.0}


def _vmaf(height: int, crf: float) -> float:
    return CEILING[height] * (1 - 2 ** ((crf - 40) / 5))


def _kbps(height: int, crf: float, ease: float) -> float:
    return BASE_KBPS[height] * ease * 2 ** ((18 - crf) / 6)


def _points(ease: float, heights: tuple[int, ...] = (720, 480, 360, 240)) -> list[RatePoint]:
    return [
        RatePoint("h264", h * 16 // 9, h, crf, _kbps(h, crf, ease), _vmaf(h, crf))
        for h in heights
        for crf in TRIAL_CRF["h264"]
    ]


def _reference(rungs: tuple[Rung, ...], ease: float) -> dict[str, TrialPoint]:
    """The fixed rungs: VBR, 10% less efficient than CRF at the same bits."""
    ref = {}
    for r in rungs:
        crf = 18 - 6 * math.log2(0.9 * r.kbps / (BASE_KBPS[r.height] * ease))
        ref[r.id] = TrialPoint(r.kbps, _vmaf(r.height, crf))
    return ref


def test_resolution_curve_fills_in_on_the_hull_edges() -> None:
    pts = [p for p in _points(1.0) if p.height == 720]
    curve = resolution_curve(pts, step=0.5)
    assert len(curve) == (max(TRIAL_CRF["h264"]) - min(TRIAL_CRF["h264"])) / 0.5 + 1
    kbps = [p.kbps for p in curve]
    assert kbps == sorted(kbps) and [p.vmaf for p in curve] == sorted(p.vmaf for p in curve)
    mid = next(p for p in curve if p.crf == 20.5)  # halfway from CRF 18 to 23, log-linear
    assert mid.kbps == pytest.approx((_kbps(720, 18, 1) * _kbps(720, 23, 1)) ** 0.5)
    # VMAF bends down with CRF: the cubic follows it, the chord between the trials does not.
    chord = (_vmaf(720, 18) + _vmaf(720, 23)) / 2
    assert abs(mid.vmaf - _vmaf(720, 20.5)) < 0.15 < abs(chord - _vmaf(720, 20.5))


def test_hull_switches_to_smaller_sizes_at_low_bitrates() -> None:
    hull = rate_quality_hull(_points(1.0))
    heights = [p.height for p in hull]
    assert heights[0] < 720 and heights[-1] == 720
    # Sizes take over upwards (near a crossing two sizes may alternate for a step or two).
    firsts = list(dict.fromkeys(heights))
    assert firsts == sorted(firsts) and len(firsts) >= 3
    # At every hull point, no size's own curve does better at that bitrate (within one
    # CRF_STEP of it: the hull holds real encodes, not points between two of them).
    curves = {h: resolution_curve([p for p in _points(1.0) if p.height == h]) for h in heights}
    for p in hull[::5]:
        for curve in curves.values():
            if curve[0].kbps <= p.kbps:
                assert vmaf_at(curve, p.kbps) <= p.vmaf + 0.5


def test_hull_is_monotone_and_drops_noise() -> None:
    noisy = [*_points(1.0), RatePoint("h264", 1280, 720, 40.0, 5000, 10.0)]
    hull = rate_quality_hull(noisy)
    assert all(a.kbps < b.kbps and a.vmaf < b.vmaf for a, b in itertools.pairwise(hull))
    assert all(p.kbps != 5000 for p in hull)


def test_select_meets_floors_caps_and_mean_with_climbing_bitrates() -> None:
    hull = [TrialPoint(100 * 1.1**k, 30 + 2 * k) for k in range(34)]  # 30..96 VMAF
    floors, caps = [40.0, 60.0, 80.0], [300.0, 900.0, 3000.0]
    picks = select(hull, floors, caps, target_mean=70.0, step=1.2)
    chosen = [hull[i] for i in picks]
    assert all(p.vmaf >= f for p, f in zip(chosen, floors, strict=True))
    assert all(p.kbps <= c for p, c in zip(chosen, caps, strict=True))
    assert all(b.kbps >= a.kbps * 1.2 for a, b in itertools.pairwise(chosen))
    assert sum(p.vmaf for p in chosen) / 3 >= 70.0
    # Fewest bits: one step down for any rung breaks a constraint.
    for r, i in enumerate(picks):
        lower = [*picks[:r], i - 1, *picks[r + 1 :]]
        pts = [hull[j] for j in lower]
        ok = pts[r].vmaf >= floors[r] and all(
            b.kbps >= a.kbps * 1.2 for a, b in itertools.pairwise(pts)
        )
        assert not ok or sum(p.vmaf for p in pts) / 3 < 70.0


@given(st.floats(min_value=0.1, max_value=3.0))
def test_auto_ladder_is_a_ladder_and_never_upscales(ease: float) -> None:
    rungs = default_ladder(1280, 720, ["h264"])
    ref = _reference(rungs, ease)
    # A taller size in the trials (e.g. a stray point) must never become a rung.
    tall = RatePoint("h264", 1920, 1080, 18.0, 100.0, 99.0)
    auto = auto_ladder(rungs, ref, [*_points(ease), tall])
    assert all(r.height <= 720 and r.crf is not None and r.vmaf is not None for r in auto)
    kbps = [r.kbps for r in auto]
    assert kbps == sorted(kbps, reverse=True) and len(set(kbps)) == len(kbps)
    assert [r.height for r in auto] == sorted((r.height for r in auto), reverse=True)
    assert len({r.id for r in auto}) == len(auto)
    assert sum(r.kbps for r in auto) <= sum(p.kbps for p in ref.values())


def test_easy_content_saves_bits_at_the_same_mean_quality() -> None:
    rungs = default_ladder(1280, 720, ["h264"])
    for ease in (0.7, 1.0, 1.5):  # fixed rungs within the trials' reach (CRF 18 and up)
        ref = _reference(rungs, ease)
        auto = auto_ladder(rungs, ref, _points(ease))
        assert len(auto) == len(rungs)
        mean_ref = sum(p.vmaf for p in ref.values()) / len(ref)
        assert sum(r.vmaf or 0 for r in auto) / len(auto) >= mean_ref
        by_slot = sorted(auto, key=lambda r: r.kbps)
        fixed = sorted(rungs, key=lambda r: r.kbps)
        for a, f in zip(by_slot, fixed, strict=True):
            assert (a.vmaf or 0) >= ref[f.id].vmaf - MAX_RUNG_LOSS
        # The top rung: within MAX_TOP_RUNG_LOSS, or the trials' best (CRF 18) when the fixed
        # rung is better still (easy content at the table's 720p bitrate).
        best = max(p.vmaf for p in _points(ease))
        top = by_slot[-1].vmaf or 0
        floor = ref[fixed[-1].id].vmaf - MAX_TOP_RUNG_LOSS
        assert top >= floor or top == pytest.approx(best, abs=0.01)
    easy = auto_ladder(rungs, _reference(rungs, 0.3), _points(0.3))
    assert sum(r.kbps for r in easy) < 0.5 * sum(r.kbps for r in rungs)
    # Past the trials' best (CRF 18, about transparent) the top rung stops there.
    assert easy[0].crf == min(TRIAL_CRF["h264"]) and easy[0].height == 720


def test_low_rung_moves_to_a_larger_size_when_that_is_cheaper() -> None:
    rungs = default_ladder(1280, 720, ["h264"])
    auto = auto_ladder(rungs, _reference(rungs, 0.3), _points(0.3))
    assert min(auto, key=lambda r: r.kbps).height > 240


def test_trials_cover_every_size_plus_the_fixed_rungs() -> None:
    rungs = default_ladder(1280, 720, ["h264", "hevc"], only=[720, 360])
    trials = trial_rungs(rungs)
    assert trials[: len(rungs)] == list(rungs)
    crf = [t for t in trials if t.crf is not None]
    assert len(crf) == 2 * 2 * (len(TRIAL_CRF["h264"]) - 1) and all(t.kbps == 0 for t in crf)
    assert {(t.codec, t.height) for t in crf} == {(r.codec, r.height) for r in rungs}
    # The tallest size from the best CRF, smaller ones down to the worst; one size: all.
    by_size: dict[tuple[str, int], list[float]] = {(t.codec, t.height): [] for t in crf}
    for t in crf:
        by_size[(t.codec, t.height)].append(t.crf or 0)
    assert by_size[("h264", 720)] == list(TRIAL_CRF["h264"][:-1])
    assert by_size[("hevc", 360)] == list(TRIAL_CRF["hevc"][1:])
    assert trial_crfs("h264", 0, 1) == TRIAL_CRF["h264"]


def test_rungs_at_the_hull_top_step_down_instead_of_merging() -> None:
    hull = [TrialPoint(100 * 1.1**k, 90 + k * 0.5) for k in range(10)]  # saturating
    picks = select(hull, [99.0, 99.0, 99.0], [1e9, 1e9, 1e9], target_mean=0.0, step=1.2)
    chosen = [hull[i] for i in picks]
    assert picks[-1] == len(hull) - 1 and len(set(picks)) == 3
    assert all(b.kbps >= a.kbps * 1.2 for a, b in itertools.pairwise(chosen))


# Measured trials of bikes.mp4 (640x272; VMAF every 3rd frame): a small, easy source whose
# fixed ladder is 272p and 240p, where 272p wins the hull at every bitrate.
BIKES_FIXED = {"h264_272p": TrialPoint(599, 97.32), "h264_240p": TrialPoint(489, 94.89)}
BIKES_240P_TRIALS = [(23.0, 299.0, 90.92), (28.0, 169.0, 80.7), (33.0, 100.0, 64.89)]


def test_small_source_ladder_keeps_floor_spacing_and_mean_with_fewer_bits() -> None:
    rungs = default_ladder(640, 272, ["h264"])
    points = [RatePoint("h264", 640, 272, c, k, v) for c, k, v in BIKES_272P_TRIALS]
    points += [RatePoint("h264", 564, 240, c, k, v) for c, k, v in BIKES_240P_TRIALS]
    auto = auto_ladder(rungs, BIKES_FIXED, points, margin=MEAN_MARGIN_WHOLE_TITLE)
    assert len(auto) == 2 and {r.height for r in auto} == {272}  # one size: it dominates
    top, low = auto
    assert low.kbps <= BIKES_FIXED["h264_240p"].kbps  # weak networks keep their floor
    assert top.kbps >= low.kbps * MIN_RUNG_STEP
    assert (top.vmaf or 0) >= BIKES_FIXED["h264_272p"].vmaf - MAX_TOP_RUNG_LOSS
    fixed_mean = sum(p.vmaf for p in BIKES_FIXED.values()) / 2
    assert ((top.vmaf or 0) + (low.vmaf or 0)) / 2 >= fixed_mean + MEAN_MARGIN_WHOLE_TITLE
    fixed_kbps = sum(p.kbps for p in BIKES_FIXED.values())
    assert top.kbps + low.kbps < 0.9 * fixed_kbps


def test_auto_needs_a_reference_and_points() -> None:
    rungs = default_ladder(1280, 720, ["h264"])
    with pytest.raises(ValueError):
        auto_ladder(rungs, {}, _points(1.0))
    with pytest.raises(ValueError):
        auto_ladder(rungs, _reference(rungs, 1.0), [])

"""The rate-quality hull, pure: trial encodes (kbit/s, VMAF) of every size at a few CRFs,
each size's curve filled in between its trials, and the envelope across sizes that the
per-title ladder (`origin/ladder.py`) picks its rungs from.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

# Interpolated hull points lie this many CRF apart (the encoders take fractional CRFs).
CRF_STEP = 0.25


class Rated(Protocol):
    @property
    def kbps(self) -> float: ...
    @property
    def vmaf(self) -> float: ...


@dataclass(frozen=True)
class TrialPoint:
    """A measured encode: average kbit/s and mean VMAF."""

    kbps: float
    vmaf: float


@dataclass(frozen=True)
class RatePoint:
    """One size of one codec at one CRF (a trial encode, or interpolated between two)."""

    codec: str
    width: int
    height: int
    crf: float
    kbps: float
    vmaf: float


P = TypeVar("P", bound=Rated)


def upper_hull(points: Iterable[P]) -> list[P]:
    """Upper concave envelope in (log2 kbps, VMAF), increasing: noise and dominated encodes
    (more bits, no more quality) fall off; points on a hull edge stay."""
    pts = sorted((p for p in points if p.kbps > 0), key=lambda p: (p.kbps, -p.vmaf))
    hull: list[P] = []
    for p in pts:
        if hull and p.vmaf <= hull[-1].vmaf:
            continue  # dominated: more bits for no more quality
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) > 1e-9:
            hull.pop()
        hull.append(p)
    return hull


def _cross(a: Rated, b: Rated, c: Rated) -> float:
    """> 0 when b lies under the chord a-c (in log2 kbps)."""
    ax, bx, cx = math.log2(a.kbps), math.log2(b.kbps), math.log2(c.kbps)
    return (bx - ax) * (c.vmaf - a.vmaf) - (b.vmaf - a.vmaf) * (cx - ax)


def vmaf_at(hull: Sequence[Rated], kbps: float) -> float:
    """VMAF on the hull at `kbps`, linear in log bitrate, flat beyond the ends."""
    if kbps <= hull[0].kbps:
        return hull[0].vmaf
    for lo, hi in itertools.pairwise(hull):
        if kbps <= hi.kbps:
            t = math.log2(kbps / lo.kbps) / math.log2(hi.kbps / lo.kbps)
            return lo.vmaf + t * (hi.vmaf - lo.vmaf)
    return hull[-1].vmaf


def resolution_curve(points: Iterable[RatePoint], step: float = CRF_STEP) -> list[RatePoint]:
    """One size's trial points, trimmed to their hull and filled in every `step` CRF: bitrate
    log-linear in CRF (x264 bits halve every ~6 CRF, measured straight to within 1%), VMAF a
    monotone cubic through the trials (`pchip`). VMAF falls faster and faster with CRF, so a
    straight chord between two trials sits ~0.5 VMAF under the real curve mid-way (bikes
    272p at CRF 20.5: chord 95.7, cubic 96.2, encode 96.2): bits a rung then pays for nothing."""
    hull = sorted(upper_hull(points), key=lambda p: p.crf)
    slopes = pchip_slopes([p.crf for p in hull], [p.vmaf for p in hull])
    curve = hull[:1]
    for k, (lo, hi) in enumerate(itertools.pairwise(hull)):
        n = max(1, round((hi.crf - lo.crf) / step))
        for i in range(1, n + 1):
            t = i / n
            curve.append(
                replace(
                    lo,
                    crf=lo.crf + t * (hi.crf - lo.crf),
                    kbps=lo.kbps * (hi.kbps / lo.kbps) ** t,
                    vmaf=_hermite(lo, hi, slopes[k], slopes[k + 1], t),
                )
            )
    return sorted(curve, key=lambda p: p.kbps)


def pchip_slopes(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Fritsch-Carlson slopes of the monotone piecewise-cubic (PCHIP) through (xs, ys), xs
    increasing: the interpolant never leaves the range of two neighbouring points, so a
    curve through noisy trials cannot overshoot. (SciPy's PchipInterpolator, in 20 lines
    rather than a dependency on NumPy and SciPy.)"""
    n = len(xs)
    if n < 2:
        return [0.0] * n
    h = [b - a for a, b in itertools.pairwise(xs)]
    d = [(y1 - y0) / dx for (y0, y1), dx in zip(itertools.pairwise(ys), h, strict=True)]
    if n == 2:
        return [d[0], d[0]]
    m = [0.0] * n
    for k in range(1, n - 1):
        if d[k - 1] * d[k] > 0:  # weighted harmonic mean; 0 at a turn keeps it monotone
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            m[k] = (w1 + w2) / (w1 / d[k - 1] + w2 / d[k])
    m[0] = _end_slope(h[0], h[1], d[0], d[1])
    m[-1] = _end_slope(h[-1], h[-2], d[-1], d[-2])
    return m


def _end_slope(h0: float, h1: float, d0: float, d1: float) -> float:
    m = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
    if m * d0 <= 0:
        return 0.0
    if d0 * d1 <= 0 and abs(m) > 3 * abs(d0):
        return 3 * d0
    return m


def _hermite(lo: RatePoint, hi: RatePoint, m0: float, m1: float, t: float) -> float:
    """The cubic Hermite between two points (slopes in VMAF per CRF) at fraction t."""
    dx = hi.crf - lo.crf
    t2, t3 = t * t, t * t * t
    return (
        (2 * t3 - 3 * t2 + 1) * lo.vmaf
        + (t3 - 2 * t2 + t) * dx * m0
        + (-2 * t3 + 3 * t2) * hi.vmaf
        + (t3 - t2) * dx * m1
    )


def rate_quality_hull(points: Iterable[RatePoint]) -> list[RatePoint]:
    """The rate-quality hull across sizes: each size's convex hull (filled in every CRF_STEP),
    and of all of them, for every bitrate, the size (and CRF) giving the most VMAF — small
    sizes win at low bitrates, large ones at high. Every point is one real encode (no
    time-sharing between sizes), so any of them can be a rung."""
    by_size: dict[tuple[str, int, int], list[RatePoint]] = {}
    for p in points:
        by_size.setdefault((p.codec, p.width, p.height), []).append(p)
    dense = [p for pts in by_size.values() for p in resolution_curve(pts)]
    envelope: list[RatePoint] = []
    for p in sorted(dense, key=lambda p: (p.kbps, -p.vmaf)):
        if not envelope or p.vmaf > envelope[-1].vmaf:
            envelope.append(p)
    return envelope

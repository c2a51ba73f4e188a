"""Ladder choice, pure: which renditions (codec, size, bitrate) a source gets.

The default ladder is a fixed table cut at the source's height (never upscale). The per-title
(`--ladder auto`) ladder re-prices each rung from trial encodes measured with VMAF: on the
upper convex hull of (log bitrate, VMAF) each rung stops where more bits stop buying visible
quality, so easy content spends fewer bits.
`origin/pertitle.py` runs the trials; this decides.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

# (height, H.264 kbit/s): a common VOD ladder for 16:9; other aspect ratios scale by area.
DEFAULT_LADDER: tuple[tuple[int, int], ...] = (
    (1080, 5000),
    (720, 2800),
    (480, 1400),
    (360, 800),
    (240, 400),
)
CODECS = ("h264", "hevc", "av1")
# Bits each codec needs for the quality H.264 reaches with 1.0 (rule-of-thumb efficiencies).
CODEC_FACTOR = {"h264": 1.0, "hevc": 0.65, "av1": 0.55}
# A source this much taller than the highest rung that fits gets a rung at its own height.
NATIVE_RUNG_MARGIN = 1.10
# Trial bitrates for --ladder auto, as multiples of the default rung bitrate.
TRIAL_FACTORS = (0.35, 0.6, 1.0)
# --ladder auto: no rung aims above this VMAF (past it viewers see no difference)...
VMAF_CEILING = 95.0
# ...nor past the point where doubling its bits would buy fewer VMAF points than this
# (about one just-noticeable difference): where content is easy that point comes early.
KNEE_SLOPE = 5.0
# A taller rung never gets fewer bits than the one below it (plus this margin).
MIN_RUNG_STEP = 1.05


@dataclass(frozen=True)
class Rung:
    codec: str
    width: int
    height: int
    kbps: int
    vmaf: float | None = None

    @property
    def id(self) -> str:
        """Folder and DASH Representation id, e.g. `h264_720p`."""
        return f"{self.codec}_{self.height}p"


@dataclass(frozen=True)
class TrialPoint:
    kbps: float
    vmaf: float


def even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def rung_width(src_width: int, src_height: int, height: int) -> int:
    return even(height * src_width / src_height)


def ladder_heights(src_height: int, only: Iterable[int] | None = None) -> list[int]:
    """Rung heights for a source, tallest first, none above the source."""
    fitting = [h for h, _ in DEFAULT_LADDER if h <= src_height]
    if not fitting or src_height > fitting[0] * NATIVE_RUNG_MARGIN:
        fitting.insert(0, src_height - src_height % 2)  # encoders want even sizes
    if only is not None:
        wanted = set(only)
        fitting = [h for h in fitting if h in wanted]
    return fitting


def default_kbps(width: int, height: int, codec: str) -> int:
    """Table bitrate for `height`, scaled by picture area for other aspect ratios and sizes."""
    nearest_h, nearest_kbps = min(DEFAULT_LADDER, key=lambda row: abs(row[0] - height))
    table_area = (nearest_h * 16 / 9) * nearest_h
    # Bits grow slower than pixels (^0.75 is the usual rule of thumb).
    kbps = nearest_kbps * (width * height / table_area) ** 0.75 * CODEC_FACTOR[codec]
    return max(50, round(kbps / 10) * 10)


def default_ladder(
    src_width: int, src_height: int, codecs: Sequence[str], only: Iterable[int] | None = None
) -> tuple[Rung, ...]:
    """The fixed ladder for a source: every codec x every fitting height."""
    rungs = []
    for codec in codecs:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose from {', '.join(CODECS)}")
        for height in ladder_heights(src_height, only):
            width = rung_width(src_width, src_height, height)
            rungs.append(Rung(codec, width, height, default_kbps(width, height, codec)))
    return tuple(rungs)


def trial_kbps(rung: Rung) -> list[int]:
    return [max(30, round(rung.kbps * f)) for f in TRIAL_FACTORS]


def upper_hull(points: Iterable[TrialPoint]) -> list[TrialPoint]:
    """Upper concave envelope in (log2 kbps, VMAF), non-decreasing: noise and dominated
    encodes (more bits, no more quality) fall off."""
    pts = sorted({(p.kbps, p.vmaf) for p in points if p.kbps > 0})
    hull: list[tuple[float, float]] = []
    for kbps, vmaf in pts:
        if hull and vmaf <= hull[-1][1]:
            continue  # dominated: more bits for no more quality
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], (kbps, vmaf)) >= 0:
            hull.pop()
        hull.append((kbps, vmaf))
    return [TrialPoint(k, v) for k, v in hull]


def _cross(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
    ax, bx, cx = math.log2(a[0]), math.log2(b[0]), math.log2(c[0])
    return (bx - ax) * (c[1] - a[1]) - (b[1] - a[1]) * (cx - ax)


def vmaf_at(hull: Sequence[TrialPoint], kbps: float) -> float:
    """VMAF on the hull at `kbps`, linear in log bitrate, flat beyond the ends."""
    if kbps <= hull[0].kbps:
        return hull[0].vmaf
    for lo, hi in itertools.pairwise(hull):
        if kbps <= hi.kbps:
            t = math.log2(kbps / lo.kbps) / math.log2(hi.kbps / lo.kbps)
            return lo.vmaf + t * (hi.vmaf - lo.vmaf)
    return hull[-1].vmaf


def kbps_for(hull: Sequence[TrialPoint], target: float) -> float | None:
    """The fewest kbit/s at which the hull reaches `target` VMAF (log-linear), or None."""
    if hull[0].vmaf >= target:
        return hull[0].kbps
    for lo, hi in itertools.pairwise(hull):
        if hi.vmaf >= target:
            t = (target - lo.vmaf) / (hi.vmaf - lo.vmaf)
            return lo.kbps * (hi.kbps / lo.kbps) ** t
    return None


def knee_vmaf(hull: Sequence[TrialPoint], knee_slope: float = KNEE_SLOPE) -> float:
    """VMAF at the first hull vertex after which a doubling of bits buys < `knee_slope`."""
    for lo, hi in itertools.pairwise(hull):
        if (hi.vmaf - lo.vmaf) / math.log2(hi.kbps / lo.kbps) < knee_slope:
            return lo.vmaf
    return hull[-1].vmaf


def auto_ladder(
    rungs: Sequence[Rung],
    trials: Mapping[str, Sequence[TrialPoint]],
    ceiling: float = VMAF_CEILING,
    knee_slope: float = KNEE_SLOPE,
) -> tuple[Rung, ...]:
    """Re-price `rungs` (the default ladder) from their trial points, keyed by rung id.

    Each rung aims at the quality the fixed ladder gives it on this title, but not beyond
    `ceiling` nor beyond its hull's knee (see KNEE_SLOPE), at the fewest bits its convex
    hull allows — never more than the fixed ladder spends.
    Bitrates then step up by at least MIN_RUNG_STEP from rung to rung so it stays a ladder.
    """
    hulls = {rung.id: upper_hull(trials.get(rung.id, ())) for rung in rungs}
    for rung_id, hull in hulls.items():
        if not hull:
            raise ValueError(f"no trial points for {rung_id}")
    result: list[Rung] = []
    for codec in dict.fromkeys(r.codec for r in rungs):
        floor = 0
        for rung in sorted((r for r in rungs if r.codec == codec), key=_height):
            full = hulls[rung.id]
            hull = [p for p in full if p.kbps <= rung.kbps] or full[:1]
            target = min(vmaf_at(hull, rung.kbps), ceiling, knee_vmaf(hull, knee_slope))
            kbps = min(rung.kbps, math.ceil(kbps_for(full, target) or rung.kbps))
            kbps = max(kbps, math.ceil(floor * MIN_RUNG_STEP))
            result.append(replace(rung, kbps=kbps, vmaf=round(vmaf_at(full, kbps), 2)))
            floor = kbps
    order = {r.id: i for i, r in enumerate(rungs)}
    return tuple(sorted(result, key=lambda r: order[r.id]))


def _height(rung: Rung) -> int:
    return rung.height

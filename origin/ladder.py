"""Ladder choice, pure: which renditions (codec, size, bitrate) a source gets.

The default ladder is a fixed table cut at the source's height (never upscale). The per-title
(`--ladder auto`) ladder comes from trial encodes (every candidate resolution at a few CRFs,
scored with VMAF at the display size): their rate-quality hull across resolutions, on which
each rung takes the (resolution, CRF) point that keeps the fixed ladder's mean quality at the
fewest bits — as many rungs, none dearer than its fixed rung nor more than 2 VMAF worse (the
top one 1), at least 1.2x apart (the policy in full above MAX_RUNG_LOSS).
The hull itself is in `origin/ladder_hull.py`; `origin/pertitle.py` runs the trials.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from origin.ladder_hull import Rated, RatePoint, TrialPoint, rate_quality_hull

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
MAX_RUNG_PIXELS = 3840 * 2160
# The shortest picture side each codec's rungs may have: libx265 refuses pictures under 16
# pixels a side and SVT-AV1 (in bitrate mode) under 64. libx264 takes 2x2, but a rung that
# narrow shows nothing: 8, the smallest source origin/probe.py takes. A rung under it on
# either side is left out of that codec's ladder.
MIN_SIDE = {"h264": 8, "hevc": 16, "av1": 64}
# The table's rates are for up to 30 fps. Above, more pictures a second need more bits, but
# less than in proportion (neighbouring pictures differ less): (fps/30)^0.8, ~x1.26 at 40 fps,
# capped at x1.5 from 50 fps on — YouTube's step from 24-30 fps to 48-60 fps at every size.
STANDARD_FPS = 30.0
FPS_EXPONENT = 0.8
MAX_FPS_FACTOR = 1.5


@dataclass(frozen=True)
class Rung:
    codec: str
    width: int
    height: int
    kbps: int
    vmaf: float | None = None
    # Per-title rungs encode at a constant quality (capped at `kbps` times a margin, see
    # origin/ffmpeg.py) instead of an average bitrate; `kbps` is then the predicted average.
    crf: float | None = None
    # Tells apart two rungs at one size (a per-title ladder may keep both), e.g. `400k`.
    label: str = ""

    @property
    def id(self) -> str:
        """Folder and DASH Representation id, e.g. `h264_720p` (`h264_720p_400k`)."""
        return f"{self.codec}_{self.height}p" + (f"_{self.label}" if self.label else "")


def even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def rung_width(src_width: int, src_height: int, height: int) -> int:
    return even(height * src_width / src_height)


def top_height(src_width: int, src_height: int) -> int:
    """The tallest rung a source gets: its own height, but no picture over MAX_RUNG_PIXELS
    (4K UHD). Beyond it, players and H.264 levels give out, and no service streams more."""
    height = src_height
    if src_width * src_height > MAX_RUNG_PIXELS:
        height = int((MAX_RUNG_PIXELS * src_height / src_width) ** 0.5)
        while height > 2 and rung_width(src_width, src_height, height) * height > MAX_RUNG_PIXELS:
            height -= 1
    return height - height % 2  # encoders want even sizes


def ladder_heights(
    src_height: int, only: Iterable[int] | None = None, src_width: int | None = None
) -> list[int]:
    """Rung heights for a source, tallest first, none above the source (nor above
    top_height when the width is given)."""
    top = top_height(src_width, src_height) if src_width else src_height
    fitting = [h for h, _ in DEFAULT_LADDER if h <= top]
    if not fitting or top > fitting[0] * NATIVE_RUNG_MARGIN:
        fitting.insert(0, top - top % 2)  # encoders want even sizes
    if only is not None:
        wanted = set(only)
        fitting = [h for h in fitting if h in wanted]
    return fitting


def fps_factor(fps: float) -> float:
    """How many more bits than the table's a rung at `fps` needs (1 up to STANDARD_FPS)."""
    if fps <= STANDARD_FPS:
        return 1.0
    return min(MAX_FPS_FACTOR, (fps / STANDARD_FPS) ** FPS_EXPONENT)


def default_kbps(width: int, height: int, codec: str, fps: float = STANDARD_FPS) -> int:
    """Table bitrate for `height`, scaled by picture area for other aspect ratios and sizes,
    and up for frame rates above the table's (`fps_factor`)."""
    nearest_h, nearest_kbps = min(DEFAULT_LADDER, key=lambda row: abs(row[0] - height))
    table_area = (nearest_h * 16 / 9) * nearest_h
    # Bits grow slower than pixels (^0.75 is the usual rule of thumb).
    kbps = nearest_kbps * (width * height / table_area) ** 0.75 * CODEC_FACTOR[codec]
    return max(50, round(kbps * fps_factor(fps) / 10) * 10)


class TooSmall(ValueError):
    """A codec gets no rung at all: every size the source allows is under its MIN_SIDE."""


def default_ladder(
    src_width: int,
    src_height: int,
    codecs: Sequence[str],
    only: Iterable[int] | None = None,
    fps: float = STANDARD_FPS,
) -> tuple[Rung, ...]:
    """The fixed ladder for a source: every codec x every fitting height, but no rung under
    the codec's MIN_SIDE on either side (a narrow source's lower rungs would round to 2 px
    wide). Raise TooSmall if that leaves a codec with none."""
    heights = ladder_heights(src_height, only, src_width)
    sizes = [(rung_width(src_width, src_height, h), h) for h in heights]
    rungs = []
    for codec in codecs:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose from {', '.join(CODECS)}")
        mine = [(w, h) for w, h in sizes if min(w, h) >= MIN_SIDE[codec]]
        if sizes and not mine:
            side = MIN_SIDE[codec]
            raise TooSmall(
                f"a {src_width}x{src_height} source is too small for {codec}: its pictures "
                f"must be at least {side} pixels on each side"
            )
        rungs += [Rung(codec, w, h, default_kbps(w, h, codec, fps)) for w, h in mine]
    return tuple(rungs)


# --- per-title (--ladder auto) ---

# Trial CRFs per codec, on the encoder's own scale (x264/x265 0-51, SVT-AV1 0-63): from near
# transparent to below the lowest rung's quality. Points in between are interpolated.
TRIAL_CRF: dict[str, tuple[float, ...]] = {
    "h264": (18.0, 23.0, 28.0, 33.0),
    "hevc": (20.0, 25.0, 30.0, 35.0),
    "av1": (24.0, 32.0, 40.0, 48.0),
}
# The per-title policy (auto_ladder), per codec, on the rate-quality hull across sizes:
# - as many rungs as the fixed ladder (players keep as many switch points; two at least when
#   it has two), from hull points only: sizes up to the fixed ladder's top (never upscale),
#   as many distinct sizes as the hull wants (small or easy sources: often just the top one);
# - each rung at most its fixed rung's bits — so the lowest rung never costs more than the
#   fixed floor and weak networks keep it — and at most MAX_RUNG_LOSS VMAF under it (the top
#   rung MAX_TOP_RUNG_LOSS; or the trials' best, about transparent, if the fixed one is
#   better still);
# - neighbouring rungs at least MIN_RUNG_STEP apart in bitrate;
# - the ladder's mean VMAF at least the fixed ladder's plus a margin, at the fewest total bits.
# A rung may give up a third of a just-noticeable difference (~6 VMAF) against its fixed rung
# while the ladder as a whole keeps its mean quality...
MAX_RUNG_LOSS = 2.0
# The top rung, what most viewers on a good connection watch, gives up at most a sixth.
MAX_TOP_RUNG_LOSS = 1.0
# ...and that mean aims this far above the fixed ladder's, for trial-to-title noise: a middle
# excerpt mispredicts a title by a few tenths; trials of the whole title only carry the curve
# fit's error (within 0.15 VMAF of real encodes at interpolated CRFs on both sample clips) and
# that of scoring a subsample of frames (origin/pertitle.py: within 0.1 on the ladder's mean).
MEAN_MARGIN = 0.3
MEAN_MARGIN_WHOLE_TITLE = 0.25
# Neighbouring rungs differ in bitrate by at least this factor (the fixed ladder's closest
# pair, 272p and 240p of a 272p source, are 1.22 apart): closer ones buy a player nothing.
MIN_RUNG_STEP = 1.2


def trial_crfs(codec: str, rank: int, sizes: int) -> tuple[float, ...]:
    """The trial CRFs of the `rank`-th tallest of `sizes` ladder sizes. The tallest size
    skips the lowest quality and the others the highest: there a neighbouring size always
    won on the hull (at the bits of 720p at CRF 33, 480p at CRF 28 looks better; at those of
    480p at CRF 18, 720p at CRF 23), so those encodes and their VMAF were wasted."""
    crfs = TRIAL_CRF[codec]
    if sizes == 1:
        return crfs
    return crfs[:-1] if rank == 0 else crfs[1:]


def trial_rungs(rungs: Sequence[Rung]) -> list[Rung]:
    """What --ladder auto encodes on the excerpt: every fixed rung as it is (the quality to
    keep) and, per codec, every size of its ladder at its trial CRFs (uncapped: kbps 0)."""
    trials = list(rungs)
    for codec in dict.fromkeys(r.codec for r in rungs):
        sizes = sorted(
            {(r.width, r.height) for r in rungs if r.codec == codec}, key=lambda s: -s[1]
        )
        for rank, (w, h) in enumerate(sizes):
            trials += [Rung(codec, w, h, 0, crf=c) for c in trial_crfs(codec, rank, len(sizes))]
    return trials


def select(
    hull: Sequence[Rated],
    floors: Sequence[float],
    caps: Sequence[float],
    target_mean: float,
    step: float = MIN_RUNG_STEP,
) -> list[int]:
    """A hull index per rung (rungs from the lowest up): each rung at the fewest bits that
    reach its floor VMAF, no more bits than its cap, bitrates climbing by `step` (at the
    hull's top end the lower rungs step down instead); then, while the mean VMAF misses
    `target_mean`, one hull step up for the rung whose next step buys the most VMAF per
    kbit/s (along a concave hull the cheapest quality is always there); last, steps back
    down wherever the mean, floors and spacing still hold (greedy steps overshoot)."""
    picks: list[int] = []
    for floor, cap in zip(floors, caps, strict=True):
        i = next((k for k, p in enumerate(hull) if p.vmaf >= floor), len(hull) - 1)
        while i > 0 and hull[i].kbps > cap:
            i -= 1
        if picks:  # climbing wins over the cap: it stays a ladder
            while i + 1 < len(hull) and hull[i].kbps < hull[picks[-1]].kbps * step:
                i += 1
        picks.append(i)
    # A rung that climbed into the hull's top end pushes the ones under it down: still a
    # ladder (and as many rungs), not two copies of the hull's best point.
    for k in range(len(picks) - 2, -1, -1):
        while picks[k] > 0 and hull[picks[k]].kbps * step > hull[picks[k + 1]].kbps:
            picks[k] -= 1
    _raise_to_mean(hull, picks, caps, target_mean, step)
    _trim(hull, picks, floors, target_mean, step)
    return picks


def _raise_to_mean(
    hull: Sequence[Rated], picks: list[int], caps: Sequence[float], target: float, step: float
) -> None:
    for _ in range(len(hull) * len(picks)):
        if sum(hull[i].vmaf for i in picks) >= target * len(picks):
            return
        best: tuple[float, int] | None = None
        for rung, i in enumerate(picks):
            j = i + 1
            if j >= len(hull) or hull[j].kbps > caps[rung]:
                continue
            if rung + 1 < len(picks) and hull[j].kbps * step > hull[picks[rung + 1]].kbps:
                continue
            gain = (hull[j].vmaf - hull[i].vmaf) / (hull[j].kbps - hull[i].kbps)
            if best is None or gain > best[0]:
                best = (gain, rung)
        if best is None:
            return
        picks[best[1]] += 1


def _trim(
    hull: Sequence[Rated], picks: list[int], floors: Sequence[float], target: float, step: float
) -> None:
    """Step rungs down while every constraint holds, the most kbit/s saved per VMAF first."""
    if sum(hull[i].vmaf for i in picks) < target * len(picks):
        return  # the mean was out of reach: nothing to give back
    for _ in range(len(hull) * len(picks)):
        slack = sum(hull[i].vmaf for i in picks) - target * len(picks)
        best: tuple[float, int] | None = None
        for rung, i in enumerate(picks):
            j = i - 1
            if j < 0 or hull[j].vmaf < floors[rung] or hull[i].vmaf - hull[j].vmaf > slack:
                continue
            if rung > 0 and hull[picks[rung - 1]].kbps * step > hull[j].kbps:
                continue
            saving = (hull[i].kbps - hull[j].kbps) / max(hull[i].vmaf - hull[j].vmaf, 1e-9)
            if best is None or saving > best[0]:
                best = (saving, rung)
        if best is None:
            return
        picks[best[1]] -= 1


def auto_ladder(
    rungs: Sequence[Rung],
    reference: Mapping[str, TrialPoint],
    points: Iterable[RatePoint],
    max_loss: float = MAX_RUNG_LOSS,
    top_loss: float = MAX_TOP_RUNG_LOSS,
    margin: float = MEAN_MARGIN,
    step: float = MIN_RUNG_STEP,
) -> tuple[Rung, ...]:
    """The per-title ladder replacing `rungs` (the fixed ladder): `reference` is each fixed
    rung's measured trial (by rung id), `points` the CRF trials of every size.

    Per codec, every rung becomes a point of the rate-quality hull across sizes (no size
    above the fixed ladder's top, so never above the source): at most `max_loss` VMAF under
    its fixed rung (the top one `top_loss`), at most the fixed rung's bits (the lowest rung
    never above the fixed floor), neighbours `step` apart in bitrate, and the ladder's mean
    VMAF at least the fixed ladder's (+ `margin`), at the fewest total bits. As many rungs
    as the fixed ladder; only a hull too short for them all (a tiny source) merges two.
    Tallest first per codec, like the fixed ladder.
    """
    points = list(points)
    result: list[Rung] = []
    for codec in dict.fromkeys(r.codec for r in rungs):
        mine = sorted((r for r in rungs if r.codec == codec), key=lambda r: (r.height, r.kbps))
        missing = [r.id for r in mine if r.id not in reference]
        if missing:
            raise ValueError(f"no reference trial for {', '.join(missing)}")
        refs = [reference[r.id] for r in mine]
        top = max(r.height for r in mine)
        hull = rate_quality_hull(p for p in points if p.codec == codec and p.height <= top)
        if not hull:
            raise ValueError(f"no CRF trials for {codec}")
        target = sum(r.vmaf for r in refs) / len(refs) + margin
        floors = [r.vmaf - max_loss for r in refs[:-1]] + [refs[-1].vmaf - top_loss]
        picks = select(hull, floors, [r.kbps for r in refs], target, step)
        chosen = [hull[i] for i in sorted(set(picks), reverse=True)]
        result += _rungs(chosen)
    return tuple(result)


def _rungs(points: Sequence[RatePoint]) -> list[Rung]:
    """Rungs for hull points (highest bitrate first); a size taken twice gets a label."""
    rungs = []
    seen: set[int] = set()
    for p in points:
        kbps = math.ceil(p.kbps)
        label = f"{kbps}k" if p.height in seen else ""
        seen.add(p.height)
        rungs.append(
            Rung(p.codec, p.width, p.height, kbps, round(p.vmaf, 2), round(p.crf, 2), label)
        )
    return rungs

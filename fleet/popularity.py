"""Title popularity: exponentially decayed byte counts from heartbeat deltas, plus a boost.

The server feeds every heartbeat's per-title deltas into `DecayedCounts` with the clock it
owns; the planner (fleet/planner.py) reads `predicted_demand`, which adds a burst for titles
released recently or about to be (release dates are known from the catalog in advance).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PopularityPolicy:
    # Half-life of a byte served: a few days follows trends without forgetting catalogue hits.
    half_life_s: float = 3 * 86_400.0
    # A new title is predicted as popular as the title ranked `boost_rank` today ...
    boost_rank: int = 5
    boost_factor: float = 1.0
    # ... from `boost_lead_s` before release (fill the night before) for `boost_window_s`.
    boost_lead_s: float = 86_400.0
    boost_window_s: float = 2 * 86_400.0

    def __post_init__(self) -> None:
        if self.half_life_s <= 0 or self.boost_window_s < 0 or self.boost_lead_s < 0:
            raise ValueError("half-life must be > 0 and boost windows >= 0")
        if self.boost_rank < 1 or self.boost_factor < 0:
            raise ValueError("boost_rank must be >= 1 and boost_factor >= 0")


class DecayedCounts:
    """Per-title counts that decay with a half-life; adding is O(1) per title.

    Values are stored scaled to a reference time (`_t0`): a count c added at time t is kept
    as c * 2^((t - t0) / half_life), so nothing needs touching when time passes. The
    reference moves forward before the scale could overflow.
    """

    _REBASE_HALF_LIVES = 400.0

    def __init__(self, half_life_s: float, start: float) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be > 0")
        self.half_life_s = half_life_s
        self._t0 = start
        self._last = start
        self._scaled: dict[str, float] = {}

    def add(self, deltas: Mapping[str, float], now: float) -> None:
        """Record counts observed at `now` (a heartbeat's deltas). Time never runs back."""
        now = max(now, self._last)
        self._last = now
        if (now - self._t0) / self.half_life_s > self._REBASE_HALF_LIVES:
            self._rebase(now)
        scale = 2.0 ** ((now - self._t0) / self.half_life_s)
        for title, count in deltas.items():
            if count > 0:
                self._scaled[title] = self._scaled.get(title, 0.0) + count * scale

    def _rebase(self, now: float) -> None:
        factor = 2.0 ** (-(now - self._t0) / self.half_life_s)
        self._scaled = {t: v * factor for t, v in self._scaled.items() if v * factor > 1e-12}
        self._t0 = now

    def at(self, now: float) -> dict[str, float]:
        """Every title's decayed count as of `now`."""
        factor = 2.0 ** (-(now - self._t0) / self.half_life_s)
        return {t: v * factor for t, v in self._scaled.items()}


def boost_reference(scores: Mapping[str, float], rank: int) -> float:
    """The score of the title at `rank` (1 = hottest), or the lowest one if fewer exist."""
    ordered = sorted(scores.values(), reverse=True)
    if not ordered:
        return 1.0
    return ordered[min(rank, len(ordered)) - 1]


def predicted_demand(
    observed: Mapping[str, float],
    releases: Mapping[str, float],
    now: float,
    policy: PopularityPolicy,
    titles: Iterable[str] | None = None,
) -> dict[str, float]:
    """Observed decayed demand, raised for titles inside their release boost window.

    The boost fades linearly over the window after release, since a release burst fades
    while observation catches up; a title already hotter than its boost keeps its own score.
    """
    demand = dict(observed)
    for title in titles or ():
        demand.setdefault(title, 0.0)
    reference = boost_reference(observed, policy.boost_rank) * policy.boost_factor
    for title, released in releases.items():
        age = now - released
        if -policy.boost_lead_s <= age <= policy.boost_window_s:
            fade = 1.0 if age <= 0 else 1.0 - age / max(policy.boost_window_s, 1e-9)
            boost = reference * max(fade, 0.0)
            if boost > demand.get(title, 0.0):
                demand[title] = boost
    return demand


def blend_site_demand(
    local: Mapping[str, float], fleet_wide: Mapping[str, float], weight: float
) -> dict[str, float]:
    """A site's own demand plus `weight` x the fleet's, scaled to the site's volume.

    Regional taste leads, while titles the site has not asked for yet (a sparse or new site)
    still rank by what everyone else watches.
    """
    local_total = sum(local.values())
    fleet_total = sum(fleet_wide.values())
    scale = weight * (local_total / fleet_total if fleet_total > 0 and local_total > 0 else 1.0)
    out = {t: scale * v for t, v in fleet_wide.items()}
    for title, value in local.items():
        out[title] = out.get(title, 0.0) + value
    return out

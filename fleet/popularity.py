"""Title popularity: exponentially decayed byte counts from heartbeat deltas, plus a boost.

The server feeds every heartbeat's per-title deltas into `Popularity` with the clock it
owns; the planner (fleet/planner.py) reads `predicted_demand` over `Popularity.rates`, which
adds a burst for titles released recently or about to be (release dates are known from the
catalog in advance).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DAY_S = 86_400.0


@dataclass(frozen=True)
class PopularityPolicy:
    # Half-life of a byte served for established titles: their demand is steady, and a long
    # memory averages out the noise of a small site's few sessions per title per day.
    half_life_s: float = 14 * DAY_S
    # Titles released (or first seen) less than `young_age_s` ago rise and fade within days:
    # they are judged on a short half-life, as a share of the traffic since their release.
    young_half_life_s: float = DAY_S
    # Four weeks: by then a release's burst weighs little even in the long count.
    young_age_s: float = 28 * DAY_S
    # A title seen for minutes is judged on at least this much traffic: one early session
    # must not look like a hit (the release boost covers its first days anyway).
    min_exposure_s: float = 6 * 3600.0
    # A session steered away from its site's appliances sends that site no heartbeat bytes
    # (nor any appliance, if the origin serves it); it counts as this share of its title.
    miss_session_share: float = 0.5
    # A new title is predicted as popular as the title ranked `boost_rank` today ...
    boost_rank: int = 5
    boost_factor: float = 1.0
    # ... from `boost_lead_s` before release (fill the night before) for `boost_window_s`.
    boost_lead_s: float = 86_400.0
    boost_window_s: float = 2 * 86_400.0

    def __post_init__(self) -> None:
        if self.half_life_s <= 0 or self.young_half_life_s <= 0:
            raise ValueError("half-lives must be > 0")
        if min(self.boost_window_s, self.boost_lead_s, self.young_age_s, self.min_exposure_s) < 0:
            raise ValueError("boost windows, young_age_s and min_exposure_s must be >= 0")
        if not 0 < self.miss_session_share <= 1:
            raise ValueError("miss_session_share must be in (0, 1]")
        if self.boost_rank < 1 or self.boost_factor < 0:
            raise ValueError("boost_rank must be >= 1 and boost_factor >= 0")


class DecayedCounts:
    """Per-title counts that decay with a half-life; adding is O(1) per title.

    Values are stored scaled to a reference time (`_t0`): a count c added at time t is kept
    as c * 2^((t - t0) / half_life), so nothing needs touching when time passes. The
    reference moves forward before the scale could overflow. The total over all titles is
    kept the same way, with a checkpoint every `checkpoint_s`, so the decayed traffic since
    any moment (a title's exposure since its release) is one subtraction.
    """

    _REBASE_HALF_LIVES = 400.0
    # Older than this many half-lives, traffic since then is the whole total (to 0.4%).
    _HORIZON_HALF_LIVES = 8.0

    def __init__(self, half_life_s: float, start: float, checkpoint_s: float = 900.0) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be > 0")
        self.half_life_s = half_life_s
        self.start = start
        self._t0 = start
        self._last = start
        self._scaled: dict[str, float] = {}
        self._total = 0.0
        self._checkpoint_s = checkpoint_s
        self._times: list[float] = []
        self._totals: list[float] = []  # scaled total before anything added at _times[i]

    def add(self, deltas: Mapping[str, float], now: float) -> None:
        """Record counts observed at `now` (a heartbeat's deltas)."""
        if now < self._last:
            self.clock_back(now)
        self._last = now
        if (now - self._t0) / self.half_life_s > self._REBASE_HALF_LIVES:
            self._rebase(now)
        if not self._times or now - self._times[-1] >= self._checkpoint_s:
            self._checkpoint(now)
        scale = 2.0 ** ((now - self._t0) / self.half_life_s)
        for title, count in deltas.items():
            if count > 0:
                self._scaled[title] = self._scaled.get(title, 0.0) + count * scale
                self._total += count * scale

    def titles(self) -> set[str]:
        return set(self._scaled)

    def retain(self, keep: Container[str]) -> int:
        """Forget every title not in `keep`; how many went. The totals keep their traffic:
        it was served, and the checkpoints before it hold it too."""
        gone = [t for t in self._scaled if t not in keep]
        for title in gone:
            del self._scaled[title]
        return len(gone)

    def _checkpoint(self, now: float) -> None:
        self._times.append(now)
        self._totals.append(self._total)
        horizon = now - self._HORIZON_HALF_LIVES * self.half_life_s
        if self._times[0] < horizon:
            keep = bisect.bisect_left(self._times, horizon)
            del self._times[:keep], self._totals[:keep]

    def clock_back(self, now: float) -> None:
        """The clock reads before the latest time seen (it was stepped back): what was
        counted at a later time is taken as counted `now`. Without this the reference time
        could stay ahead of the clock, and a scale of 2^((t0 - now) / half_life) overflows
        once the clock is more than 1024 half-lives behind it (an hour's half-life: 43 days).
        Decayed to the latest time first, so no count weighs more than it did then."""
        if now >= self._last:
            return
        self._rebase(self._last)
        self._t0 = self._last = now
        self.start = min(self.start, now)
        # Still sorted; a checkpoint "from the future" now marks the present.
        self._times = [min(t, now) for t in self._times]

    def _factor(self, now: float) -> float:
        """The decay from the reference time to `now`; a `now` before it (a clock stepped
        back, and not counted at since) reads as the reference time itself, never as growth."""
        return 2.0 ** (-max(now - self._t0, 0.0) / self.half_life_s)

    def _rebase(self, now: float) -> None:
        factor = self._factor(now)
        self._scaled = {t: v * factor for t, v in self._scaled.items() if v * factor > 1e-12}
        self._total *= factor
        self._totals = [v * factor for v in self._totals]
        self._t0 = now

    def to_dict(self) -> dict[str, Any]:
        """The whole state as JSON-ready values, for keeping across a restart."""
        return {
            "half_life_s": self.half_life_s,
            "start": self.start,
            "t0": self._t0,
            "last": self._last,
            "scaled": self._scaled,
            "total": self._total,
            "checkpoint_s": self._checkpoint_s,
            "times": self._times,
            "totals": self._totals,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DecayedCounts:
        """The inverse of to_dict; ValueError (or KeyError/TypeError) on a damaged one."""
        out = cls(float(doc["half_life_s"]), float(doc["start"]), float(doc["checkpoint_s"]))
        out._t0, out._last = float(doc["t0"]), float(doc["last"])
        out._scaled = {str(t): float(v) for t, v in doc["scaled"].items()}
        out._total = float(doc["total"])
        out._times = [float(x) for x in doc["times"]]
        out._totals = [float(x) for x in doc["totals"]]
        if len(out._times) != len(out._totals) or out._last < out._t0:
            raise ValueError("inconsistent decayed counts")
        values = [out._t0, out._last, out.start, out._total, *out._scaled.values()]
        if not all(math.isfinite(v) for v in [*values, *out._times, *out._totals]):
            raise ValueError("decayed counts that are not finite")
        if out._times != sorted(out._times):
            raise ValueError("checkpoints out of order")
        return out

    def at(self, now: float) -> dict[str, float]:
        """Every title's decayed count as of `now`."""
        factor = self._factor(now)
        return {t: v * factor for t, v in self._scaled.items()}

    def total_since(self, since: float, now: float) -> float:
        """Decayed count over all titles of what was added after `since`, as of `now`.

        Counts from the first checkpoint at or after `since`, so the resolution is one
        checkpoint interval; beyond the horizon it is (to 0.4%) the whole total.
        """
        i = bisect.bisect_left(self._times, since)
        before = self._totals[i] if i < len(self._totals) else self._total
        return (self._total - before) * self._factor(now)


class Popularity:
    """Demand per title from heartbeat byte counts, on two time scales.

    Established titles are judged on the long half-life. A title released (or first seen)
    less than `young_age_s` ago is judged on the short one, and as a share of the traffic
    since its release rather than of a whole window: a film out since last night has had a
    fraction of the time to collect counts that an old favourite had, and undercounting it
    would drop it from tonight's fill while it is at its hottest. Both come out in the long
    counter's units (bytes per long window), so they rank against each other.
    """

    def __init__(self, policy: PopularityPolicy, start: float) -> None:
        self.policy = policy
        self.long = DecayedCounts(policy.half_life_s, start)
        self.short = DecayedCounts(policy.young_half_life_s, start)

    def add(self, deltas: Mapping[str, float], now: float) -> None:
        self.long.add(deltas, now)
        self.short.add(deltas, now)

    def titles(self) -> set[str]:
        """Every title with a count."""
        return self.long.titles() | self.short.titles()

    def retain(self, keep: Container[str]) -> int:
        """Forget the titles not in `keep` (left the catalogue, or never in it); how many
        entries went."""
        return self.long.retain(keep) + self.short.retain(keep)

    def to_dict(self) -> dict[str, Any]:
        return {"long": self.long.to_dict(), "short": self.short.to_dict()}

    @classmethod
    def restore(cls, policy: PopularityPolicy, doc: Mapping[str, Any], start: float) -> Popularity:
        """Counts kept by to_dict, when they were kept under the same half-lives (a changed
        policy starts afresh: old counts would read on the wrong time scale)."""
        out = cls(policy, start)
        try:
            long, short = (
                DecayedCounts.from_dict(doc["long"]),
                DecayedCounts.from_dict(doc["short"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return out
        if (long.half_life_s, short.half_life_s) == (policy.half_life_s, policy.young_half_life_s):
            # Kept while the clock was ahead (and set right since): taken as counted now.
            long.clock_back(start)
            short.clock_back(start)
            out.long, out.short = long, short
        return out

    def rates(self, now: float, releases: Mapping[str, float]) -> dict[str, float]:
        """Each title's expected bytes per long window, from what has been observed."""
        out = self.long.at(now)
        window = self.long.total_since(self.long.start, now)
        if window <= 0:
            return out
        short = self.short.at(now)
        for title in set(out) | set(short):
            released = releases.get(title)
            if released is None:
                continue  # no date: a plain long-window count
            young = now - released < self.policy.young_age_s
            counter, counts = (self.short, short) if young else (self.long, out)
            # Counting starts at the later of the release and our own start (a restart).
            exposure = max(
                counter.total_since(max(released, counter.start), now),
                counter.total_since(now - self.policy.min_exposure_s, now),
            )
            if exposure > 0:
                out[title] = counts.get(title, 0.0) / exposure * window
        return out


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

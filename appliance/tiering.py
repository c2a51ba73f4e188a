"""Which tier a title belongs on: per-title request rates with exponential decay, and the moves
that follow from them. Pure: the caller passes the clock's readings in.

A rate is an exponentially weighted average of requests/s with a configured half-life; titles
at or above `hot_rate` belong on the ssd tier, the rest on hdd. mover.py feeds it hit counts
and carries out the moves through store.py; a move that failed waits (`backoff_after`)
before it is tried again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.config import Tier

# A hot title is demoted only once its rate falls below half of hot_rate, so a title hovering
# around the threshold is not copied back and forth between tiers.
DEMOTE_FRACTION = 0.5
# A failed move is tried again a minute later, then after twice as long each time it fails
# again, at most an hour apart (as the fill retries a failed run): a title whose copy keeps
# failing must not re-read its source and rewrite a failing disk every few seconds.
MOVE_RETRY_S = 60.0
MOVE_RETRY_MAX_S = 3600.0


@dataclass(frozen=True)
class Rate:
    """A decayed request rate (requests/s) as of time `at` (seconds, any epoch)."""

    value: float
    at: float


@dataclass(frozen=True)
class Move:
    title_id: str
    to_tier: Tier
    rate: float


def rebased(rate: Rate, now: float) -> Rate:
    """`rate` stamped no later than `now`. One stamped ahead of the clock (written while it
    was ahead, and set right since) is taken as stamped now: left ahead, it would not decay
    until the clock caught up (a month, after an RTC a month fast), and a title hot then
    would hold the fast tier all that time. Never grown: it keeps the value it had."""
    return rate if rate.at <= now else Rate(rate.value, now)


def decayed(rate: Rate, now: float, half_life_s: float) -> float:
    """The rate's value at `now`, decayed since it was last updated."""
    elapsed = now - rebased(rate, now).at
    return rate.value * math.pow(0.5, elapsed / half_life_s)


def observe(rate: Rate | None, count: int, now: float, half_life_s: float) -> Rate:
    """Add `count` requests seen at `now`. Each request adds ln2/half_life, which makes the
    value converge to the true requests/s of a steady stream. Stamped `now`, even when the
    old rate was stamped later (see `rebased`)."""
    base = decayed(rate, now, half_life_s) if rate else 0.0
    return Rate(value=base + count * math.log(2) / half_life_s, at=now)


def wanted_tier(rate: float, hot_rate: float, tiers: Iterable[Tier]) -> Tier:
    """The tier a title with `rate` should live on, among the tiers this appliance has."""
    available = set(tiers)
    if len(available) == 1:
        return next(iter(available))
    return "ssd" if rate >= hot_rate else "hdd"


def tier_preference(wanted: Tier, tiers: Iterable[Tier]) -> list[Tier]:
    """The tiers to try for a title, best first: the one its rate asks for, then the others
    (a hot title waits on the slow tier until the fast one has room, rather than being
    refused; a cold one takes the fast tier rather than none)."""
    return [wanted, *sorted(t for t in set(tiers) if t != wanted)]


def plan_moves(
    placed: Mapping[str, Tier],
    rates: Mapping[str, float],
    hot_rate: float,
    tiers: Iterable[Tier],
    demote_fraction: float = DEMOTE_FRACTION,
) -> list[Move]:
    """Moves that put titles on the tier their rate asks for: promotions first, hottest first
    (they help viewers most), then demotions, coldest first (they free the fast tier)."""
    available = set(tiers)
    if available != {"ssd", "hdd"}:
        return []
    promote, demote = [], []
    for title_id, tier in placed.items():
        rate = rates.get(title_id, 0.0)
        if tier == "hdd" and rate >= hot_rate:
            promote.append(Move(title_id, "ssd", rate))
        elif tier == "ssd" and rate < hot_rate * demote_fraction:
            demote.append(Move(title_id, "hdd", rate))
    promote.sort(key=lambda m: (-m.rate, m.title_id))
    demote.sort(key=lambda m: (m.rate, m.title_id))
    return promote + demote


@dataclass(frozen=True)
class Backoff:
    """A title whose move failed `failures` times in a row is not moved before `until`."""

    failures: int
    until: float


def backoff_after(
    prev: Backoff | None,
    now: float,
    first_s: float = MOVE_RETRY_S,
    max_s: float = MOVE_RETRY_MAX_S,
) -> Backoff:
    """The wait after one more failed move at `now`: `first_s`, doubling, at most `max_s`."""
    failures = (prev.failures if prev else 0) + 1
    return Backoff(failures, now + min(first_s * 2 ** min(failures - 1, 32), max_s))


def due(moves: Iterable[Move], backoffs: Mapping[str, Backoff], now: float) -> list[Move]:
    """The moves whose title is not waiting out a backoff at `now`."""
    return [m for m in moves if m.title_id not in backoffs or now >= backoffs[m.title_id].until]

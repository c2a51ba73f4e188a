"""Steering: client address + title → ranked appliances, as a pure function of a snapshot.

The HTTP/gRPC shells count `SteeringDecision.outcome` and turn the ranked candidates into
signed URLs; nothing here does I/O, so every rule is tested directly (tests/fleet).

Ranking, best first:
1. appliances of the client's site (longest prefix match) that hold the complete title, are
   healthy and below `load_threshold` of capacity, ordered by capacity-weighted rendezvous
   hashing on the title (cache affinity), ties by spare capacity — except that an appliance
   above (1 + epsilon) x its site's mean utilisation drops behind those within the bound
   (consistent hashing with bounded loads), so a hot title spills to peers instead of
   saturating one box;
2. eligible appliances of other sites (of any site, for a client in no site), ranked the
   same way over them all, the bound from their mean: titles spread over them and each
   title keeps one order, so sessions from every site that misses it meet one cache;
3. the origin, only when fewer than `min_urls` appliances qualify and the policy allows it.

A title withdrawn from the origin, or (once its catalogue is known) never listed by it, is
refused (UnlistedTitleError, a 404): no appliance is planned to hold it, and the origin has
nothing to serve. The HTTP shell may read the catalogue anew and ask once more (fleet/http.py).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
import statistics
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fleet.errors import UnknownNameError
from fleet.model import (
    SERVING_STATES,
    Appliance,
    FleetSnapshot,
    Site,
    check_title,
    parse_address,
)

Outcome = Literal[
    "in_site",
    "outside_site_health_miss",
    "outside_site_content_miss",
    "no_site",
    "origin",
    "none",
]
OUTCOMES: tuple[Outcome, ...] = (
    "in_site",
    "outside_site_health_miss",
    "outside_site_content_miss",
    "no_site",
    "origin",
    "none",
)
ORIGIN_NAME = "origin"
# The fastest rate an appliance may claim (1 Tb/s, beyond any box's network ports): the
# registry clamps capacity and load to it, and the site mean reads no more of either.
MAX_RATE_BPS = 1e12
# In a site's mean utilisation no appliance weighs more than this many times the median
# capacity of its site: one claiming far more than its peers (misconfigured, or lying) and
# carrying nothing would pull the mean to zero, put every peer "over the bound", and so
# switch bounded loads off for the whole site.
MAX_WEIGHT_OF_MEDIAN = 10.0


@dataclass(frozen=True)
class SteeringPolicy:
    # New sessions only go to appliances below this share of advertised capacity.
    load_threshold: float = 0.9
    # Bounded loads: skip appliances above (1 + epsilon) x the site's mean utilisation.
    epsilon: float = 0.25
    min_urls: int = 2
    max_urls: int = 3
    origin_fallback: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.load_threshold <= 1:
            raise ValueError("load_threshold must be in (0, 1]")
        if self.epsilon < 0:
            raise ValueError("epsilon must be >= 0")
        if not 1 <= self.min_urls <= self.max_urls:
            raise ValueError("need 1 <= min_urls <= max_urls")


@dataclass(frozen=True)
class Candidate:
    """One ranked URL target; `name` is stable so playback can make it an HLS/DASH pathway."""

    name: str
    site: str
    url: str
    reason: str
    kind: Literal["appliance", "origin"] = "appliance"


@dataclass(frozen=True)
class SteeringDecision:
    client_ip: str
    title_id: str
    client_site: str | None
    outcome: Outcome
    candidates: tuple[Candidate, ...]
    # What `excluded` is worked out from, when read.
    snapshot: FleetSnapshot = field(repr=False, compare=False)
    policy: SteeringPolicy = field(repr=False, compare=False)

    @property
    def excluded(self) -> tuple[str, ...]:
        """Why appliances were left out, "name: reason", for `edgeflix fleet steer`. Worked
        out only when read: it names every ineligible appliance of the fleet (68 KB per
        answer at ~2,800), which a player's answer neither needs nor may see."""
        return exclusions(self.snapshot, self.title_id, self.policy)


_MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=1 << 16)
def _hash64(text: str) -> int:
    """A name's or title id's 64-bit hash, cached: the same names and hot titles recur in
    every steering answer and, titles x appliances times, in every plan."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def rendezvous_keys(names: Iterable[str], weights: Iterable[float]) -> list[tuple[int, float]]:
    """What `rendezvous_scores` needs of each appliance, made once for many titles."""
    return [(_hash64(n), w) for n, w in zip(names, weights, strict=True)]


def rendezvous_scores(title_id: str, keys: Sequence[tuple[int, float]]) -> list[float]:
    """Weighted rendezvous (highest random weight) scores of one title on each appliance
    (`rendezvous_keys`): higher wins.

    -weight / ln(u) with u uniform in (0, 1) gives each appliance a share of titles
    proportional to its weight, and removing one appliance moves only its own titles.
    u comes from the pair's two cached hashes, combined and mixed by splitmix64's
    finaliser (a bijection with full avalanche): a hash per pair cost most of a plan.
    """
    title = _hash64(title_id)
    log = math.log
    out = []
    for name, weight in keys:
        z = title ^ name
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        out.append(-weight / log((z + 1) / (2**64 + 1)))
    return out


def rendezvous_score(title_id: str, name: str, weight: float) -> float:
    return rendezvous_scores(title_id, [(_hash64(name), weight)])[0]


def may_serve(
    appliance: Appliance, title_id: str, policy: SteeringPolicy, min_keys_version: int = 0
) -> bool:
    """Whether `appliance` may take a new session for `title_id`: `exclusion_reason` is
    None, without making the reason (this runs for every appliance on every steer)."""
    return (
        appliance.state in SERVING_STATES
        and appliance.keys_version >= min_keys_version
        and appliance.holds_complete(title_id)
        and appliance.capacity_bps > 0
        and not appliance.utilisation >= policy.load_threshold  # NaN: as exclusion_reason
    )


def exclusion_reason(
    appliance: Appliance, title_id: str, policy: SteeringPolicy, min_keys_version: int = 0
) -> str | None:
    """Why `appliance` may not take a new session for `title_id`, or None if it may
    (`may_serve`, in words)."""
    if appliance.state not in SERVING_STATES:
        return appliance.state
    if appliance.keys_version < min_keys_version:
        return f"no current URL key (runs key set {appliance.keys_version})"
    if not appliance.holds_complete(title_id):
        return "partial title" if title_id in appliance.titles else "title not held"
    if appliance.capacity_bps <= 0:
        return "no capacity advertised"
    if appliance.utilisation >= policy.load_threshold:
        return f"load {appliance.utilisation:.0%} >= threshold {policy.load_threshold:.0%}"
    return None


def site_mean_utilisation(members: Iterable[Appliance]) -> float:
    """Load over capacity of the site's serving appliances taken together, each weighing
    its capacity up to MAX_WEIGHT_OF_MEDIAN x the site's median one, and counted at most
    full: one reporting a thousand times its capacity in load would otherwise raise the
    bound above every peer (the same switch, the other way). Figures that are not finite
    count as none; capacity is read up to MAX_RATE_BPS. Also the mean of the other sites'
    appliances that may serve a title, for the sessions their own site cannot take."""
    rates = [
        (min(a.capacity_bps, MAX_RATE_BPS), a.load_bps)
        for a in members
        if a.state in SERVING_STATES
        and math.isfinite(a.capacity_bps)
        and math.isfinite(a.load_bps)
        and a.capacity_bps > 0
        and a.load_bps >= 0
    ]
    if not rates:
        return 0.0
    ceiling = MAX_WEIGHT_OF_MEDIAN * statistics.median_low(c for c, _ in rates)
    load = capacity = 0.0
    for cap, used in rates:
        weight = min(cap, ceiling)
        capacity += weight
        load += weight * (min(used, cap) / cap)  # no overflow, whatever the ratio
    return load / capacity


_OLDER = {False: "", True: ", older version"}  # in a candidate's reason


def rank_rendezvous(
    eligible: Sequence[Appliance],
    bound: float,
    title_id: str,
    where: str,
    limit: int,
    digest: str | None = None,
) -> list[Candidate]:
    """The best `limit` of `eligible` for `title_id`, best first: holders of the title's
    current version (`digest`) first (while an update fills, a new session goes to the new
    version, the others stay as fallbacks); then those within `bound`, the utilisation past
    which an appliance drops behind its peers (bounded loads); healthy before degraded; then
    by capacity-weighted rendezvous score, so that each title has an order of its own
    (titles spread, and a title's sessions find its cache), ties by spare capacity and
    name. `where` opens each candidate's reason."""
    if not eligible or limit <= 0:
        return []
    keys = rendezvous_keys((a.name for a in eligible), (a.capacity_bps for a in eligible))
    # Per appliance of the pool on every steer: the figures are read inline, not through
    # the properties (capacity is above 0 here, load below it: may_serve).
    keyed = [
        (
            bool(digest) and a.holds_older(title_id, digest),
            a.load_bps > 0 and a.load_bps > bound * a.capacity_bps,
            a.state != "ok",
            -score,
            a.load_bps - a.capacity_bps,  # most spare first
            a.name,
            i,  # never compares `a`, even were two names the same
            a,
        )
        for i, (a, score) in enumerate(
            zip(eligible, rendezvous_scores(title_id, keys), strict=True)
        )
    ]
    ranked = []
    # Only `limit` (max_urls) are kept: for a client in no site, of the whole fleet.
    for older, over, *_, a in heapq.nsmallest(limit, keyed):
        why = f"over bound {a.utilisation:.0%} > {bound:.0%}" if over else "rendezvous"
        ranked.append(Candidate(a.name, a.site, a.url, f"{where}, {why}{_OLDER[older]}"))
    return ranked


class UnlistedTitleError(UnknownNameError):
    """A valid title id the origin's last listing did not list, or listed as withdrawn: one
    published or restored since then is listed by the next read of the catalogue."""


def steer(
    snapshot: FleetSnapshot,
    client_ip: str,
    title_id: str,
    policy: SteeringPolicy | None = None,
    listed: Container[str] | None = None,
) -> SteeringDecision:
    """Rank where `client_ip` should stream `title_id` from. Raises FleetInputError on a bad IP
    or title id (it becomes a path in every URL); UnlistedTitleError on a title withdrawn,
    or one the origin's catalogue does not list (`listed`: None while that is unknown)."""
    policy = policy or SteeringPolicy()
    check_title(title_id)
    if title_id in snapshot.withdrawn:
        # `origin rm`: appliances still holding it drop it at their next fill, but no new
        # session starts on it meanwhile.
        raise UnlistedTitleError(f"title '{title_id}' was withdrawn from the origin")
    if listed is not None and title_id not in listed:
        # No appliance is planned to hold it and the origin would answer 404 to its URL.
        raise UnlistedTitleError(f"unknown title '{title_id}': the origin does not list it")
    site: Site | None = snapshot.site_of(parse_address(client_ip))
    keys = snapshot.min_keys_version
    eligible = [a for a in snapshot.appliances if may_serve(a, title_id, policy, keys)]
    digest = snapshot.digests.get(title_id)
    eps, limit = policy.epsilon, policy.max_urls

    ranked: list[Candidate] = []
    if site is not None:
        local = [a for a in eligible if a.site == site.name]
        if local:
            bound = (1 + eps) * site_mean_utilisation(snapshot.in_site(site.name))
            ranked += rank_rendezvous(local, bound, title_id, "in site", limit, digest)
    if len(ranked) < limit:
        # Other sites (anywhere, for a client in no site) by the same rule, over them all,
        # the bound from their own mean: boxes far above it (a busy site's) go behind the
        # rest. Least loaded first sent every title to one box, and a burst to the box
        # whose last beat was lowest; rendezvous gives each title one order, the same
        # from every site that cannot serve it, so its sessions meet one cache.
        others = eligible if site is None else [a for a in eligible if a.site != site.name]
        bound = (1 + eps) * site_mean_utilisation(others)
        where = "other site" if site is not None else "client in no site"
        ranked += rank_rendezvous(others, bound, title_id, where, limit - len(ranked), digest)

    if policy.origin_fallback and len(ranked) < policy.min_urls and snapshot.origin_url:
        ranked.append(
            Candidate(ORIGIN_NAME, "", snapshot.origin_url, "origin, last resort", "origin")
        )
    return SteeringDecision(
        client_ip=client_ip,
        title_id=title_id,
        client_site=site.name if site else None,
        outcome=classify(snapshot, site, title_id, ranked),
        candidates=tuple(ranked),
        snapshot=snapshot,
        policy=policy,
    )


def exclusions(snapshot: FleetSnapshot, title_id: str, policy: SteeringPolicy) -> tuple[str, ...]:
    """ "name: reason" for each appliance `steer` leaves out of `title_id`'s ranking."""
    keys = snapshot.min_keys_version
    return tuple(
        f"{a.name}: {why}"
        for a in snapshot.appliances
        if (why := exclusion_reason(a, title_id, policy, keys)) is not None
    )


def classify(
    snapshot: FleetSnapshot, site: Site | None, title_id: str, ranked: list[Candidate]
) -> Outcome:
    """The offload figure an operator watches: where did the best URL point, and why."""
    if not ranked:
        return "none"
    first = ranked[0]
    if first.kind == "origin":
        return "origin"
    if site is None:
        return "no_site"
    if first.site == site.name:
        return "in_site"
    held_locally = any(a.holds_complete(title_id) for a in snapshot.in_site(site.name))
    return "outside_site_health_miss" if held_locally else "outside_site_content_miss"

"""Trace-driven simulation of fill planning: the planner's byte offload against reactive
LRU and LFU caches of the same size and against Belady's offline heuristic.

A seeded synthetic trace: a catalog of films (lognormal around 3 GB) and episodes (around
0.8 GB) with Zipf-like demand, a daily cycle, new releases every day that burst and fade.
The planner (fleet/planner.py) runs once per simulated night (04:00) from the popularity
(fleet/popularity.py) it has observed so far plus the release boost (release dates are in
the catalog ahead of time, as in reality); it never sees the future, and it sees only what
the fleet manager does: bytes served at the edge, and sessions steered to the origin. Its
cache then holds exactly the plan for the day. Offload = bytes served from the edge / bytes
requested, measured after a warm-up so every policy starts from a cache it built itself.

References marked * know what no planner can. online* re-plans every hour from the
generator's true demand with free fills: since requests are independent draws given that
demand, no policy without foresight (nightly, intra-day, LRU, LFU) beats it in expectation;
Belady's distance above it is what knowing the future draws is worth.

Run: .venv/bin/python bench/plan_sim.py [--seed N] [--days N] [--quick]
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import math
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.model import Appliance, TierSpace
from fleet.planner import plan
from fleet.plans import CatalogTitle, PlannerPolicy
from fleet.popularity import Popularity, PopularityPolicy, predicted_demand

HOUR = 3600.0
DAY = 24 * HOUR
GB = 10**9
PLAN_HOUR = 4  # the planner runs, and the fill completes, in the night's trough
BEAT = HOUR  # heartbeats deliver counts this often (real ones every few seconds)


@dataclass(frozen=True)
class SimTitle:
    title_id: str
    size: int
    released: float  # seconds since the start of the trace; < 0 for the back catalogue
    base_weight: float  # long-run Zipf weight
    burst_weight: float  # extra weight at release, fading with a half-life


@dataclass(frozen=True)
class Request:
    at: float
    title: str
    size: int  # whole title (what a cache admits)
    watched: int  # bytes this session streams


@dataclass(frozen=True)
class Scenario:
    seed: int = 7
    titles: int = 3000
    days: int = 21
    warmup_days: int = 6
    releases_per_day: int = 4
    requests_per_day: int = 8000
    zipf_alpha: float = 0.85
    burst_half_life_days: float = 2.0


def build_catalog(sc: Scenario, rng: random.Random) -> list[SimTitle]:
    """Back catalogue plus `releases_per_day` new titles per day, all with Zipf weights."""
    total = sc.titles + sc.releases_per_day * sc.days
    ranks = list(range(1, total + 1))
    rng.shuffle(ranks)
    top = 1.0  # weight of rank 1; a release bursts to somewhere around the top 1..20
    out = []
    for i in range(total):
        film = rng.random() < 0.6
        size = rng.lognormvariate(math.log(3.0 if film else 0.8), 0.45 if film else 0.35)
        weight = ranks[i] ** -sc.zipf_alpha
        if i < sc.titles:
            released, burst = -rng.uniform(30, 3000) * DAY, 0.0
        else:
            day = (i - sc.titles) // sc.releases_per_day
            released = day * DAY + rng.uniform(0, 20) * HOUR
            burst = top * rng.uniform(1, 20) ** -sc.zipf_alpha
        out.append(SimTitle(f"t{i:05d}", int(size * GB), released, weight, burst))
    return out


def daily_cycle(hour: float) -> float:
    """Relative request rate: peak at 21:00, trough at 09:00 (about 8:1).

    A plain cosine, so the trough sits 12 h after the peak, later than a real one (around
    05:00). Measured: a curve with its trough at 05:00 moves the planner's ratio by under
    0.002, and planning at 02:00, 04:00, 06:00 or 09:00 by under 0.001.
    """
    return 1.0 + 0.78 * math.cos((hour - 21.0) / 24.0 * 2 * math.pi)


def build_trace(sc: Scenario, catalog: list[SimTitle], rng: random.Random) -> list[Request]:
    trace: list[Request] = []
    per_hour = sc.requests_per_day / 24.0
    decay = math.log(2) / (sc.burst_half_life_days * DAY)
    for hour in range(sc.days * 24):
        start = hour * HOUR
        live = [t for t in catalog if t.released <= start + HOUR]
        weights = []
        for t in live:
            age = max(start - t.released, 0.0)
            weights.append(t.base_weight + t.burst_weight * math.exp(-decay * age))
        cum = list(itertools.accumulate(weights))
        n = max(int(rng.gauss(per_hour * daily_cycle(hour % 24), 3)), 0)
        for at in sorted(rng.uniform(start, start + HOUR) for _ in range(n)):
            title = live[bisect.bisect(cum, rng.random() * cum[-1])]
            if title.released > at:
                continue  # released later in this hour
            watched = int(title.size * min(1.0, rng.uniform(0.15, 1.3)))
            trace.append(Request(at, title.title_id, title.size, watched))
    return trace


class Result:
    def __init__(self) -> None:
        self.hit = 0
        self.total = 0
        self.filled = 0  # bytes copied into the cache (origin → edge)

    def count(self, req: Request, hit: bool, measure: bool) -> None:
        if measure:
            self.total += req.watched
            self.hit += req.watched if hit else 0

    @property
    def offload(self) -> float:
        return self.hit / self.total if self.total else 0.0


def run_lru(trace: list[Request], capacity: int, measure_from: float) -> Result:
    res, cache, used = Result(), OrderedDict[str, int](), 0
    for req in trace:
        measure = req.at >= measure_from
        if req.title in cache:
            cache.move_to_end(req.title)
            res.count(req, True, measure)
            continue
        res.count(req, False, measure)
        if req.size > capacity:
            continue
        while used + req.size > capacity:
            used -= cache.popitem(last=False)[1]
        cache[req.title] = req.size
        used += req.size
        res.filled += req.size if measure else 0
    return res


def run_lfu(trace: list[Request], capacity: int, measure_from: float) -> Result:
    """LFU with complete history (counts survive eviction), evicting the least counted."""
    res, counts, cache, used = Result(), dict[str, int](), dict[str, int](), 0
    heap: list[tuple[int, float, str]] = []
    for req in trace:
        measure = req.at >= measure_from
        counts[req.title] = counts.get(req.title, 0) + 1
        hit = req.title in cache
        res.count(req, hit, measure)
        if hit:
            heapq.heappush(heap, (counts[req.title], req.at, req.title))
            continue
        if req.size > capacity:
            continue
        while used + req.size > capacity:
            c, _at, victim = heapq.heappop(heap)
            if victim in cache and counts[victim] == c:
                used -= cache.pop(victim)
        cache[req.title] = req.size
        used += req.size
        heapq.heappush(heap, (counts[req.title], req.at, req.title))
        res.filled += req.size if measure else 0
    return res


def run_belady(trace: list[Request], capacity: int, measure_from: float) -> Result:
    """Belady's heuristic for variable sizes: evict (or bypass) the object requested furthest
    in the future. Optimal for equal sizes; for variable sizes a strong, not exact, bound."""
    nxt: list[float] = [math.inf] * len(trace)
    seen: dict[str, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        nxt[i] = seen.get(trace[i].title, math.inf)
        seen[trace[i].title] = i
    res, cache, used = Result(), dict[str, tuple[int, float]](), 0
    heap: list[tuple[float, str]] = []
    for i, req in enumerate(trace):
        measure = req.at >= measure_from
        hit = req.title in cache
        res.count(req, hit, measure)
        if hit:
            cache[req.title] = (req.size, nxt[i])
            heapq.heappush(heap, (-nxt[i], req.title))
            continue
        if req.size > capacity or nxt[i] == math.inf:
            continue
        evicted: list[tuple[str, tuple[int, float]]] = []
        free = capacity - used
        while free < req.size:
            neg, victim = heapq.heappop(heap)
            if victim not in cache or cache[victim][1] != -neg:
                continue  # stale heap entry
            if -neg < nxt[i]:  # everything left is needed sooner than the newcomer: bypass
                heapq.heappush(heap, (neg, victim))
                break
            evicted.append((victim, cache.pop(victim)))
            free += evicted[-1][1][0]
        if free < req.size:
            for victim, entry in evicted:  # undo: the newcomer is not worth it
                cache[victim] = entry
                heapq.heappush(heap, (-entry[1], victim))
            continue
        used = capacity - free + req.size
        cache[req.title] = (req.size, nxt[i])
        heapq.heappush(heap, (-nxt[i], req.title))
        res.filled += req.size if measure else 0
    return res


def next_day_demand(trace: list[Request], start: int, until: float) -> dict[str, float]:
    demand: dict[str, float] = {}
    for req in itertools.islice(trace, start, None):
        if req.at >= until:
            break
        demand[req.title] = demand.get(req.title, 0.0) + req.watched
    return demand


def model_demand(sc: Scenario, catalog: list[SimTitle], night: float) -> dict[str, float]:
    """The generator's own expected bytes for the coming day (weights at midday x size)."""
    decay = math.log(2) / (sc.burst_half_life_days * DAY)
    demand = {}
    for t in catalog:
        if t.released <= night + DAY:
            age = max(night + DAY / 2 - t.released, 0.0)
            weight = t.base_weight + t.burst_weight * math.exp(-decay * age)
            demand[t.title_id] = weight * t.size
    return demand


def model_demand_now(sc: Scenario, catalog: list[SimTitle], at: float) -> dict[str, float]:
    """The generator's expected bytes per title over the hour starting at `at`: the weights
    build_trace draws that hour's requests with, x size, x the share of the hour released."""
    decay = math.log(2) / (sc.burst_half_life_days * DAY)
    demand = {}
    for t in catalog:
        if t.released <= at + HOUR:
            live = min((at + HOUR - t.released) / HOUR, 1.0)
            weight = t.base_weight + t.burst_weight * math.exp(-decay * max(at - t.released, 0.0))
            demand[t.title_id] = weight * t.size * live
    return demand


def run_planner(
    trace: list[Request],
    catalog: list[SimTitle],
    capacity: int,
    measure_from: float,
    pop_policy: PopularityPolicy,
    planner_policy: PlannerPolicy,
    oracle: Callable[[int, float], dict[str, float]] | None = None,
    plan_every: float = DAY,
) -> Result:
    """Nightly plans from observed byte counts (fleet/popularity.py, fed as heartbeats would
    feed it); the day is served from the plan.

    With an `oracle` (trace position, night → demand) the plan is made from knowledge no
    real planner has; those runs are printed as references, marked with '*'.
    """
    sizes = {t.title_id: CatalogTitle(t.size, t.title_id) for t in catalog}
    releases = {t.title_id: t.released for t in catalog if t.released >= 0}
    popularity = Popularity(pop_policy, start=0.0)
    box = Appliance("edge", "home", "", tiers=(TierSpace("hdd", capacity),))
    res, previous, held = Result(), None, frozenset[str]()
    next_plan, next_beat, i = PLAN_HOUR * HOUR, BEAT, 0
    pending: dict[str, float] = {}
    while i < len(trace):
        if trace[i].at >= next_beat and next_beat < next_plan:
            popularity.add(pending, next_beat)
            pending, next_beat = {}, next_beat + BEAT
            continue
        if trace[i].at >= next_plan:
            popularity.add(pending, next_plan)
            pending, next_beat = {}, next_plan + BEAT
            if oracle is not None:
                demand = oracle(i, next_plan)
            else:
                observed = popularity.rates(next_plan, releases)
                demand = predicted_demand(observed, releases, next_plan, pop_policy)
            previous = plan((box,), demand, sizes, previous, planner_policy)
            new_held = previous.appliances["edge"].title_ids
            if next_plan >= measure_from:
                res.filled += sum(sizes[t].size_bytes for t in new_held - held)
            held = new_held
            next_plan += plan_every
            continue
        req = trace[i]
        hit = req.title in held
        res.count(req, hit, req.at >= measure_from)
        # What the fleet manager sees: the bytes an appliance served, in its heartbeat; for a
        # session sent to the origin only the steering answer (FleetService._count_unserved).
        seen = req.watched if hit else req.size * pop_policy.miss_session_share
        pending[req.title] = pending.get(req.title, 0.0) + seen
        i += 1
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--days", type=int, default=21)
    ap.add_argument(
        "--requests-per-day", type=int, default=Scenario.requests_per_day,
        help="sessions the site serves per day",
    )  # fmt: skip
    ap.add_argument(
        "--quick", action="store_true",
        help="smaller trace, for a smoke run (800 titles, 10 days, 2000 sessions a day)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick and (args.days != 21 or args.requests_per_day != Scenario.requests_per_day):
        ap.error("--quick sets its own --days and --requests-per-day")
    if args.requests_per_day < 100:
        ap.error("--requests-per-day must be at least 100 (fewer leave most days empty)")
    sc = Scenario(seed=args.seed, days=args.days, requests_per_day=args.requests_per_day)
    if args.quick:
        sc = Scenario(seed=args.seed, titles=800, days=10, warmup_days=4, requests_per_day=2000)
    if sc.days < sc.warmup_days + 3:
        ap.error(f"--days must be at least {sc.warmup_days + 3}: {sc.warmup_days} days of "
                 "warm-up, then at least 3 measured")  # fmt: skip
    rng = random.Random(sc.seed)
    started = time.monotonic()
    catalog = build_catalog(sc, rng)
    trace = build_trace(sc, catalog, rng)
    catalog_bytes = sum(t.size for t in catalog)
    measure_from = sc.warmup_days * DAY
    print(
        f"catalog {len(catalog)} titles, {catalog_bytes / 1e12:.2f} TB; trace {len(trace)} "
        f"requests over {sc.days} days ({sc.releases_per_day} releases/day, Zipf "
        f"{sc.zipf_alpha}), measured after day {sc.warmup_days}; seed {sc.seed}"
    )
    pop_policy = PopularityPolicy()
    # The same bytes as the reactive caches: no headroom kept back in the simulation.
    planner_policy = PlannerPolicy(fill_ratio=1.0)
    exact = PlannerPolicy(hysteresis=0.0, fill_ratio=1.0)

    def planned(
        policy: PlannerPolicy,
        oracle: Callable[[int, float], dict[str, float]] | None = None,
        every: float = DAY,
    ) -> Callable[[int], Result]:
        return lambda cap: run_planner(
            trace, catalog, cap, measure_from, pop_policy, policy, oracle, every
        )

    policies: dict[str, Callable[[int], Result]] = {
        "planner": planned(planner_policy),
        "model*": planned(exact, lambda _i, night: model_demand(sc, catalog, night)),
        "nextday*": planned(exact, lambda i, night: next_day_demand(trace, i, night + DAY)),
        "online*": planned(exact, lambda _i, at: model_demand_now(sc, catalog, at), HOUR),
        "LRU": lambda cap: run_lru(trace, cap, measure_from),
        "LFU": lambda cap: run_lfu(trace, cap, measure_from),
        "Belady": lambda cap: run_belady(trace, cap, measure_from),
    }
    days = sc.days - sc.warmup_days
    rows = []
    for share in (0.05, 0.10, 0.20):
        cap = int(catalog_bytes * share)
        got = {name: run(cap) for name, run in policies.items()}
        for name, r in got.items():
            rows.append((share, name, r, got["Belady"].offload, got["LRU"].offload))
    print(
        f"\n{'cache':>6} {'policy':<8} {'offload':>8} {'vs LRU':>8} {'/Belady':>8} "
        f"{'fill GB/day':>12}"
    )
    for share, name, r, bel, lru in rows:
        print(
            f"{share:>6.0%} {name:<8} {r.offload:>8.1%} {100 * (r.offload - lru):>+7.1f}p "
            f"{r.offload / bel if bel else 0:>8.3f} {r.filled / GB / days:>12.0f}"
        )
    print(
        "\nReferences (*) that know what no planner can: model* plans each night from the "
        "trace generator's true expected demand (the ceiling for any predictor of a nightly "
        "plan); nextday* from the next day's actual requests (also knows the random draws); "
        "online* re-plans every hour from the true demand of that hour with free, instant "
        "fills. Requests are independent draws given that demand, so online* bounds every "
        "policy that does not see the future: nightly or intra-day fill, LRU, LFU alike."
    )
    print(
        "Belady: variable sizes, so the standard heuristic (evict or bypass the object "
        "requested furthest in the future); an offline reference, not an exact optimum. "
        "It fetches on a miss only, as every demand cache does: a policy that fills ahead "
        "of demand (the planner, the * references) can beat it, and does on sparse traces."
    )
    at10 = {name: r.offload for share, name, r, _b, _l in rows if share == 0.10}
    lru_gap = 100 * (at10["planner"] - at10["LRU"])
    bel_ratio = at10["planner"] / at10["Belady"]
    print(
        f"at 10%: planner {lru_gap:+.1f} points vs LRU (goal >= +10), "
        f"{bel_ratio:.3f} of Belady (goal >= 0.95); {time.monotonic() - started:.1f} s"
    )
    print(
        f"        the best nightly plan from the true demand model reaches "
        f"{at10['model*'] / at10['Belady']:.3f} of Belady, from the next day's actual requests "
        f"{at10['nextday*'] / at10['Belady']:.3f}; any policy without foresight, even "
        f"re-filling every hour, {at10['online*'] / at10['Belady']:.3f}."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

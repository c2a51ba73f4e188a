"""What the fleet link reports about the box, gathered from the daemon's parts: traffic from
the serving workers' counters, health and advertised capacity from the health monitor,
titles and tier space from the storage index (read-only). Read by fleetlink.py each beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.config import ApplianceConfig
from appliance.fill.runner import read_state
from appliance.fleetlink_core import HealthState, HeldTitle, fill_progress, to_fill_plan
from appliance.fleetlink_state import StoredPlan
from appliance.hardware import advertised_capacity_bps
from appliance.monitor import HealthReport
from edgeflix.http.stats import ServerStats, title_traffic


@dataclass(frozen=True)
class Traffic:
    """The workers' counters, summed: per-title served (requests, bytes), all bytes sent,
    connections open now."""

    titles: dict[str, tuple[int, int]]
    bytes_total: int
    connections: int


def traffic_of(stats: ServerStats) -> Traffic:
    total = sum(c[1] for c in stats.requests.values())
    return Traffic(title_traffic(stats), total, stats.open_connections)


@dataclass(frozen=True)
class BoxHealth:
    state: HealthState
    reasons: tuple[str, ...]
    capacity_bps: float


def held_titles(index: Path) -> tuple[HeldTitle, ...]:
    """Servable titles (ready) and titles with missing files (incomplete) from the index."""
    from appliance.index import INCOMPLETE, READY, IndexReader

    reader = IndexReader(index)
    try:
        rows = reader.titles()
    finally:
        reader.close()
    return tuple(
        HeldTitle(r.id, r.digest, r.state == READY, r.bytes, r.tier)
        for r in rows
        if r.state in (READY, INCOMPLETE)
    )


def fill_figures(
    config: ApplianceConfig, plan: StoredPlan | None, titles: tuple[HeldTitle, ...]
) -> tuple[int, int, tuple[str, ...]]:
    """Bytes of the running plan held and planned, and the titles the last fill run failed."""
    done, total = fill_progress(
        to_fill_plan(plan.document) if plan else None,
        plan.sizes if plan else {},
        {t.id: t.digest for t in titles if t.complete},
    )
    fill = read_state(config.fill.staging) or {}
    failed = (t for t, p in fill.get("titles", {}).items() if p.get("state") == "failed")
    return done, total, tuple(sorted(failed))


def tier_space(config: ApplianceConfig, out_of_service: set[str]) -> dict[str, tuple[int, int]]:
    """Tier → (capacity, used) over the disks in service."""
    from appliance.disks import StorageError, measure, open_disks
    from appliance.index import IndexReader

    reader = IndexReader(config.storage.index)
    try:
        indexed = reader.bytes_by_disk()
    finally:
        reader.close()
    out: dict[str, tuple[int, int]] = {}
    for cfg in config.storage.disks:
        if str(cfg.path.resolve()) in out_of_service:
            continue
        try:
            (disk,) = open_disks([cfg])
            usage = measure(disk, indexed.get(disk.id, 0))
        except (StorageError, OSError):
            continue
        cap, used = out.get(disk.tier, (0, 0))
        out[disk.tier] = (cap + usage.capacity, used + usage.used)
    return out


def box_health(report: HealthReport) -> BoxHealth:
    h = report.health
    return BoxHealth(h.state, tuple(h.reasons), float(advertised_capacity_bps(report.profile, h)))

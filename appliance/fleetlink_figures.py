"""What the fleet link reports about the box, gathered from the daemon's parts: traffic from
the serving workers' counters, health and advertised capacity from the health monitor,
titles and tier space from the storage index (read-only). Read by fleetlink.py each beat.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
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


@dataclass(frozen=True)
class FolderSpace:
    """One configured disk folder, as far as the fleet's tier space goes."""

    tier: str
    capacity: int  # disks.Disk.capacity: max_bytes, or the whole filesystem
    indexed: int  # bytes the index holds in this folder
    capped: bool  # max_bytes set: only the indexed bytes count as used (disks.measure)


def filesystem_space(
    folders: Sequence[FolderSpace], total: int, free: int
) -> dict[str, tuple[int, int]]:
    """Tier → (capacity, used) for the folders of one filesystem of `total` bytes, `free` free.

    Every folder on a filesystem can use all of its free space, so adding up each folder's
    own figure told the planner the filesystem two or more times over (the README's disk0
    ssd + disk1 hdd on one filesystem: twice its size). The planner plans bytes per tier and
    fills every tier at once, so the filesystem counts once, as a fixed split it can fill on
    all tiers together: min(total, the folders' capacities summed), divided in proportion to
    each folder's own capacity (halves when neither has max_bytes). Used: each folder's
    indexed bytes, plus, in folders without max_bytes, a capacity-weighted share of what
    else is on the filesystem; for a lone folder that is what disks.measure counts.
    """
    asked = sum(f.capacity for f in folders)
    shared = min(total, asked)
    foreign = max(0, total - free - sum(f.indexed for f in folders))
    uncapped = sum(f.capacity for f in folders if not f.capped)
    out: dict[str, tuple[int, int]] = {}
    for f in folders:
        cap = shared * f.capacity // asked if asked else 0
        used = f.indexed
        if not f.capped and uncapped:
            used += foreign * f.capacity // uncapped
        tier_cap, tier_used = out.get(f.tier, (0, 0))
        out[f.tier] = (tier_cap + cap, tier_used + used)
    return out


def tier_space(config: ApplianceConfig, out_of_service: set[str]) -> dict[str, tuple[int, int]]:
    """Tier → (capacity, used) over the disks in service, each filesystem counted once."""
    from appliance.disks import Disk, StorageError, by_filesystem, open_disks
    from appliance.index import IndexReader

    reader = IndexReader(config.storage.index)
    try:
        indexed = reader.bytes_by_disk()
    finally:
        reader.close()
    disks: list[Disk] = []
    for cfg in config.storage.disks:
        if str(cfg.path.resolve()) in out_of_service:
            continue
        try:
            disks.extend(open_disks([cfg]))
        except (StorageError, OSError):
            continue
    try:
        groups = by_filesystem(disks)
    except OSError:
        # A disk went away since open_disks: no figures this beat, which the planner reads
        # as not knowing the disks (fleet/planner.py plannable), not as having none.
        return {}
    out: dict[str, tuple[int, int]] = {}
    for group in groups:
        try:
            fs = shutil.disk_usage(group[0].path)
        except OSError:
            continue
        folders = [
            FolderSpace(d.tier, d.capacity, indexed.get(d.id, 0), d.max_bytes is not None)
            for d in group
        ]
        for tier, (cap, used) in filesystem_space(folders, fs.total, fs.free).items():
            tier_cap, tier_used = out.get(tier, (0, 0))
            out[tier] = (tier_cap + cap, tier_used + used)
    return out


def box_health(report: HealthReport) -> BoxHealth:
    h = report.health
    return BoxHealth(h.state, tuple(h.reasons), float(advertised_capacity_bps(report.profile, h)))

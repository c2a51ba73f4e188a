"""What the fleet link reports about the box, gathered from the daemon's parts: traffic from
the serving workers' counters, health and advertised capacity from the health monitor,
titles and tier space from the storage index (read-only). Read by fleetlink.py each beat.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.config import ApplianceConfig
from appliance.fill.layout import DISK_STAGING
from appliance.fill.runner import read_state
from appliance.fleetlink_core import HealthState, HeldTitle, fill_progress, to_fill_plan
from appliance.fleetlink_files import StoredPlan
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


@dataclass(frozen=True)
class FillFigures:
    """The running plan's bytes held and planned, and the titles the last fill run failed
    (title → the fill's message; sorted by title)."""

    done: int
    total: int
    failed: Mapping[str, str]


def fill_figures(
    config: ApplianceConfig, plan: StoredPlan | None, titles: tuple[HeldTitle, ...]
) -> FillFigures:
    done, total = fill_progress(
        to_fill_plan(plan.document) if plan else None,
        plan.sizes if plan else {},
        {t.id: t.digest for t in titles if t.complete},
    )
    fill = read_state(config.fill.staging) or {}
    failed = {
        str(t): str(p.get("error") or "")
        for t, p in sorted(fill.get("titles", {}).items())
        if isinstance(p, dict) and p.get("state") == "failed"
    }
    return FillFigures(done, total, failed)


@dataclass(frozen=True)
class FolderSpace:
    """One configured disk folder, as far as the fleet's tier space goes."""

    tier: str
    capacity: int  # disks.Disk.capacity: max_bytes, or the whole filesystem
    indexed: int  # bytes the index holds in this folder (replaced versions' files included)
    capped: bool  # max_bytes set: only the indexed bytes count as used (disks.measure)
    high_watermark: float = 1.0  # its disk's: loads stop there (disks.measure)
    # Bytes the fill is staging in the folder: a title on its way, which the planner counts
    # whole already; not other data on the filesystem.
    staged: int = 0
    # Of `indexed`, the files of replaced versions kept for their sessions: a load that needs
    # the room deletes them (capacity.make_room), so they are no room taken.
    reclaimable: int = 0


def folder_space(folders: Sequence[FolderSpace], total: int, free: int) -> list[tuple[int, int]]:
    """(capacity, used) of each folder of one filesystem, as filesystem_space explains;
    used before `reclaimable` is taken off."""
    asked = sum(f.capacity for f in folders)
    shared = min(total, asked)
    foreign = max(0, total - free - sum(f.indexed + f.staged for f in folders))
    uncapped = sum(f.capacity for f in folders if not f.capped)
    out = []
    for f in folders:
        cap = shared * f.capacity // asked if asked else 0
        used = f.indexed
        if not f.capped and uncapped:
            used += foreign * f.capacity // uncapped
        out.append((cap, used))
    return out


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
    else is on the filesystem; for a lone folder that is what disks.measure counts. The
    fill's staging is not "else" (the planner counts the title being filled already), and
    replaced versions' files are not used (a load deletes them when it needs the room).
    """
    out: dict[str, tuple[int, int]] = {}
    for f, (cap, used) in zip(folders, folder_space(folders, total, free), strict=True):
        tier_cap, tier_used = out.get(f.tier, (0, 0))
        out[f.tier] = (tier_cap + cap, tier_used + max(0, used - f.reclaimable))
    return out


def filesystem_fillable(folders: Sequence[FolderSpace], total: int, free: int) -> dict[str, int]:
    """Tier → the used bytes (as filesystem_space says them) at which the appliance takes no
    more titles there: each folder's high watermark of its capacity, with no more room in all
    than the filesystem has free (disks.measure checks both). The planner fills up to this,
    never to its own share of the capacity, which the appliance would refuse."""
    figures = folder_space(folders, total, free)
    rooms = [
        max(0, int(cap * f.high_watermark) - used)
        for f, (cap, used) in zip(folders, figures, strict=True)
    ]
    spare = free + sum(f.staged for f in folders)  # staged bytes become the title's own
    if sum(rooms) > spare:
        whole = sum(rooms)
        rooms = [room * spare // whole for room in rooms]
    out: dict[str, int] = {}
    for f, (_, used), room in zip(folders, figures, rooms, strict=True):
        # `used` still holds `reclaimable`, which the reported used leaves out: room too.
        out[f.tier] = out.get(f.tier, 0) + used + room
    return out


def staged_bytes(disk: Path) -> int:
    """Bytes of the files the fill stages on `disk` (only titles being filled: a few)."""
    total = 0
    for root, _dirs, files in os.walk(disk / DISK_STAGING):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # handed to the store meanwhile
    return total


def replaced_bytes(index: Path) -> dict[str, int]:
    """Disk → bytes of replaced versions' files kept a while (appliance/replaced.py)."""
    from appliance.index import read_only
    from appliance.replaced import bytes_on_disks

    # Unreadable: an index from before replaced versions were kept holds none.
    return read_only(index, bytes_on_disks, {}, {})


@dataclass(frozen=True)
class TierFigures:
    """Tier → (capacity, used) and tier → fillable bytes, for the beat's TierSpace list."""

    space: dict[str, tuple[int, int]]
    fillable: dict[str, int]


def tier_space(config: ApplianceConfig, out_of_service: set[str]) -> dict[str, tuple[int, int]]:
    """Tier → (capacity, used) over the disks in service, each filesystem counted once."""
    return tier_figures(config, out_of_service).space


def tier_figures(config: ApplianceConfig, out_of_service: set[str]) -> TierFigures:
    """Tier space and fillable bytes over the disks in service, each filesystem once."""
    from appliance.disks import Disk, StorageError, by_filesystem, open_disks
    from appliance.index import IndexReader

    reader = IndexReader(config.storage.index)
    try:
        indexed = reader.bytes_by_disk()
    finally:
        reader.close()
    kept = replaced_bytes(config.storage.index)
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
        return TierFigures({}, {})
    out: dict[str, tuple[int, int]] = {}
    fillable: dict[str, int] = {}
    for group in groups:
        try:
            fs = shutil.disk_usage(group[0].path)
        except OSError:
            continue
        folders = [
            FolderSpace(
                d.tier,
                d.capacity,
                indexed.get(d.id, 0),
                d.max_bytes is not None,
                d.high_watermark,
                staged_bytes(d.path),
                min(kept.get(d.id, 0), indexed.get(d.id, 0)),
            )
            for d in group
        ]
        for tier, (cap, used) in filesystem_space(folders, fs.total, fs.free).items():
            tier_cap, tier_used = out.get(tier, (0, 0))
            out[tier] = (tier_cap + cap, tier_used + used)
        for tier, most in filesystem_fillable(folders, fs.total, fs.free).items():
            fillable[tier] = fillable.get(tier, 0) + most
    # 0 would read as "not said" (the whole capacity): a full tier takes 1 byte at most.
    fillable = {tier: max(most, 1) for tier, most in fillable.items()}
    return TierFigures(out, fillable)


def box_health(report: HealthReport) -> BoxHealth:
    h = report.health
    return BoxHealth(h.state, tuple(h.reasons), float(advertised_capacity_bps(report.profile, h)))

"""Registry rules as pure functions: enrolment records + last heartbeats → appliance states
and the `FleetSnapshot` that steering and planning read.

fleet/store.py persists records and join tokens; fleet/service.py keeps the last beat of
every appliance in memory and calls `build_snapshot` whenever one arrives or time passes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from fleet.model import Appliance, ApplianceState, FleetSnapshot, HeldTitle, Site, TierSpace

Health = Literal["ok", "degraded", "failing"]


@dataclass(frozen=True)
class ApplianceRecord:
    """What enrolment created and the operator changes (drain); persisted."""

    name: str
    site: str
    url: str
    public_key: bytes
    enrolled_at: float
    drained: bool = False


@dataclass(frozen=True)
class Beat:
    """The latest heartbeat of one appliance; kept in memory only."""

    at: float
    sequence: int
    health: Health = "ok"
    health_detail: str = ""
    capacity_bps: float = 0.0
    load_bps: float = 0.0
    connections: int = 0
    tiers: tuple[TierSpace, ...] = ()
    titles: Mapping[str, HeldTitle] = field(default_factory=dict)
    plan_version: int = 0
    keys_version: int = 0
    fill_done: int = 0
    fill_total: int = 0


def state_of(
    record: ApplianceRecord, beat: Beat | None, now: float, interval_s: float, missed: int
) -> ApplianceState:
    """Drained wins (operator intent); then silence (`missed` beats late); then health."""
    if record.drained:
        return "drained"
    if beat is None or now - beat.at > missed * interval_s:
        return "unreachable"
    return beat.health


def build_snapshot(
    sites: tuple[Site, ...],
    records: Mapping[str, ApplianceRecord],
    beats: Mapping[str, Beat],
    now: float,
    interval_s: float,
    missed: int,
    origin_url: str,
) -> FleetSnapshot:
    appliances = []
    for name in sorted(records):
        rec, beat = records[name], beats.get(name)
        appliances.append(
            Appliance(
                name=name,
                site=rec.site,
                url=rec.url,
                state=state_of(rec, beat, now, interval_s, missed),
                capacity_bps=beat.capacity_bps if beat else 0.0,
                load_bps=beat.load_bps if beat else 0.0,
                connections=beat.connections if beat else 0,
                titles=beat.titles if beat else {},
                tiers=beat.tiers if beat else (),
            )
        )
    return FleetSnapshot(sites=sites, appliances=tuple(appliances), origin_url=origin_url)


def accept_beat(previous: Beat | None, incoming: Beat) -> bool:
    """A beat counts once: a repeat or a late one (sequence not above the last) is dropped.

    Sequence 1 after a higher one is an appliance restart, so it counts again.
    """
    return previous is None or incoming.sequence > previous.sequence or incoming.sequence == 1


def token_hash(token: str) -> str:
    """Join tokens are stored hashed: a leaked database grants no enrolment."""
    return hashlib.sha256(token.encode()).hexdigest()

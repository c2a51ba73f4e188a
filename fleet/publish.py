"""A planner `ApplianceFillPlan` → what the appliance receives: the proto `Plan`, or the JSON
document `appliance/fill/plan.py` reads (`[fill] plan`), with source URLs resolved.

Sources are tried in order: the in-site peer that fills from the origin first, the origin
last. A sick peer falls back to the origin; one still filling the title is waited for a
while first (appliance/fill/peerwait.py), using the title's size sent here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from edgeflix.proto.gen import fleet_pb2
from fleet.model import Site
from fleet.plans import ORIGIN, ApplianceFillPlan, PlannedTitle

_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


def source_urls(title: PlannedTitle, peers: Mapping[str, str], origin_url: str) -> list[str]:
    origin = origin_url.rstrip("/")
    if title.source == ORIGIN or title.source not in peers:
        return [origin]
    return [peers[title.source].rstrip("/"), origin]


def to_proto(
    entry: ApplianceFillPlan,
    version: int,
    site: Site | None,
    peers: Mapping[str, str],
    origin_url: str,
    cap_bps: int = 0,
) -> fleet_pb2.Plan:
    return fleet_pb2.Plan(
        version=version,
        site=entry.site,
        fill_window=str(site.fill_window) if site else "",
        timezone=site.timezone if site else "UTC",
        cap_bps=cap_bps,
        titles=[
            fleet_pb2.PlannedTitle(
                title_id=t.title_id,
                digest=t.digest,
                size_bytes=t.size_bytes,
                tier=t.tier,
                sources=source_urls(t, peers, origin_url),
            )
            for t in entry.titles
        ],
    )


def to_document(
    entry: ApplianceFillPlan,
    site: Site | None,
    peers: Mapping[str, str],
    origin_url: str,
    cap_bps: int | None = None,
) -> dict[str, Any]:
    """The appliance's fill-plan JSON (appliance/fill/plan.py's FillPlan); the version
    travels beside it (Plan.version), since that schema refuses unknown keys."""
    return {
        "titles": [
            {
                "id": t.title_id,
                "digest": t.digest if _SHA256.match(t.digest) else None,
                "sources": source_urls(t, peers, origin_url),
                "size": t.size_bytes or None,
            }
            for t in entry.titles
        ],
        "window": str(site.fill_window) if site else None,
        "timezone": site.timezone if site else "local",
        "cap_bps": cap_bps,
        "prune": True,
    }

"""One appliance advertising an absurd capacity cannot switch bounded loads off for its
site (/tmp/rev_abuse/t14.py: capacity_bps=1e308, holding nothing, made the site's mean
utilisation ~0, so every peer was "over the bound" and ranking fell back to plain
rendezvous). Beats clamp rates to MAX_RATE_BPS; the site mean caps each appliance's weight
at a multiple of the site's median capacity and reads only finite figures."""

from __future__ import annotations

import pytest

from edgeflix.proto.gen import fleet_pb2
from fleet.errors import FleetInputError
from fleet.grpc_api import MAX_HELD_TITLES, beat_from_proto
from fleet.model import Appliance
from fleet.steering import MAX_RATE_BPS, site_mean_utilisation, steer
from tests.fleet.test_steering import box, fleet

TITLES = [f"title{i:05d}" for i in range(20)]


def firsts(*boxes: Appliance) -> set[str]:
    snap = fleet(*boxes)
    return {steer(snap, "192.168.1.7", t).candidates[0].name for t in TITLES}


@pytest.mark.parametrize("claimed", [1e308, MAX_RATE_BPS])
def test_a_huge_capacity_does_not_switch_bounded_loads_off(claimed: float) -> None:
    busy = box("busy", "home", *TITLES, capacity_bps=1e9, load_bps=0.85e9)
    idle = box("idle", "home", *TITLES, capacity_bps=1e9, load_bps=0.05e9)
    assert firsts(busy, idle) == {"idle"}  # busy is over (1 + eps) x the site's mean
    hostile = box("hostile", "home", capacity_bps=claimed, load_bps=0.0)
    assert firsts(busy, idle, hostile) == {"idle"}


@pytest.mark.parametrize(
    ("capacity", "load"), [(1e9, MAX_RATE_BPS), (1e-300, MAX_RATE_BPS), (1e9, 1e308)]
)
def test_a_huge_load_does_not_switch_bounded_loads_off(capacity: float, load: float) -> None:
    """The mirror image: a mean raised above every peer puts none of them over the bound."""
    busy = box("busy", "home", *TITLES, capacity_bps=1e9, load_bps=0.85e9)
    idle = box("idle", "home", *TITLES, capacity_bps=1e9, load_bps=0.05e9)
    hostile = box("hostile", "home", capacity_bps=capacity, load_bps=load)
    assert site_mean_utilisation((busy, idle, hostile)) <= 1.0
    assert firsts(busy, idle, hostile) == {"idle"}


def test_the_site_mean_weighs_comparable_appliances_by_capacity() -> None:
    small = box("small", "home", capacity_bps=1e9, load_bps=0.5e9)
    large = box("large", "home", capacity_bps=4e9, load_bps=0.4e9)
    assert site_mean_utilisation((small, large)) == pytest.approx(0.9e9 / 5e9)
    # Figures no beat can bring now (a saved beat from before) count as none, or clamped.
    odd = box("odd", "home", capacity_bps=float("nan"), load_bps=1.0)
    huge = box("huge", "home", capacity_bps=1e308, load_bps=1e308)
    assert site_mean_utilisation((small, large, odd)) == pytest.approx(0.18)
    assert 0 < site_mean_utilisation((small, large, huge)) <= 1.0


def test_beats_clamp_rates_to_the_ceiling() -> None:
    req = fleet_pb2.HeartbeatRequest(sequence=1, capacity_bps=1e308, load_bps=5e20)
    beat = beat_from_proto(req, 0.0)
    assert beat.capacity_bps == beat.load_bps == MAX_RATE_BPS
    req = fleet_pb2.HeartbeatRequest(sequence=1, capacity_bps=-5.0, load_bps=2e9)
    beat = beat_from_proto(req, 0.0)
    assert (beat.capacity_bps, beat.load_bps) == (0.0, 2e9)


def test_a_beat_holding_too_many_titles_is_refused_a_large_catalogue_is_not() -> None:
    held = [
        fleet_pb2.HeldTitle(
            title_id=f"title-{i:06d}", digest=f"{i:064x}", complete=True, size_bytes=4 * 10**9
        )
        for i in range(50_000)
    ]
    beat = beat_from_proto(fleet_pb2.HeartbeatRequest(sequence=1, titles=held), 0.0)
    assert len(beat.titles) == 50_000
    many = [fleet_pb2.HeldTitle(title_id=f"h{i}") for i in range(MAX_HELD_TITLES + 1)]
    with pytest.raises(FleetInputError, match=f"over {MAX_HELD_TITLES}"):
        beat_from_proto(fleet_pb2.HeartbeatRequest(sequence=1, titles=many), 0.0)

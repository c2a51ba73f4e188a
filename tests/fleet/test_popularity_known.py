"""Popularity keeps counts only for titles the fleet knows (/tmp/rev_abuse/t2.py: four beats
of a million made-up ids each grew the manager to 2.5 GB, its database to 581 MB, and
stalled /steer 20-30 s at every planning round). A count is kept for a title the origin
lists, or, until it has listed titles, one it listed once or the sender holds; titles out
of the catalogue are forgotten at each planning round and save, but an unknown catalogue
(origin unread, or listing nothing) never wipes what was counted before a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.catalogue import OriginTitle
from fleet.model import HeldTitle
from fleet.popularity import DecayedCounts
from fleet.registry import Beat
from fleet.service import FleetService
from fleet.store import Store
from tests.fleet.test_service import GB, Clock, enrol, service


def made_up(n: int, tag: str = "z") -> dict[str, int]:
    return {f"{tag}{i:07d}": 10**6 for i in range(n)}


def beat(svc: FleetService, seq: int, counts: dict[str, int], held: tuple[str, ...] = ()) -> None:
    b = Beat(
        at=svc.clock(),
        sequence=seq,
        capacity_bps=1e9,
        titles={t: HeldTitle("d" + t, True, GB) for t in held},
        keys_version=svc.keys.version,
    )
    assert svc.heartbeat("h1", b, counts) == "taken"


def counted(svc: FleetService) -> set[str]:
    return svc.popularity.titles() | {t for p in svc.site_popularity.values() for t in p.titles()}


def saved_titles(svc: FleetService) -> set[str]:
    doc = json.loads(svc.store.meta("popularity") or "{}")
    return set(doc["fleet"]["long"]["scaled"]) | {
        t for s in doc["sites"].values() for t in s["long"]["scaled"]
    }


def test_made_up_titles_are_not_counted(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    svc.set_origin_titles([OriginTitle(t, "d" + t, GB) for t in ("a", "b")])
    beat(svc, 1, {"a": 5 * GB, **made_up(2000)}, held=("a", "fake-held"))
    beat(svc, 2, {"fake-held": GB, **made_up(2000, "y")}, held=("a", "fake-held"))
    assert counted(svc) == {"a"}
    svc.save_soft_state()
    assert saved_titles(svc) == {"a"}
    job = svc.plan_job()
    assert set(job.demand) == {"a", "b"}
    assert all(set(d) == {"a", "b"} for d in job.site_demand.values())


def test_before_the_origin_lists_titles_the_senders_own_count(tmp_path: Path) -> None:
    """Origin unreachable since the start: what the appliance holds stands for the catalogue
    (as in FleetService.catalog), so its traffic still counts; a made-up id does not."""
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    beat(svc, 1, {"held": 5 * GB, **made_up(1000)}, held=("held",))
    assert counted(svc) == {"held"}


def test_titles_out_of_the_catalogue_are_forgotten_at_save_and_planning(tmp_path: Path) -> None:
    """Counts from before this fix (or of a title since withdrawn) go once the origin lists
    what it has; the totals, which measure traffic served, stay."""
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    svc.popularity.add({"a": 1e9, "w": 1e9, **{t: 1.0 for t in made_up(3000)}}, clock.now)
    svc.site_popularity["home"].add({"a": 1e9, "x": 5.0}, clock.now)
    total = svc.popularity.long.total_since(0, clock.now)
    svc.set_origin_titles([OriginTitle(t, "d" + t, GB) for t in ("a", "w")])
    svc.save_soft_state()
    assert counted(svc) == saved_titles(svc) == {"a", "w"}
    assert svc.popularity.long.total_since(0, clock.now) == total
    svc.set_origin_titles([OriginTitle("a", "da", GB)])  # "w" withdrawn
    svc.plan_job()
    assert counted(svc) == {"a"}


def test_an_unknown_or_empty_catalogue_wipes_nothing_counted_before(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    svc.set_origin_titles([OriginTitle(t, "d" + t, GB) for t in ("a", "b")])
    beat(svc, 1, {"a": GB, "b": GB}, held=("a",))
    svc.save_soft_state()
    clock.now += 60
    # Restarted with the origin unreachable: nothing it counted is lost, at save or plan.
    again = FleetService(svc.config, Store(svc.config.server.db), clock, monotonic=clock)
    again.plan_job()
    again.save_soft_state()
    assert counted(again) == {"a", "b"}
    # An origin that lists nothing (the wrong store, a fresh one) is no catalogue either.
    again.set_origin_titles([])
    again.plan_job()
    assert counted(again) == {"a", "b"}
    again.set_origin_titles([OriginTitle("b", "db", GB)])
    again.plan_job()
    assert counted(again) == {"b"}


def test_made_up_held_titles_do_not_pile_up_while_the_origin_is_unread(tmp_path: Path) -> None:
    """An appliance that claims new made-up titles each beat gets counts for those it holds
    now; those it held before, and nobody holds now, go at the next planning round."""
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    for seq in range(1, 4):
        fakes = made_up(500, f"r{seq}-")
        beat(svc, seq, fakes, held=tuple(fakes))
        clock.now += 5
    svc.plan_job()
    assert counted(svc) == set(made_up(500, "r3-"))


def test_decayed_counts_retain_drops_titles_and_keeps_the_total() -> None:
    counts = DecayedCounts(3600.0, 0.0)
    counts.add({"a": 10.0, "b": 20.0, "c": 30.0}, 100.0)
    assert counts.retain({"a", "c", "other"}) == 1
    assert set(counts.at(100.0)) == {"a", "c"}
    assert counts.total_since(0.0, 100.0) == pytest.approx(60.0)
    assert counts.retain({"a", "c"}) == 0

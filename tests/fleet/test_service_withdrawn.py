"""A title the origin stopped listing stays withdrawn from steering (fleet/service.py,
fleet/store.py record_listing): across a listing of nothing, while the origin cannot be
read, and across a restart of the manager with the origin away. A listing of nothing
withdraws nothing more (an origin on a mistyped store would refuse every title at once).
A title never listed is refused as unknown once the origin has listed titles since the
start; while it has not (a restart with the origin away), it is steered as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.catalogue import OriginTitle
from fleet.errors import UnknownNameError
from fleet.service import FleetService
from fleet.store import Store
from tests.fleet.test_service import GB, Clock, beat, config, enrol

CLIENT = "192.168.1.2"


def service(tmp_path: Path, clock: Clock) -> FleetService:
    cfg = config(tmp_path)
    return FleetService(cfg, Store(cfg.server.db), clock, monotonic=clock)


def listing(*titles: str) -> list[OriginTitle]:
    return [OriginTitle(t, "d" + t, GB) for t in titles]


def steered(svc: FleetService, title: str) -> bool:
    try:
        svc.steer(CLIENT, title)
    except UnknownNameError as exc:
        assert "withdrawn" in str(exc) or "unknown title" in str(exc)
        return False
    return True


def test_a_listing_of_nothing_keeps_what_was_withdrawn_and_withdraws_no_more(
    tmp_path: Path,
) -> None:
    svc = service(tmp_path, Clock())
    svc.set_origin_titles(listing("a", "b", "c"))
    svc.set_origin_titles(listing("b", "c"))  # origin rm a
    assert not steered(svc, "a") and steered(svc, "b")
    svc.set_origin_titles([])  # origin rm b, origin rm c; or an origin on a mistyped store
    assert [steered(svc, t) for t in ("a", "b", "c")] == [False, True, True]
    # Never listed: refused as unknown (the listing before the empty one stands) until a
    # listing has it; its origin URL would 404 meanwhile.
    assert not steered(svc, "new")
    svc.set_origin_titles(listing("c", "new"))  # the origin lists again: b is withdrawn now
    assert [steered(svc, t) for t in ("a", "b", "c", "new")] == [False, False, True, True]


def test_withdrawals_outlive_a_restart_with_the_origin_away(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.set_origin_titles(listing("a", "b"))
    svc.set_origin_titles(listing("b"))
    svc.store.close()
    # Started again; the origin does not answer (set_origin_titles is never called).
    again = service(tmp_path, clock)
    assert not steered(again, "a") and steered(again, "b") and steered(again, "new")
    again.set_origin_titles([])
    again.store.close()
    third = service(tmp_path, clock)
    assert not steered(third, "a") and steered(third, "b")
    third.set_origin_titles(listing("a", "b"))  # both back
    assert steered(third, "a") and steered(third, "b")


def test_planning_keeps_held_titles_while_the_origin_lists_nothing(tmp_path: Path) -> None:
    """Neither pruned from every appliance at once nor refused to players: an origin
    pointed at a wrong store lists nothing too. What was withdrawn before stays so."""
    svc = service(tmp_path, Clock())
    enrol(svc, "h1", "home")
    beat(svc, "h1", 1)  # holds "a"
    svc.set_origin_titles(listing("a", "gone"))
    svc.set_origin_titles(listing("a"))
    svc.set_origin_titles([])
    assert [t.title_id for t in svc.replan().appliances["h1"].titles] == ["a"]
    assert steered(svc, "a")
    with pytest.raises(UnknownNameError, match="'gone' was withdrawn"):
        svc.steer(CLIENT, "gone")

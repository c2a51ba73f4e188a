"""A title the origin's catalogue does not list is refused (404, "unknown title") once the
catalogue is known (fleet/steering.py steer `listed`, fleet/service.py set_origin_titles):
an origin URL for it would 404. While the catalogue is unknown (never read since the
start, the origin unreachable) such a title still goes to the origin, which may have it;
a listing of nothing keeps the listing before it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.catalogue import OriginTitle
from fleet.errors import UnknownNameError
from fleet.model import Appliance, FleetSnapshot, HeldTitle, Site
from fleet.service import FleetService
from fleet.steering import steer
from fleet.store import Store
from tests.fleet.test_service import GB, Clock, beat, config, enrol

HOME = Site.build("home", ["192.168.1.0/24"])
CLIENT = "192.168.1.2"


def snapshot() -> FleetSnapshot:
    h1 = Appliance("h1", "home", "http://h1:8081", titles={"t1": HeldTitle("d")})
    return FleetSnapshot((HOME,), (h1,), "http://origin:8080", withdrawn=frozenset({"gone"}))


def test_steer_refuses_a_title_the_known_catalogue_does_not_list() -> None:
    snap = snapshot()
    with pytest.raises(UnknownNameError, match="unknown title 'never'") as caught:
        steer(snap, CLIENT, "never", listed=frozenset({"t1"}))
    assert caught.value.http_status == 404
    # Listed and held: steered as before; withdrawn: told so, not "unknown".
    assert steer(snap, CLIENT, "t1", listed={"t1"}).candidates[0].name == "h1"
    with pytest.raises(UnknownNameError, match="'gone' was withdrawn"):
        steer(snap, CLIENT, "gone", listed=frozenset({"t1"}))
    # Listed, held nowhere: the origin has it.
    d = steer(snap, CLIENT, "fresh", listed=frozenset({"t1", "fresh"}))
    assert (d.outcome, d.candidates[0].name) == ("origin", "origin")


def test_while_the_catalogue_is_unknown_the_origin_may_serve_it() -> None:
    d = steer(snapshot(), CLIENT, "never", listed=None)
    assert (d.outcome, [c.name for c in d.candidates]) == ("origin", ["origin"])


def service(tmp_path: Path) -> FleetService:
    clock = Clock()
    cfg = config(tmp_path)
    return FleetService(cfg, Store(cfg.server.db), clock, monotonic=clock)


def listing(*titles: str) -> list[OriginTitle]:
    return [OriginTitle(t, "d" + t, GB) for t in titles]


def outcome(svc: FleetService, title: str) -> str:
    try:
        return svc.steer(CLIENT, title)[0].outcome
    except UnknownNameError as exc:
        return str(exc)


def test_the_service_refuses_unlisted_titles_once_the_origin_has_listed(
    tmp_path: Path,
) -> None:
    svc = service(tmp_path)
    enrol(svc, "h1", "home")
    beat(svc, "h1", 1)  # holds "a"
    # Never read since the start: unknown, so the origin is tried.
    assert outcome(svc, "never") == "origin"
    svc.set_origin_titles(listing("a", "b"))
    assert outcome(svc, "never") == "unknown title 'never': the origin does not list it"
    assert outcome(svc, "a") == "in_site" and outcome(svc, "b") == "origin"
    # A listing of nothing (a mistyped store) is no catalogue: the one before stands.
    svc.set_origin_titles([])
    assert outcome(svc, "never").startswith("unknown title")
    assert outcome(svc, "a") == "in_site" and outcome(svc, "b") == "origin"
    # Ingested since: refused until the next poll lists it, then steered.
    svc.set_origin_titles(listing("a", "b", "never"))
    assert outcome(svc, "never") == "origin"
    # Refusals count no outcome and no demand: nothing was steered.
    assert sum(svc.outcomes.values()) == 6
    svc.store.close()
    # Restarted with the origin unreachable: unknown again until it lists.
    again = service(tmp_path)
    assert outcome(again, "other") == "origin"
    again.store.close()

"""Inputs the fleet manager must refuse or normalise (found by an adversarial audit):
IPv4-mapped client addresses, title ids that would become paths, appliance names that
would become paths and certificate names, non-finite heartbeat figures, ambiguous site
prefixes, plans of unknown sites, and the CLI's handling of a manager URL or answer that
is not what it expects."""

from __future__ import annotations

import asyncio
import http.server
import json
import math
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeflix.proto import auth
from edgeflix.proto.gen import fleet_pb2
from edgeflix.versioning import Versioned, receive
from fleet.catalogue import OriginTitle
from fleet.client import fleet_url
from fleet.config import FleetConfig, SiteConfig
from fleet.errors import FleetError, FleetInputError, UnknownNameError
from fleet.grpc_api import _status, beat_from_proto
from fleet.http import plan_json
from fleet.model import (
    Appliance,
    FleetSnapshot,
    HeldTitle,
    Site,
    TierSpace,
    check_name,
    parse_address,
)
from fleet.registry import Beat
from fleet.service import FleetService
from fleet.steering import steer
from fleet.store import EnrolmentRefused, Store, StoreError
from fleet.ticker import OriginCatalog, catalog_from_json
from tests.fleet.test_http import get

SITES = (
    Site.build("home", ["192.168.1.0/24"]),
    Site.build("wide", ["192.168.0.0/16"]),
)


def snapshot() -> FleetSnapshot:
    box = Appliance("h1", "home", "http://h1:8081", titles={"film": HeldTitle("d")})
    return FleetSnapshot(SITES, (box,), "http://origin:8080")


def test_ipv4_mapped_client_matches_the_ipv4_prefix() -> None:
    decision = steer(snapshot(), "::ffff:192.168.1.5", "film")
    assert decision.client_site == "home"
    assert decision.outcome == "in_site"
    assert str(parse_address("::ffff:10.0.0.1")) == "10.0.0.1"
    # Longest prefix wins between nested prefixes of two sites.
    assert steer(snapshot(), "::ffff:192.168.7.1", "film").client_site == "wide"


def test_zone_ids_and_garbage_addresses() -> None:
    assert steer(snapshot(), "fe80::1%eth0", "film").client_site is None
    for bad in ("192.168.1.5%eth0", "", "x" * 10_000, "1.2.3.4/24"):
        with pytest.raises(FleetInputError, match="not an IPv4 or IPv6 address"):
            steer(snapshot(), bad, "film")


@pytest.mark.parametrize("title", ["../x", "a/b", "", "x" * 129, "..", "é", "a b"])
def test_a_title_id_that_is_no_path_component_is_refused(title: str) -> None:
    with pytest.raises(FleetInputError, match="invalid title id"):
        steer(snapshot(), "192.168.1.5", title)


@given(st.text(max_size=80))
def test_any_appliance_name_is_one_safe_path_segment_or_refused(name: str) -> None:
    try:
        check_name(name, "appliance")
    except FleetInputError:
        return
    assert "/" not in name and name not in (".", "..") and name.isascii()
    assert name == name.strip() and "\n" not in name


def config(tmp_path: Path, **extra: Any) -> FleetConfig:
    return FleetConfig.model_validate(
        {
            "server": {"db": str(tmp_path / "fleet.sqlite"), "enrolment": "open"},
            "sites": [
                SiteConfig(name="home", prefixes=("192.168.1.0/24",)).model_dump(),
                SiteConfig(name="lab", prefixes=("10.1.0.0/16",)).model_dump(),
            ],
            "origin": {"url": "http://127.0.0.1:9"},
            **extra,
        }
    )


def service(tmp_path: Path) -> FleetService:
    cfg = config(tmp_path)
    svc = FleetService(cfg, Store(cfg.server.db), lambda: 1_000_000.0)
    svc.maybe_rotate_keys()
    return svc


@pytest.mark.parametrize("name", ["a/b", "../x", "a\nb", "n" * 65, "-x", "a b"])
def test_enrolment_refuses_a_name_that_is_no_path_segment(tmp_path: Path, name: str) -> None:
    svc = service(tmp_path)
    key = auth.public_key(auth.new_private_key())
    with pytest.raises(FleetInputError, match="appliance name"):
        svc.enrol(svc.join_token("home"), name, "http://192.168.1.20:8081", key)
    assert svc.records == {}


@pytest.mark.parametrize("field", ["capacity_bps", "load_bps"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_heartbeat_figures_are_refused(field: str, value: float) -> None:
    req = fleet_pb2.HeartbeatRequest(sequence=1, capacity_bps=1e9, load_bps=1e8)
    setattr(req, field, value)
    with pytest.raises(FleetInputError, match=field):
        beat_from_proto(req, 0.0)


def test_absurd_heartbeat_figures_are_clamped_and_odd_titles_left_out() -> None:
    req = fleet_pb2.HeartbeatRequest(
        sequence=2**64 - 1,
        capacity_bps=-1.0,
        load_bps=-5.0,
        connections=2**32 - 1,
        titles=[
            fleet_pb2.HeldTitle(title_id="../etc", digest="x", complete=True),
            fleet_pb2.HeldTitle(
                title_id="film", digest="d" * 64, complete=True, size_bytes=2**64 - 1
            ),
        ],
    )
    beat = beat_from_proto(req, 5.0)
    assert (beat.capacity_bps, beat.load_bps) == (0.0, 0.0)
    assert set(beat.titles) == {"film"}


def test_a_beat_reuses_unchanged_titles_and_takes_changed_ones() -> None:
    def req(film_digest: str, tier: str) -> fleet_pb2.HeartbeatRequest:
        return fleet_pb2.HeartbeatRequest(
            sequence=1,
            titles=[
                fleet_pb2.HeldTitle(title_id="film", digest=film_digest, complete=True),
                fleet_pb2.HeldTitle(title_id="show", digest="5" * 64, complete=False, tier=tier),
            ],
        )

    first = beat_from_proto(req("d1" * 32, "hdd"), 1.0)
    same = beat_from_proto(req("d1" * 32, "hdd"), 2.0, first)
    assert same.titles == first.titles
    assert same.titles["film"] is first.titles["film"]  # no new object per title per beat
    changed = beat_from_proto(req("d2" * 32, "ssd"), 3.0, same)
    assert changed.titles["film"].digest == "d2" * 32 and changed.titles["show"].tier == "ssd"
    assert (
        set(beat_from_proto(fleet_pb2.HeartbeatRequest(sequence=1), 4.0, changed).titles) == set()
    )


def test_a_beat_with_the_previous_titles_digest_keeps_the_titles_read_before() -> None:
    def req(digest: bytes, *ids: str) -> fleet_pb2.HeartbeatRequest:
        held = [fleet_pb2.HeldTitle(title_id=t, digest="d" * 64, complete=True) for t in ids]
        return fleet_pb2.HeartbeatRequest(sequence=1, titles=held, titles_digest=digest)

    first = beat_from_proto(req(b"v1", "film", "show"), 1.0)
    assert set(first.titles) == {"film", "show"} and first.titles_digest == b"v1"
    # Same digest: the list is not read again (the appliance says it is the same).
    same = beat_from_proto(req(b"v1", "film", "show"), 2.0, first)
    assert same.titles is first.titles
    changed = beat_from_proto(req(b"v2", "film"), 3.0, same)
    assert set(changed.titles) == {"film"}
    # No digest (an older appliance): always read.
    plain = beat_from_proto(req(b"", "show"), 4.0, beat_from_proto(req(b"", "film"), 3.5))
    assert set(plain.titles) == {"show"}


def test_equal_prefixes_in_two_sites_are_refused_nested_ones_allowed(tmp_path: Path) -> None:
    both = [
        SiteConfig(name="a", prefixes=("192.168.1.0/24",)).model_dump(),
        SiteConfig(name="b", prefixes=("192.168.1.7/24",)).model_dump(),
    ]
    with pytest.raises(ValueError, match=r"192\.168\.1\.0/24 is listed in sites a and b"):
        FleetConfig.model_validate({"sites": both})
    both[1]["prefixes"] = ("192.168.0.0/16",)
    assert len(FleetConfig.model_validate({"sites": both}).site_list()) == 2


def test_a_plan_made_while_the_plan_moved_on_is_dropped_and_made_again(tmp_path: Path) -> None:
    """Planning runs beside the loop (fleet/planning.py): when an appliance's version caught
    up in the meantime, the result was made before its beat and is not adopted; the next
    tick plans again, above the version it runs."""
    svc = service(tmp_path)
    svc.enrol("", "h1", "http://192.168.1.20:8081", auth.public_key(auth.new_private_key()))
    svc.heartbeat("h1", Beat(at=svc.clock(), sequence=1, capacity_bps=1e9), {})
    first = svc.replan()
    job = svc.plan_job()
    assert not svc.replan_due
    # Meanwhile h1 reports a plan version above ours (a database restored from a backup).
    svc.heartbeat(
        "h1", Beat(at=svc.clock(), sequence=2, capacity_bps=1e9, plan_version=first.version + 5),
        {},
    )  # fmt: skip
    assert svc.current_plan is first  # not re-stamped and sent as it is (the backup's)
    assert svc.adopt_plan(job, job.run()) is first and svc.current_plan is first
    assert svc.replan_due
    assert svc.replan().version == first.version + 6  # made after the beat, above its version


def test_plan_of_an_unknown_site_is_a_404_not_an_empty_plan(tmp_path: Path) -> None:
    svc = service(tmp_path)
    svc.enrol("", "h1", "http://192.168.1.20:8081", auth.public_key(auth.new_private_key()))
    disks = (TierSpace("hdd", 10**12),)  # planned once a beat says what its disks hold
    svc.heartbeat("h1", Beat(at=svc.clock(), sequence=1, capacity_bps=1e9, tiers=disks), {})
    svc.replan()
    assert [p["name"] for p in plan_json(svc, "home")["appliances"]] == ["h1"]
    assert plan_json(svc, "lab")["appliances"] == []
    with pytest.raises(UnknownNameError, match="no site named 'mars'"):
        plan_json(svc, "mars")
    status, body = asgi(svc, "POST", "/plan", b"site=mars")
    assert status == 404 and "mars" in json.loads(body)["error"]
    status, body = asgi(svc, "GET", "/steer", b"client_ip=192.168.1.5&title=..%2Fx")
    assert status == 400 and "invalid title id" in json.loads(body)["error"]


def asgi(svc: FleetService, method: str, path: str, query: bytes) -> tuple[int, bytes]:
    status, _headers, body = get(svc, f"{path}?{query.decode()}", method)
    return status, body


@pytest.mark.parametrize(
    "url", ["http//x", "ftp://x:80", "127.0.0.1:7080", "http://127.0.0.1:abc", "http://", " "]
)
def test_a_malformed_manager_url_is_one_clear_error(url: str) -> None:
    with pytest.raises(FleetError, match="is not http"):
        fleet_url(url)


def test_manager_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLIX_FLEET", "http://10.0.0.1:7080/")
    assert fleet_url(None) == "http://10.0.0.1:7080"
    assert fleet_url("https://fleet.example") == "https://fleet.example"
    monkeypatch.setenv("EDGEFLIX_FLEET", "")
    assert fleet_url(None) == "http://127.0.0.1:7080"
    monkeypatch.setenv("EDGEFLIX_FLEET", "ftp://x")
    with pytest.raises(FleetError, match="EDGEFLIX_FLEET"):
        fleet_url(None)


def test_a_locked_database_is_a_retryable_error_not_a_stall(tmp_path: Path) -> None:
    """Another process holding the write lock (a backup, a sqlite3 shell): the write gives
    up after BUSY_TIMEOUT_S with StoreError (HTTP 503, gRPC UNAVAILABLE), keeps nothing,
    and the next write after the lock is gone succeeds."""
    svc = service(tmp_path)
    svc.enrol("", "h1", "http://192.168.1.20:8081", auth.public_key(auth.new_private_key()))
    other = sqlite3.connect(tmp_path / "fleet.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="not writable now") as info:
            svc.set_drained("h1", True)
        assert info.value.http_status == 503
        assert _status(info.value) == grpc.StatusCode.UNAVAILABLE
        keys = svc.keys
        with pytest.raises(StoreError):
            svc.rotate_keys()
        assert svc.keys is keys
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not svc.records["h1"].drained
    svc.set_drained("h1", True)
    assert Store(tmp_path / "fleet.sqlite").appliances()["h1"].drained


def test_a_token_of_another_site_does_not_move_an_enrolled_appliance(tmp_path: Path) -> None:
    svc = service(tmp_path)
    key = auth.public_key(auth.new_private_key())
    assert svc.enrol(svc.join_token("home"), "h1", "http://192.168.1.20:8081", key).site == "home"
    lab = svc.join_token("lab")
    with pytest.raises(EnrolmentRefused, match="enrolled in site home, the token is for site lab"):
        svc.enrol(lab, "h1", "http://192.168.1.20:8081", key)
    svc.remove("h1")  # as the message says: then the unspent token moves it
    assert svc.enrol(lab, "h1", "http://10.1.0.20:8081", key).site == "lab"


def test_a_removed_appliance_leaves_the_plan_at_the_next_tick(tmp_path: Path) -> None:
    svc = service(tmp_path)
    for name in ("h1", "h2"):
        svc.enrol("", name, f"http://192.168.1.2{name[1]}:8081", auth.public_key(b"k" * 32))
        disks = (TierSpace("hdd", 10**12),)
        svc.heartbeat(name, Beat(at=svc.clock(), sequence=1, capacity_bps=1e9, tiers=disks), {})
    svc.replan()
    assert not svc.replan_due
    svc.remove("h1")
    assert svc.replan_due  # what the ticker re-plans on at once
    assert set(svc.replan().appliances) == {"h2"}


def one_appliance_planned(tmp_path: Path) -> FleetService:
    """A manager with one title at the origin, one appliance (h1) with room, one plan."""
    svc = service(tmp_path)
    svc.set_origin_titles([OriginTitle("film", "d", 10**9)])
    svc.enrol("", "h1", "http://192.168.1.20:8081", auth.public_key(b"k" * 32))
    beat = Beat(at=svc.clock(), sequence=1, capacity_bps=1e9, tiers=(TierSpace("hdd", 10**12),))
    svc.heartbeat("h1", beat, {})
    svc.replan()
    return svc


def test_a_replan_that_changes_nothing_keeps_what_changed_in_that_version(
    tmp_path: Path,
) -> None:
    svc = one_appliance_planned(tmp_path)
    first = plan_json(svc, None)
    assert list(first["appliances"][0]["diff"]["added"]) == ["film"]
    svc.replan()  # the planner's next round: nothing changed
    assert plan_json(svc, None) == first
    # ... and it is what a restarted manager reads back from the store.
    again = FleetService(svc.config, Store(svc.config.server.db), svc.clock)
    assert plan_json(again, None) == first


def test_a_manager_restored_from_a_backup_overtakes_the_versions_appliances_run(
    tmp_path: Path,
) -> None:
    """Appliances ignore versions up to their own as stale: a manager whose database came
    back from yesterday's backup must not hand out key sets (or plans) they ignore."""
    svc = one_appliance_planned(tmp_path)
    beat = svc.beats["h1"]
    backup = tmp_path / "backup" / "fleet.sqlite"
    backup.parent.mkdir()
    with sqlite3.connect(backup) as copy:
        svc.store.conn.backup(copy)  # what `sqlite3 fleet.sqlite .backup` does
    for _ in range(3):
        svc.rotate_keys()
    svc.set_origin_titles([OriginTitle("film", "d", 10**9), OriginTitle("new", "e", 10**9)])
    svc.replan()
    assert svc.current_plan is not None
    running_keys, running_plan = svc.keys.version, svc.current_plan.version

    server = svc.config.server.model_copy(update={"db": backup})
    cfg = svc.config.model_copy(update={"server": server})
    restored = FleetService(cfg, Store(backup), svc.clock)
    assert restored.keys.version < running_keys
    restored.heartbeat(
        "h1",
        replace(beat, sequence=2, keys_version=running_keys, plan_version=running_plan),
        {},
    )
    assert restored.keys.version > running_keys
    restored.replan()  # the next round, made from h1's beat, goes out above what it runs
    assert restored.current_plan is not None and restored.current_plan.version > running_plan
    # What an appliance does with the versions it now hears of: applies them.
    mine = Versioned("keys", running_keys, ("lost timeline",))
    theirs = Versioned("keys", restored.keys.version, ("restored",))
    assert receive(mine, theirs, lambda _: None).action == "applied"
    # Kept: a restart of the restored manager stays ahead.
    again = FleetService(cfg, Store(backup), svc.clock)
    assert again.keys == restored.keys and again.current_plan == restored.current_plan
    # A version no backup explains is not followed.
    restored.heartbeat("h1", replace(beat, sequence=3, keys_version=2**64 - 1), {})
    assert restored.keys == again.keys


def test_a_database_path_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(StoreError, match="cannot open the fleet database"):
        Store(tmp_path / "afile" / "fleet.sqlite")  # its folder would be a file
    with pytest.raises(StoreError, match="cannot open the fleet database"):
        Store(tmp_path)  # a folder, not a database file
    deep = tmp_path / "missing" / "deeper" / "fleet.sqlite"
    Store(deep).close()  # a missing folder is made
    assert deep.exists()


@pytest.mark.parametrize("doc", [[1, 2], {"titles": 5}, {}, "html", None])
def test_an_origin_catalog_of_another_shape_is_a_value_error(doc: Any) -> None:
    """What the ticker catches and logs; before, an AttributeError from a list killed the
    ticker task, and with it key rotation and planning, without a word."""
    with pytest.raises(ValueError, match="no 'titles' list"):
        catalog_from_json(doc)


def test_origin_catalog_entries_no_origin_makes_are_left_out() -> None:
    doc = {
        "titles": [
            {"id": "film", "digest": "d", "total_bytes": 5},
            {"id": "../etc", "total_bytes": 1},
            {"id": 7},
            "junk",
            {"id": "big", "total_bytes": "lots", "digest": 3},
            {"id": "bare"},
        ]
    }
    assert catalog_from_json(doc) == [OriginTitle("film", "d", 5), OriginTitle("bare", "", 0)]


def test_the_origin_catalog_is_parsed_only_when_it_changed() -> None:
    """A real HTTP origin stand-in: the same answer twice is None the second time (nothing
    parsed, nothing looked up); a changed one is read; a bad one raises, and is tried again
    at the next poll rather than remembered."""
    bodies = [b'{"titles": [{"id": "film", "total_bytes": 5}]}']

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(bodies[-1])))
            self.end_headers()
            self.wfile.write(bodies[-1])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = OriginCatalog(f"http://127.0.0.1:{server.server_address[1]}/")

    async def polls() -> list[Any]:
        seen: list[Any] = []
        async with httpx.AsyncClient(timeout=10) as client:
            seen.append(await origin.read(client))
            origin.applied()
            seen.append(await origin.read(client))
            bodies.append(b'{"titles": "not a list"}')
            with pytest.raises(ValueError):
                await origin.read(client)
            with pytest.raises(ValueError):
                await origin.read(client)  # not remembered as read
            bodies.append(b'{"titles": [{"id": "film", "total_bytes": 5}, {"id": "new"}]}')
            seen.append(await origin.read(client))
            # Not applied (the database write failed): read again at the next poll.
            seen.append(await origin.read(client))
            origin.applied()
            seen.append(await origin.read(client))
        return seen

    try:
        first, same, changed, unapplied, again = asyncio.run(polls())
    finally:
        server.shutdown()
    assert first == [OriginTitle("film", "", 5)] and same is None
    assert changed == unapplied == [OriginTitle("film", "", 5), OriginTitle("new", "", 0)]
    assert again is None


def test_an_origin_catalog_of_entries_none_usable_is_no_empty_catalogue() -> None:
    """Read as empty, it would withdraw every title from steering."""
    with pytest.raises(ValueError, match="none of the 2 entries"):
        catalog_from_json({"titles": [{"id": "../etc"}, "junk"]})
    assert catalog_from_json({"titles": []}) == []


def test_origin_catalog_sizes_count_files_json_as_appliances_store_it() -> None:
    doc = {"titles": [{"id": "film", "digest": "d", "total_bytes": 5, "files_json_bytes": 2}]}
    assert catalog_from_json(doc) == [OriginTitle("film", "d", 7)]

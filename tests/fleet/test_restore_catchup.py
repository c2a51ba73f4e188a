"""A fleet manager restored from an old backup of its database, and one that lost it.

The reviewer's case on real processes: `.backup` of the running manager's database while the
key set is {k1}; then a rotation (k2), k1 revoked, a rotation (k4), and a title (bunny2) added
to the box's plan; the manager stopped, the backup copied back, the manager started. It must
sign URLs with a new key at once (the box refuses k1, which it saw revoked) and say so, and
must not hand the backup's plan out again (the box would delete bunny2). A box the manager
does not know any more is said in its log. A real `edgeflix fleet serve` on loopback; the
appliance's fleet link runs in this process with an index holding its titles.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from appliance.config import ApplianceConfig
from appliance.fill.plan import FillPlan as BoxPlan
from appliance.fleetlink import FleetLink, LinkSinks
from appliance.fleetlink_figures import BoxHealth, Traffic
from appliance.index import connect_writer
from edgeflix import tokens
from edgeflix.proto import auth
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from fleet.model import HeldTitle, TierSpace
from fleet.registry import Beat
from tests.appliance.test_keys_restore import fleet_keys, plays, sync
from tests.conftest import run_cli
from tests.fleet.test_service import GB, Clock, enrol, service
from tests.fleet.test_versions_restore import restore, take_backup
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import FLEET_TOML
from tests.integration.test_fleet_appliances import free_port

CLIENT = "192.168.1.5"  # in site "home", as the box
RESTORED_ACTION = (
    "key revocations and rotations made after the backup are lost here: revoke again any key "
    "revoked since (edgeflix fleet keys revoke ID); appliances keep refusing the ones they saw "
    "revoked"
)
UNKNOWN_ACTION = (
    "not in this fleet's database (removed, or the database was lost or restored): give it a "
    "new join token (edgeflix fleet join-token --site S)"
)


class Fleet:
    """`edgeflix fleet serve` at fixed addresses, its log appended to one file across starts."""

    def __init__(self, top: Path) -> None:
        self.db = top / "db" / "fleet.sqlite"
        self.db.parent.mkdir(parents=True)
        self.config = top / "fleet.toml"
        self.config.write_text(
            FLEET_TOML.format(db=self.db)
            .replace('grpc = "127.0.0.1:0"', f'grpc = "127.0.0.1:{free_port()}"')
            .replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{free_port()}"')
        )
        self.log = top / "fleet.log"
        self.server: Server | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as err:
            argv = ["fleet", "serve", "--config", str(self.config)]
            self.server = start(argv, ("grpc", "http"), stderr=err)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def url(self, which: str) -> str:
        assert self.server is not None
        return self.server.urls[which]

    def cli(self, *args: str) -> Any:
        argv = ["fleet", *args, "--fleet", self.url("http"), "--json"]
        return json.loads(run_cli(argv, check=True, timeout=60).stdout)

    def replace_db(self, backup: Path | None) -> None:
        """Stopped, its database (and WAL) replaced by `backup` (None: lost), started."""
        self.stop()
        for f in self.db.parent.glob("fleet.sqlite*"):
            f.unlink()
        if backup is not None:
            self.db.write_bytes(backup.read_bytes())
        self.start()

    def lines(self, name: str) -> list[str]:
        return [ln for ln in self.log.read_text().splitlines() if f"event={name} " in ln]

    def plan_of(self, appliance: str) -> tuple[int, set[str]]:
        plan = httpx.get(self.url("http") + "/plan", timeout=30).json()
        parts = {a["name"]: {t["title_id"] for t in a["titles"]} for a in plan["appliances"]}
        return int(plan["version"]), parts.get(appliance, set())


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "manager")
    try:
        yield f
    finally:
        f.stop()


def hold(index: Path, title: str) -> None:
    """The box holds `title` whole (a row as a finished fill leaves it)."""
    conn = connect_writer(index)
    with conn:
        digest = hashlib.sha256(title.encode()).hexdigest()  # as of a files.json
        conn.execute("INSERT INTO titles VALUES (?, ?, 'ready', 'hdd', 1000000, 0, NULL)",
                     (title, digest))  # fmt: skip
    conn.close()


def box(
    tmp: Path, grpc_url: str, token: str, plans: list[BoxPlan], keys: list[dict[str, bytes]]
) -> FleetLink:
    """The fleet link of box a1 holding "film"; the plans it hands the fill and the keys it
    hands its workers are recorded."""
    (tmp / "d0").mkdir(parents=True)
    hold(tmp / "index.sqlite", "film")
    config = ApplianceConfig.model_validate(
        {
            "name": "a1",
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(tmp / "index.sqlite")},
            "fill": {"staging": str(tmp / "staging")},
            "fleet": {"url": grpc_url, "join_token": token, "heartbeat_s": 0.5},
        }
    )
    sinks = LinkSinks(
        health=lambda: BoxHealth("ok", (), 1e9),
        traffic=lambda: Traffic({}, 0, 0),
        submit_plan=plans.append,
        set_keys=keys.append,
    )
    lk = FleetLink(config, "http://192.168.1.20:8081", sinks)
    lk.restore()
    return lk


def online_backup(db: Path, to: Path) -> Path:
    """What `sqlite3 fleet.sqlite ".backup old.sqlite"` does, the manager running."""
    with sqlite3.connect(db) as src, sqlite3.connect(to) as dst:
        src.backup(dst)
    return to


def steered(fleet: Fleet, lk: FleetLink, title: str) -> str:
    """The first URL /steer hands a player of `title` once it points at a1 (the link steps
    while it does not: a box is steered to once it reports the key set it holds)."""
    for _ in range(40):
        answer = httpx.get(
            fleet.url("http") + "/steer", params={"client_ip": CLIENT, "title": title}, timeout=30
        ).json()
        if answer["candidates"] and answer["candidates"][0]["name"] == "a1":
            return str(answer["urls"][0])
        lk.step()
        time.sleep(0.25)
    raise AssertionError(f"/steer never pointed at a1: {answer}")


def token_of(url: str) -> str:
    found = re.search(r"/t/([^/]+)/titles/", url)
    assert found, url
    return found.group(1)


def played(token: str, title: str, keys: dict[str, bytes]) -> bool:
    try:
        tokens.verify(token, title_id=title, client_ip=None, keys=keys, now=time.time())
    except tokens.TokenError:
        return False
    return True


def test_a_manager_restored_from_an_old_backup_signs_anew_and_keeps_the_new_titles(
    tmp_path: Path, fleet: Fleet
) -> None:
    plans: list[BoxPlan] = []
    keys: list[dict[str, bytes]] = []
    index = tmp_path / "a1" / "index.sqlite"
    token = fleet.cli("join-token", "--site", "home")["token"]
    lk = box(tmp_path / "a1", fleet.url("grpc"), token, plans, keys)

    def runs_plan_with(titles: set[str]) -> Callable[[], bool]:
        def done() -> bool:
            version, planned = fleet.plan_of("a1")
            return planned == titles and lk.state()["plan_version"] == version

        return done

    try:
        sync(lk, lambda: lk.keys is not None and runs_plan_with({"film"})(), "planned")
        (k1,) = fleet_keys(lk).values()
        backup = online_backup(fleet.db, tmp_path / "old.sqlite")
        fleet.cli("keys", "rotate", "--immediate")
        sync(lk, lambda: len(fleet_keys(lk)) == 2, "k2 synced")
        fleet.cli("keys", "revoke", k1.id)
        sync(lk, lambda: k1.id not in fleet_keys(lk), "k1 revoked")
        fleet.cli("keys", "rotate", "--immediate")
        sync(lk, lambda: len(fleet_keys(lk)) == 2, "k4 synced")
        hold(index, "bunny2")  # a plan change since the backup: the box filled it
        sync(lk, runs_plan_with({"film", "bunny2"}), "bunny2 planned")
        keys_before, plan_before = lk.state()["keys_version"], lk.state()["plan_version"]
        handed = len(plans)

        fleet.replace_db(backup)  # the disaster: the old backup restored
        sync(
            lk,
            lambda: (
                lk.state()["keys_version"] > keys_before
                and lk.state()["plan_version"] > plan_before
            ),
            "the restored manager caught up",
        )
        # Steering signs with a key made after the restore, which the box takes; never k1.
        signed = token_of(steered(fleet, lk, "bunny2"))
        assert signed.split(".")[0] != k1.id
        assert played(signed, "bunny2", keys[-1])
        assert not plays(k1, keys[-1], time.time())
        (said,) = fleet.lines("fleet.restored_from_backup")
        assert "level=error" in said and f'action="{RESTORED_ACTION}"' in said
        # No plan since the restore orders bunny2 deleted: the backup's plan never went out.
        since = [sorted(t.id for t in p.titles) for p in plans[handed:]]
        assert since and all("bunny2" in titles for titles in since), since
        assert runs_plan_with({"film", "bunny2"})()
    finally:
        lk.stop()


def test_a_box_the_manager_does_not_know_is_said_once_in_a_while(
    tmp_path: Path, fleet: Fleet
) -> None:
    plans: list[BoxPlan] = []
    token = fleet.cli("join-token", "--site", "home")["token"]
    lk = box(tmp_path / "a1", fleet.url("grpc"), token, plans, [])
    try:
        sync(lk, lambda: lk.state()["beats"] >= 2, "enrolled")
        fleet.replace_db(None)  # the database lost: a new, empty one
        for _ in range(10):  # beats refused, an enrolment with the spent token refused
            lk.step()
            time.sleep(0.1)
        metrics = httpx.get(fleet.url("http") + "/metrics", timeout=30).text
        refused = re.search(r'auth_refusals_total\{reason="unknown_appliance"\} (\S+)', metrics)
        assert refused and float(refused.group(1)) >= 3, metrics
        (unknown,) = fleet.lines("fleet.unknown_appliance")  # once, not per beat
        assert "level=warning" in unknown and "appliance=a1" in unknown
        assert "peer=ipv4:127.0.0.1:" in unknown and f'action="{UNKNOWN_ACTION}"' in unknown
        (enrol_line,) = fleet.lines("fleet.enrolment_refused")
        assert 'reason="unknown join token"' in enrol_line and "appliance=a1" in enrol_line
    finally:
        lk.stop()
    # Enrolments with a made-up token: said once per name in five minutes.
    with grpc.insecure_channel(fleet.url("grpc")) as channel:
        stub = fleet_pb2_grpc.FleetStub(channel)
        key = auth.public_key(auth.new_private_key())
        for name in ("x1", "x1", "x2"):
            req = fleet_pb2.EnrolRequest(name=name, join_token="nope", public_key=key,
                                         url="http://127.0.0.1:1")  # fmt: skip
            with pytest.raises(grpc.RpcError) as exc:
                stub.Enrol(req, timeout=30)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    said = fleet.lines("fleet.enrolment_refused")
    assert len([ln for ln in said if "appliance=x1 " in ln]) == 1
    assert len([ln for ln in said if "appliance=x2 " in ln]) == 1


def test_names_are_logged_once_in_a_while_in_bounded_memory() -> None:
    from fleet.refusals import NameLog  # here: the other tests run against older code too

    names = NameLog(every_s=300.0, limit=3, per_window=4)
    assert names.due("a", 0.0) and not names.due("a", 299.0) and names.due("a", 300.0)
    assert names.due("b", 301.0) and names.due("c", 302.0) and names.due("d", 303.0)
    assert not names.due("e", 304.0)  # four names in this window already: counted only
    assert names.due("e", 601.0)  # a new window
    assert len(names._logged) == 3  # the least recently logged forgotten
    assert names.due("a", 602.0)  # forgotten: said again (its 300 s are over anyway)


# -- the catch-up, over FleetService and a real SQLite store ----------------------------------


def beat(
    svc: Any,
    seq: int,
    titles: tuple[str, ...],
    plan: tuple[int, bytes] = (0, b""),
    keys: tuple[int, bytes] | None = None,
) -> Beat:
    keys = keys or (svc.keys.version, svc.keys_digest())
    return Beat(
        at=svc.clock(),
        sequence=seq,
        capacity_bps=1e9,
        tiers=(TierSpace("hdd", 100 * GB),),
        titles={t: HeldTitle("d" + t, True, GB) for t in titles},
        keys_version=keys[0],
        keys_digest=keys[1],
        plan_version=plan[0],
        plan_digest=plan[1],
    )


def test_after_a_plan_catch_up_a_box_not_heard_since_the_start_keeps_its_plan(
    tmp_path: Path,
) -> None:
    """h2's beat in the restored database is the backup's (without "new"): planned from it,
    h2 would delete "new". It is left out of the plans (it keeps what it runs, told no
    version) until its first beat, then planned from that."""
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    enrol(svc, "h1", "home")
    enrol(svc, "h2", "home")
    svc.heartbeat("h1", beat(svc, 1, ("a",)), {})
    svc.heartbeat("h2", beat(svc, 1, ("a",)), {})
    svc.replan()
    svc.save_soft_state()
    backup = take_backup(svc, tmp_path)
    svc.heartbeat("h1", beat(svc, 2, ("a", "new")), {})
    svc.heartbeat("h2", beat(svc, 2, ("a", "new")), {})
    runs = svc.replan()
    assert {t.title_id for t in runs.appliances["h2"].titles} == {"a", "new"}
    digest = svc.plan_digest()

    restored = restore(svc, backup, clock)
    restored.heartbeat("h1", beat(restored, 1, ("a", "new"), (runs.version, digest)), {})
    fresh = restored.replan()
    assert fresh.version > runs.version
    assert {t.title_id for t in fresh.appliances["h1"].titles} == {"a", "new"}
    assert "h2" not in fresh.appliances  # its beat is the backup's: not planned from it
    restored.heartbeat("h2", beat(restored, 1, ("a", "new"), (runs.version, digest)), {})
    assert restored.replan_due
    again = restored.replan()
    assert {t.title_id for t in again.appliances["h2"].titles} == {"a", "new"}
    assert again.version > runs.version


def test_a_key_catch_up_signs_with_a_new_key_at_once_marked_rebased_until_a_rotation(
    tmp_path: Path,
) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    k1 = svc.keys.keys[-1].id
    enrol(svc, "h1", "home")
    enrol(svc, "h2", "home")
    backup = take_backup(svc, tmp_path)
    svc.rotate_keys(immediate=True)
    between = (svc.keys.version, svc.keys_digest())  # what h2 fetched last
    svc.revoke_key(k1)
    svc.rotate_keys(immediate=True)
    runs = (svc.keys.version, svc.keys_digest())  # what h1 runs

    restored = restore(svc, backup, clock)
    assert not restored.keys_rebased()
    restored.heartbeat("h1", beat(restored, 1, ("a",), keys=runs), {})
    assert restored.keys.version == runs[0] + 1 and restored.keys_rebased()
    fresh = max(restored.keys.keys, key=lambda k: k.since).id
    assert fresh != k1
    restored.heartbeat("h2", beat(restored, 1, ("a",), keys=between), {})
    # Neither holds the new key yet: left out (the origin serves), never a URL of k1.
    decision, urls = restored.steer(CLIENT, "a")
    assert not decision.candidates or decision.candidates[0].kind == "origin"
    assert not any(f"/t/{k1}." in u for u in urls.urls)
    # h1 fetched the new set: steered to, with the new key.
    restored.heartbeat("h1", beat(restored, 2, ("a",)), {})
    decision, urls = restored.steer(CLIENT, "a")
    assert decision.candidates[0].name == "h1"
    assert token_of(urls.urls[0]).split(".")[0] == fresh

    # Kept across a restart; a rotation (or revocation) ends it.
    again = restore(restored, backup, clock)
    assert again.keys_rebased() and again.keys == restored.keys
    clock.now += 3600
    again.rotate_keys()
    assert not again.keys_rebased()
    assert not restore(again, backup, clock).keys_rebased()

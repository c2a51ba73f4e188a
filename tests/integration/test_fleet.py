"""The fleet manager as a user runs it: `edgeflix fleet serve` on loopback, appliances
talking real gRPC (signed with their enrolled Ed25519 key), the CLI over HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgeflix.proto import auth
from edgeflix.proto.codec import Counts, pack_counts, unpack_plan
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from edgeflix.tokens import verify
from tests.conftest import run_cli
from tests.edgeflix.test_proto_codec import GIB, rle_frame
from tests.integration.serve_support import Server, start

FLEET_TOML = """
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{db}"
[heartbeat]
interval_s = 0.5
missed_beats = 3
[planner]
interval_s = 0.5
[origin]
url = "http://127.0.0.1:9"
[[sites]]
name = "home"
prefixes = ["192.168.1.0/24", "2001:db8::/48"]
[[sites]]
name = "lab"
prefixes = ["10.1.0.0/16"]
"""
METHOD = "/edgeflix.fleet.v1.Fleet/"
GB = 10**9


def sha256(title: str) -> str:
    """A digest as appliances report it (of files.json; here of the title id)."""
    return hashlib.sha256(title.encode()).hexdigest()


class ApplianceClient:
    """What an appliance's fleet agent sends: enrol once, then signed calls."""

    def __init__(self, grpc_addr: str, name: str, url: str) -> None:
        self.name, self.url = name, url
        self.key = auth.new_private_key()
        self.channel = grpc.insecure_channel(grpc_addr)
        self.stub = fleet_pb2_grpc.FleetStub(self.channel)
        self.sequence = 0
        self.keys_version = 0  # the URL-token key set it runs (steering needs it current)

    def _md(self, method: str, req: object) -> tuple[tuple[str, str], ...]:
        body = req.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
        return auth.sign_call(self.name, self.key, METHOD + method, body, time.time())

    def enrol(self, token: str) -> fleet_pb2.EnrolResponse:
        req = fleet_pb2.EnrolRequest(
            name=self.name, join_token=token, public_key=auth.public_key(self.key), url=self.url
        )
        return self.stub.Enrol(req, timeout=10)

    def beat(
        self, titles: dict[str, int], load: float = 1e8, health: int = 1, url: str = ""
    ) -> object:
        if self.keys_version == 0:
            self.keys()  # as the real link does right after enrolling
        self.sequence += 1
        req = fleet_pb2.HeartbeatRequest(
            appliance=self.name,
            keys_version=self.keys_version,
            url=url,
            sequence=self.sequence,
            health=health,
            capacity_bps=1e9,
            load_bps=load,
            tiers=[fleet_pb2.TierSpace(tier="hdd", capacity_bytes=100 * GB)],
            titles=[
                fleet_pb2.HeldTitle(title_id=t, digest=sha256(t), complete=True, size_bytes=s)
                for t, s in titles.items()
            ],
            counts_zstd=pack_counts({t: Counts(1, 1000) for t in titles}),
        )
        resp = self.stub.Heartbeat(req, metadata=self._md("Heartbeat", req), timeout=10)
        if resp.keys_version > self.keys_version:
            self.keys()  # reported from the next beat on, as the real link does
        return resp

    def keys(self) -> dict[str, bytes]:
        req = fleet_pb2.GetKeysRequest(appliance=self.name)
        resp = self.stub.GetKeys(req, metadata=self._md("GetKeys", req), timeout=10)
        self.keys_version = resp.keys.version
        return {k.id: k.secret for k in resp.keys.keys}

    def plan(self, have: int = 0) -> fleet_pb2.PlanResponse:
        req = fleet_pb2.GetPlanRequest(appliance=self.name, have_version=have)
        return self.stub.GetPlan(req, metadata=self._md("GetPlan", req), timeout=10)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fleet")
    path = folder / "fleet.toml"
    path.write_text(FLEET_TOML.format(db=folder / "fleet.sqlite"))
    return path


@pytest.fixture(scope="module")
def fleet(config: Path) -> Iterator[Server]:
    server = start(["fleet", "serve", "--config", str(config)], want=("grpc", "http"))
    yield server
    server.stop()


def cli(fleet: Server, *args: str) -> object:
    proc = run_cli(
        ["fleet", *args, "--fleet", fleet.urls["http"], "--json"], check=True, timeout=60
    )
    return json.loads(proc.stdout)


def token(fleet: Server, site: str) -> str:
    out = cli(fleet, "join-token", "--site", site)
    return out["token"]  # type: ignore[index]


def wait_for(check: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not true within {seconds} s")


class Agents:
    """Beats for every appliance in `alive` every 0.2 s, as their fleet agents would."""

    def __init__(self, boxes: dict[str, ApplianceClient]) -> None:
        self.boxes = boxes
        self.alive = set(boxes)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            with self.lock:
                for name in sorted(self.alive):
                    # While the manager restarts a real agent just retries on its next beat.
                    with contextlib.suppress(grpc.RpcError):
                        self.boxes[name].beat({"film": 2 * GB})

    def set_alive(self, *names: str) -> None:
        with self.lock:
            self.alive = set(names)


@pytest.fixture(scope="module")
def boxes(fleet: Server) -> Iterator[dict[str, ApplianceClient]]:
    addr = fleet.urls["grpc"]
    out = {
        "h1": ApplianceClient(addr, "h1", "http://127.0.0.11:8081"),
        "h2": ApplianceClient(addr, "h2", "http://127.0.0.12:8081"),
        "l1": ApplianceClient(addr, "l1", "http://127.0.0.21:8081"),
    }
    for name, box in out.items():
        site = "lab" if name == "l1" else "home"
        assert box.enrol(token(fleet, site)).site == site
    yield out


@pytest.fixture(scope="module")
def agents(boxes: dict[str, ApplianceClient]) -> Iterator[Agents]:
    running = Agents(boxes)
    yield running
    running.stop.set()
    running.thread.join(10)


def test_enrolment_refuses_bad_and_reused_tokens(fleet: Server) -> None:
    box = ApplianceClient(fleet.urls["grpc"], "x1", "http://127.0.0.99:8081")
    with pytest.raises(grpc.RpcError) as err:
        box.enrol("not-a-token")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    good = token(fleet, "home")
    assert box.enrol(good).site == "home"
    other = ApplianceClient(fleet.urls["grpc"], "x2", "http://127.0.0.98:8081")
    with pytest.raises(grpc.RpcError) as err:
        other.enrol(good)
    assert "already used" in (err.value.details() or "")
    # Unsigned or wrongly signed calls are refused.
    with pytest.raises(grpc.RpcError) as err:
        other.beat({})
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A box that moved since it enrolled says so in its beats; a URL no player can use is
    # refused as a bad argument.
    box.beat({}, url="http://127.0.0.97:9090")
    assert cli(fleet, "show", "x1")["url"] == "http://127.0.0.97:9090"  # type: ignore[index]
    with pytest.raises(grpc.RpcError) as err:
        box.beat({}, url="127.0.0.97:9090")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # One on all interfaces (no [fleet] public_url) is no address a player can reach.
    with pytest.raises(grpc.RpcError) as err:
        box.beat({}, url="http://0.0.0.0:9090")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[fleet] public_url" in (err.value.details() or "")
    assert cli(fleet, "show", "x1")["url"] == "http://127.0.0.97:9090"  # type: ignore[index]
    cli(fleet, "rm", "x1")


def test_an_appliance_cannot_call_as_another(fleet: Server) -> None:
    """The reviewer's impersonation: `ev1` sends the name header twice (its own, then the
    victim's), signed with its own key over the victim's name. The manager looked the key
    up by the first name and trusted the last, so ev1's beats moved v1's URL (players
    followed) and ev1 read v1's plan. Every signed call now refuses a repeated header."""
    grpc_addr = fleet.urls["grpc"]
    victim = ApplianceClient(grpc_addr, "v1", "http://127.0.0.31:8081")
    evil = ApplianceClient(grpc_addr, "ev1", "http://10.1.0.32:8081")
    victim.enrol(token(fleet, "home"))
    evil.enrol(token(fleet, "lab"))
    victim.beat({})
    try:
        calls = {
            "Heartbeat": fleet_pb2.HeartbeatRequest(
                sequence=2**62, health=1, capacity_bps=1e9, url="http://127.0.0.1:6666"
            ),
            "GetPlan": fleet_pb2.GetPlanRequest(appliance="v1"),
            "GetKeys": fleet_pb2.GetKeysRequest(appliance="v1"),
        }
        for method, req in calls.items():
            body = req.SerializeToString(deterministic=True)
            signed = dict(auth.sign_call("v1", evil.key, METHOD + method, body, time.time()))
            rest = [(k, v) for k, v in signed.items() if k != auth.NAME]
            for names in (["ev1", "v1"], ["v1", "ev1"]):
                md = [(auth.NAME, n) for n in names] + rest
                with pytest.raises(grpc.RpcError) as err:
                    getattr(evil.stub, method)(req, metadata=md, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
                assert "more than once" in (err.value.details() or "")
        # Signed properly, as itself, ev1 still may not ask for v1's plan or keys.
        for method in ("GetPlan", "GetKeys"):
            req = calls[method]
            body = req.SerializeToString(deterministic=True)
            md2 = auth.sign_call("ev1", evil.key, METHOD + method, body, time.time())
            with pytest.raises(grpc.RpcError) as err:
                getattr(evil.stub, method)(req, metadata=md2, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
        # v1 is untouched: its own URL, and its own next beat (sequence 2) still counts.
        assert cli(fleet, "show", "v1")["url"] == "http://127.0.0.31:8081"  # type: ignore[index]
        victim.beat({}, url="http://127.0.0.31:8082")
        assert cli(fleet, "show", "v1")["url"] == "http://127.0.0.31:8082"  # type: ignore[index]
    finally:
        cli(fleet, "rm", "v1")
        cli(fleet, "rm", "ev1")


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_zstd_bomb_in_a_beat_is_refused_unread(fleet: Server) -> None:
    """32 KB of counts declaring 1 GiB made the manager allocate all of it (and stall
    its loop); it is refused from the frame's header."""
    box = ApplianceClient(fleet.urls["grpc"], "bz1", "http://127.0.0.41:8081")
    box.enrol(token(fleet, "home"))
    try:
        before = _peak_rss_bytes(fleet.proc.pid)
        req = fleet_pb2.HeartbeatRequest(appliance="bz1", sequence=1, counts_zstd=rle_frame(GIB))
        with pytest.raises(grpc.RpcError) as err:
            box.stub.Heartbeat(req, metadata=box._md("Heartbeat", req), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"declares {GIB} bytes" in (err.value.details() or "")
        assert _peak_rss_bytes(fleet.proc.pid) - before < GIB // 4
        box.beat({})  # the appliance itself is not refused for good
    finally:
        cli(fleet, "rm", "bz1")


def steer(fleet: Server, client_ip: str) -> dict:  # type: ignore[type-arg]
    return cli(fleet, "steer", "--client-ip", client_ip, "--title", "film")  # type: ignore[return-value]


def test_steering_per_site_with_signed_urls(
    fleet: Server, boxes: dict[str, ApplianceClient], agents: Agents
) -> None:
    wait_for(lambda: steer(fleet, "10.1.2.3")["candidates"][0]["name"] == "l1", 15)
    home = steer(fleet, "192.168.1.50")
    assert home["client_site"] == "home" and home["outcome"] == "in_site"
    names = [c["name"] for c in home["candidates"]]
    assert set(names[:2]) == {"h1", "h2"} and names[2] == "l1"
    v6 = steer(fleet, "2001:db8::7")
    assert v6["client_site"] == "home" and v6["candidates"][0]["name"] in {"h1", "h2"}
    url = home["urls"][0]
    assert "/t/" in url and url.endswith("/titles/film/master.m3u8")
    tok = url.split("/t/", 1)[1].split("/", 1)[0]
    verify(tok, title_id="film", client_ip=None, keys=boxes["h1"].keys(), now=time.time())


def test_drained_and_silent_appliances_leave_steering(fleet: Server, agents: Agents) -> None:
    def names() -> list[str]:
        return [c["name"] for c in steer(fleet, "192.168.1.50")["candidates"]]

    cli(fleet, "drain", "h2")
    assert "h2" not in names()
    states = {a["name"]: a["state"] for a in cli(fleet, "ls")}  # type: ignore[attr-defined]
    assert states["h2"] == "drained"
    cli(fleet, "undrain", "h2")
    agents.set_alive("h2", "l1")  # h1 goes silent, as if killed
    started = time.monotonic()
    wait_for(lambda: "h1" not in names(), 15)
    assert time.monotonic() - started < 15
    agents.set_alive("h1", "h2", "l1")
    wait_for(lambda: "h1" in names(), 15)


def test_plan_fills_one_appliance_per_site_from_origin_and_peers_from_it(
    fleet: Server, boxes: dict[str, ApplianceClient], agents: Agents
) -> None:
    cli(fleet, "plan", "--now")
    plans = {}
    for name, box in boxes.items():
        resp = box.plan()
        plans[name] = unpack_plan(resp.plan_zstd)
        assert box.plan(have=resp.version).unchanged
    home_sources = {n: list(plans[n].titles[0].sources) for n in ("h1", "h2")}
    assert sorted(len(s) for s in home_sources.values()) == [1, 2]
    assert all(s[-1] == "http://127.0.0.1:9" for s in home_sources.values())
    assert list(plans["l1"].titles[0].sources) == ["http://127.0.0.1:9"]


def test_key_rotation_keeps_issued_urls_valid(
    fleet: Server, boxes: dict[str, ApplianceClient], agents: Agents
) -> None:
    url = steer(fleet, "192.168.1.50")["urls"][0]
    rotated = cli(fleet, "keys", "rotate", "--immediate")
    tok = url.split("/t/", 1)[1].split("/", 1)[0]
    verify(tok, title_id="film", client_ip=None, keys=boxes["h1"].keys(), now=time.time())
    assert f"/t/{rotated['keys'][-1]}." in steer(fleet, "192.168.1.50")["urls"][0]  # type: ignore[index]


def test_keys_say_how_long_they_verify_once_retired(
    fleet: Server, boxes: dict[str, ApplianceClient], agents: Agents
) -> None:
    """`appliance sign --ttl` may promise no longer than this (appliance/keyfile.py)."""
    cli(fleet, "keys", "rotate", "--immediate")
    box = boxes["h1"]
    req = fleet_pb2.GetKeysRequest(appliance=box.name)
    keys = box.stub.GetKeys(req, metadata=box._md("GetKeys", req), timeout=10).keys.keys
    assert keys and all(k.verify_for_s > 0 for k in keys)
    retired = [k for k in keys if k.retires]
    assert retired
    for k in retired:
        assert k.verify_until == pytest.approx(k.retires + k.verify_for_s)


def test_metrics_count_outcomes_and_grpc_health_serves(fleet: Server, agents: Agents) -> None:
    # Both outcomes steered here, as players ask (`fleet steer` probes count nowhere);
    # under xdist this test may not share a fleet with the others, nor run after them:
    # first the agents' beats must have made a home appliance steerable.
    wait_for(lambda: steer(fleet, "192.168.1.50")["outcome"] == "in_site", 15)
    for client in ("192.168.1.50", "203.0.113.5"):  # of the home site; in no site
        params = {"client_ip": client, "title": "film"}
        assert httpx.get(fleet.urls["http"] + "/steer", params=params, timeout=10).is_success
    text = httpx.get(fleet.urls["http"] + "/metrics", timeout=10).text
    counts = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edgeflix_fleet_steering_total{")
    }
    assert counts["in_site"] >= 1 and counts["no_site"] >= 1
    channel = grpc.insecure_channel(fleet.urls["grpc"])
    check = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="edgeflix.fleet.v1.Fleet"), timeout=10
    )
    assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_errors_are_one_line(fleet: Server) -> None:
    proc = run_cli(["fleet", "show", "nope", "--fleet", fleet.urls["http"]], timeout=60)
    assert proc.returncode != 0 and "no appliance named 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli(["fleet", "ls", "--fleet", "http://127.0.0.1:9"], timeout=60)
    assert proc.returncode != 0 and "unreachable" in proc.stderr


def test_restart_keeps_the_registry(
    config: Path, fleet: Server, boxes: dict[str, ApplianceClient]
) -> None:
    fleet.stop()
    again = start(["fleet", "serve", "--config", str(config)], want=("grpc", "http"))
    try:
        names = {a["name"] for a in cli(again, "ls")}  # type: ignore[attr-defined]
        assert {"h1", "h2", "l1"} <= names
    finally:
        again.stop()

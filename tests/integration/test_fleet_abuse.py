"""One enrolled appliance cannot cripple the fleet manager (the reviewer's scripts in
/tmp/rev_abuse): `edgeflix fleet serve` on loopback with a small origin of its own, and
appliances sending real signed gRPC beats. Made-up titles are not counted, beats beyond
the protocol's limits are refused before they cost the loop seconds, a plausible large
beat still passes, and an absurd capacity does not switch bounded loads off."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import pytest
import zstandard

from edgeflix.proto.codec import TITLES_NEEDED, Counts, pack_counts
from edgeflix.proto.gen import fleet_pb2
from fleet.grpc_api import BEAT_WORK_BURST_S, BEAT_WORK_SHARE, MAX_HELD_TITLES, FleetServicer
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import ApplianceClient, sha256

TITLES = [f"title{i:05d}" for i in range(20)]
FLEET_TOML = """
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{db}"
[heartbeat]
interval_s = 5.0
[origin]
url = "{origin}"
poll_s = 0.2
[[sites]]
name = "home"
prefixes = ["127.0.0.0/8"]
"""


class Origin(ThreadingHTTPServer):
    """`GET /titles` of an origin listing TITLES, counting how often it was asked."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OriginHandler)
        self.reads = 0
        listing = [{"id": t, "digest": sha256(t), "total_bytes": 10**9} for t in TITLES]
        self.body = json.dumps({"titles": listing}).encode()


class _OriginHandler(BaseHTTPRequestHandler):
    server: Origin

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)
        self.server.reads += 1

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def serve(folder: Path, origin: Origin) -> Server:
    config = folder / "fleet.toml"
    url = f"http://127.0.0.1:{origin.server_address[1]}"
    config.write_text(FLEET_TOML.format(db=folder / "fleet.sqlite", origin=url))
    reads = origin.reads
    server = start(["fleet", "serve", "--config", str(config)], want=("grpc", "http"))
    # The ticker reads the origin, takes its titles, then waits poll_s: a second read
    # means the first listing is the fleet's catalogue.
    deadline = time.monotonic() + 20
    while origin.reads < reads + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert origin.reads >= reads + 2
    return server


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[Server]:
    server = serve(tmp_path_factory.mktemp("fleet"), origin)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test's appliances go with it: one left holding the titles would be steered to."""
    yield
    if "fleet" in request.fixturenames:
        fleet: Server = request.getfixturevalue("fleet")
        for a in httpx.get(fleet.urls["http"] + "/appliances").raise_for_status().json():
            httpx.delete(fleet.urls["http"] + "/appliances/" + a["name"]).raise_for_status()


def appliance(fleet: Server, name: str, port: int) -> ApplianceClient:
    box = ApplianceClient(fleet.urls["grpc"], name, f"http://127.0.0.1:{port}")
    resp = httpx.post(fleet.urls["http"] + "/join-tokens", json={"site": "home"})
    box.enrol(resp.raise_for_status().json()["token"])
    box.keys()
    return box


def send(box: ApplianceClient, timeout: float = 30, **fields: object) -> object:
    box.sequence += 1
    fields = {"health": 1, "capacity_bps": 1e9, **fields}
    req = fleet_pb2.HeartbeatRequest(
        appliance=box.name, sequence=box.sequence, keys_version=box.keys_version, **fields
    )
    return box.stub.Heartbeat(req, metadata=box._md("Heartbeat", req), timeout=timeout)


def held(*titles: str) -> list[fleet_pb2.HeldTitle]:
    return [
        fleet_pb2.HeldTitle(title_id=t, digest=sha256(t), complete=True, size_bytes=10**9)
        for t in titles
    ]


class SteerProbe:
    """GET /steer in a loop while a beat is read: the slowest answer is how long the
    manager's loop was held."""

    def __init__(self, fleet: Server) -> None:
        self.url = fleet.urls["http"] + "/steer"
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        params = {"client_ip": "127.0.0.1", "title": TITLES[0], "probe": "1"}
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                t = time.monotonic()
                client.get(self.url, params=params)
                self.latencies.append(time.monotonic() - t)
                self._stop.wait(0.02)

    def __enter__(self) -> SteerProbe:
        self._thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)
        self._stop.set()
        self._thread.join(70)


def test_made_up_titles_are_not_counted_nor_kept(origin: Origin, tmp_path: Path) -> None:
    """t2.py: a million made-up ids a beat grew the manager to gigabytes."""
    fleet = serve(tmp_path, origin)
    try:
        box = appliance(fleet, "cnt1", 40101)
        fakes = {f"z{i:07d}": Counts(1, 10**6) for i in range(5000)}
        send(box, titles=held(*TITLES), counts_zstd=pack_counts({TITLES[0]: Counts(3, 10**9)}))
        send(box, titles=held(*TITLES), counts_zstd=pack_counts(fakes))
    finally:
        assert fleet.stop() == 0  # the counts are saved on the way out
    with sqlite3.connect(tmp_path / "fleet.sqlite") as db:
        (raw,) = db.execute("SELECT value FROM meta WHERE key = 'popularity'").fetchone()
    doc = json.loads(raw)
    assert set(doc["fleet"]["long"]["scaled"]) == {TITLES[0]}
    assert set(doc["sites"]["home"]["long"]["scaled"]) == {TITLES[0]}


def test_beats_beyond_the_limits_are_refused_without_holding_the_loop(fleet: Server) -> None:
    """t5.py: 2.8 KB of zstd inflating to 3.7 M counts held the loop 6.5 s; t15.py: 320 k
    held titles ~1 s a beat. Both are refused at once; the appliance's next beat is taken."""
    box = appliance(fleet, "bomb1", 40102)
    inner = fleet_pb2.TitleCounts(title_id="t", requests=1, bytes=1).SerializeToString()
    entry = b"\x0a" + bytes([len(inner)]) + inner
    bomb = zstandard.ZstdCompressor(level=19).compress(entry * ((32 << 20) // len(entry)))
    many = [fleet_pb2.HeldTitle(title_id=f"h{i}") for i in range(MAX_HELD_TITLES + 20_000)]
    for fields in ({"counts_zstd": bomb}, {"titles": many}):
        with SteerProbe(fleet) as probe, pytest.raises(grpc.RpcError) as err:
            send(box, **fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert max(probe.latencies) < 1.0, sorted(probe.latencies)[-3:]
    send(box, titles=held(*TITLES))


def test_a_large_catalogues_beat_is_taken_and_read_off_the_loop(fleet: Server) -> None:
    """30 k held titles (as many as a 4 MiB message carries with their SHA-256 digests) and
    50 k titles of counts: taken, with /steer answered meanwhile."""
    box = appliance(fleet, "big1", 40103)
    titles = [
        fleet_pb2.HeldTitle(
            title_id=f"catalogue-title-{i:06d}", digest=f"{i:064x}", complete=True, tier="hdd"
        )
        for i in range(30_000)
    ]
    counts = {f"catalogue-title-{i:06d}": Counts(40, 9 * 10**9) for i in range(50_000)}
    with SteerProbe(fleet) as probe:
        for _ in range(3):
            resp = send(box, titles=titles, counts_zstd=pack_counts(counts))
            assert not resp.stale  # type: ignore[attr-defined]
    assert max(probe.latencies) < 1.0, sorted(probe.latencies)[-3:]


def test_an_absurd_capacity_does_not_switch_bounded_loads_off(fleet: Server) -> None:
    """t14.py: an appliance at capacity_bps=1e308 made the site's mean ~0, every peer "over
    the bound", and the busy box kept its share of first choices."""
    busy, idle = appliance(fleet, "busy", 40111), appliance(fleet, "idle", 40112)
    hostile = appliance(fleet, "hostile", 40113)

    def first_choices() -> set[str]:
        send(busy, titles=held(*TITLES), load_bps=0.85e9)
        send(idle, titles=held(*TITLES), load_bps=0.05e9)
        url = fleet.urls["http"] + "/steer"
        out = set()
        for t in TITLES:
            answer = httpx.get(url, params={"client_ip": "127.0.0.1", "title": t, "probe": "1"})
            out.add(answer.raise_for_status().json()["candidates"][0]["name"])
        return out

    assert first_choices() == {"idle"}
    send(hostile, capacity_bps=1e308, load_bps=0.0)
    assert first_choices() == {"idle"}


def steered_to(fleet: Server, title: str) -> set[str]:
    params = {"client_ip": "127.0.0.1", "title": title, "probe": "1"}
    answer = httpx.get(fleet.urls["http"] + "/steer", params=params).raise_for_status()
    return {c["name"] for c in answer.json()["candidates"]}


def test_a_beat_may_leave_out_the_held_titles_the_fleet_keeps(fleet: Server) -> None:
    """The list is megabytes for tens of thousands of titles: sent when it changes, not
    every few seconds. Under a digest the fleet does not keep, the list it has stands and
    its answer asks for the new one."""
    box = appliance(fleet, "omit1", 40121)
    resp = send(box, titles=held(*TITLES), titles_digest=b"v1")
    assert resp.titles_digest == b"v1"  # type: ignore[attr-defined]
    resp = send(box, titles_omitted=True, titles_digest=b"v1")
    assert resp.titles_digest == b"v1"  # type: ignore[attr-defined]
    assert "omit1" in steered_to(fleet, TITLES[0])
    with pytest.raises(grpc.RpcError) as err:  # a digest it does not keep: not taken
        send(box, titles_omitted=True, titles_digest=b"v2")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == TITLES_NEEDED
    assert "omit1" in steered_to(fleet, TITLES[0])
    resp = send(box, titles=held(*TITLES[1:]), titles_digest=b"v2")
    assert resp.titles_digest == b"v2"  # type: ignore[attr-defined]
    assert "omit1" not in steered_to(fleet, TITLES[0])
    assert "omit1" in steered_to(fleet, TITLES[1])


def test_a_first_beat_without_its_titles_is_refused_not_taken_as_holding_none(
    fleet: Server,
) -> None:
    """A manager restarted without this appliance's last beat keeps no list for it: a beat
    leaving the list out is refused (the appliance sends it at once), never read as none."""
    box = appliance(fleet, "omit2", 40125)
    with pytest.raises(grpc.RpcError) as err:
        send(box, titles_omitted=True, titles_digest=b"v1")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == TITLES_NEEDED
    resp = send(box, titles=held(*TITLES), titles_digest=b"v1")
    assert resp.titles_digest == b"v1"  # type: ignore[attr-defined]
    assert "omit2" in steered_to(fleet, TITLES[0])


def test_a_beat_over_grpcs_default_4_mib_is_taken(fleet: Server) -> None:
    """60 k held titles with their SHA-256 digests: about 6 MB, which gRPC's default
    message limit refused, so an appliance that large could never beat."""
    box = appliance(fleet, "huge1", 40122)
    titles = [
        fleet_pb2.HeldTitle(
            title_id=f"catalogue-title-{i:06d}", digest=f"{i:064x}", complete=True, tier="hdd"
        )
        for i in range(60_000)
    ]
    assert sum(t.ByteSize() + 3 for t in titles) > 4 << 20
    resp = send(box, titles=titles, titles_digest=b"big")
    assert resp.titles_digest == b"big"  # type: ignore[attr-defined]


def test_large_beats_back_to_back_are_refused_small_ones_are_not(fleet: Server) -> None:
    """A large beat costs the manager's loop up to tenths of a second: one appliance
    sending them back to back (hostile or broken) is refused once it has had its share of
    the manager's time, while beats as cheap as an unchanged list's go on at any pace."""
    small = appliance(fleet, "calm1", 40124)
    for _ in range(100):
        send(small, titles=held(*TITLES))
    box = appliance(fleet, "rapid1", 40123)
    titles = [
        fleet_pb2.HeldTitle(title_id=f"catalogue-title-{i:06d}", digest=f"{i:064x}")
        for i in range(60_000)
    ]
    counts = pack_counts({f"catalogue-title-{i:06d}": Counts(1, 10**6) for i in range(60_000)})
    taken = 0
    with pytest.raises(grpc.RpcError) as err:
        for i in range(100):  # ~0.1 s of work each: refused after about 2 s of them
            send(box, titles=titles, counts_zstd=counts, titles_digest=b"%d" % i)
            taken += 1
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert "beats too often" in (err.value.details() or "") and taken >= 2
    send(small, titles=held(*TITLES))  # another appliance's share is its own


def test_one_slow_beat_costs_at_most_a_few_refused_ones() -> None:
    """The debt stops at one burst: a beat that took 12 s of CPU (an overloaded manager)
    does not keep a healthy appliance out of steering for minutes."""
    servicer = FleetServicer(None)  # type: ignore[arg-type]
    servicer._charge_beat("b", 12.0, 100.0)
    assert servicer._beat_work_left("b", 101.0) <= 0
    assert servicer._beat_work_left("b", 100.0 + 2 * BEAT_WORK_BURST_S / BEAT_WORK_SHARE) > 0

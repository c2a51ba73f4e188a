"""/steer's misses (titles the last catalogue read did not list) against an origin that
misbehaves, on a real manager process. A hung origin holds no player's connection: past
the miss that started a read, each miss is a 404 at once and a listed title keeps steering
while misses flood (before, every miss joined the hung read and waited a second, and a
flood held every connection the cap allows). A catalogue the manager cannot parse (a size
of 1e400, JSON nested past the parser's limit) is a 404 / NOT_FOUND, never a 500 with a
traceback or UNKNOWN.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from tests.integration.catalogue_origin import origin
from tests.integration.serve_support import Server, start

MISS_REFRESH_S = 0.5  # a miss may start a read this soon after the last: a quick test


@contextmanager
def _fleet(tmp_path: Path, url: str) -> Iterator[tuple[Server, Path]]:
    config = tmp_path / "fleet.toml"
    config.write_text(f"""
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{tmp_path}/db/fleet.sqlite"
[origin]
url = "{url}"
poll_s = 3600
miss_refresh_s = {MISS_REFRESH_S}
""")
    log = tmp_path / "fleet.log"
    with log.open("wb") as out:
        fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=out)
    try:
        yield fleet, log
    finally:
        assert fleet.stop() == 0


def _connect(fleet: Server) -> http.client.HTTPConnection:
    host, _, port = fleet.urls["http"].partition("://")[2].rpartition(":")
    return http.client.HTTPConnection(host, int(port), timeout=10)


def _steer(conn: http.client.HTTPConnection, title: str) -> tuple[int, dict[str, object], float]:
    """Status, body and how long the answer took."""
    started = time.monotonic()
    conn.request("GET", f"/steer?client_ip=10.0.0.1&title={title}")
    resp = conn.getresponse()
    raw = resp.read()
    took = time.monotonic() - started
    if resp.getheader("content-type") != "application/json":
        return resp.status, {"raw": raw.decode(errors="replace")}, took  # a 500's text
    return resp.status, json.loads(raw), took


def _listed(conn: http.client.HTTPConnection) -> None:
    """Until the manager took the origin's listing: an unlisted title is then a 404 (before,
    it goes to the origin)."""
    deadline = time.monotonic() + 20
    while _steer(conn, "not-listed")[0] != 404:
        assert time.monotonic() < deadline, "the manager never read the catalogue"
        time.sleep(0.1)
    assert _steer(conn, "film")[0] == 200


def _flood(fleet: Server, stop: threading.Event, out: list[tuple[int, float]], n: int) -> None:
    """Misses for made-up names on one keep-alive connection until `stop` (or 200 asked)."""
    conn = _connect(fleet)
    try:
        for i in range(200):
            if stop.is_set():
                break
            status, _, took = _steer(conn, f"made-up-{n}-{i}")
            out.append((status, took))
    finally:
        conn.close()


def test_a_hung_origin_holds_no_miss_and_listed_titles_keep_steering(tmp_path: Path) -> None:
    with origin("film") as (url, handler), _fleet(tmp_path, url) as (fleet, _):
        conn = _connect(fleet)
        _listed(conn)
        handler.delay_s = 60.0  # hung from now on (released when the test's origin stops)
        time.sleep(MISS_REFRESH_S + 0.1)  # a miss may start a read

        reads = handler.reads
        status, _, took = _steer(conn, "made-up-first")  # starts the read that hangs
        assert status == 404 and took < 1.5, (status, took)  # waited at most MISS_WAIT_S
        assert handler.reads == reads + 1

        # The read is out (ORIGIN_TIMEOUT_S, 10 s): 8 connections flood misses for 2 s while
        # a player steers a listed title.
        stop = threading.Event()
        answers: list[list[tuple[int, float]]] = [[] for _ in range(8)]
        flood = [
            threading.Thread(target=_flood, args=(fleet, stop, answers[n], n), daemon=True)
            for n in range(8)
        ]
        for t in flood:
            t.start()
        player: list[tuple[int, float]] = []
        try:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                status, _, took = _steer(conn, "film")
                player.append((status, took))
                time.sleep(0.02)
        finally:
            stop.set()
            for t in flood:
                t.join(15)
        conn.close()

        misses = [a for answer in answers for a in answer]
        slowest_miss = max(took for _, took in misses)
        assert slowest_miss < 0.5, slowest_miss  # none waited on the hung origin
        assert {s for s, _ in misses} == {404}
        assert len(misses) > 100, len(misses)
        assert len(player) > 20 and {s for s, _ in player} == {200}, player
        assert max(took for _, took in player) < 0.5, player
        assert handler.reads == reads + 1  # one read at a time, the hung one


BAD_CATALOGUES = [
    # JSON reads 1e400 as infinity, and int(inf) raised OverflowError: /steer answered 500.
    b'{"titles": [{"id": "film", "digest": "d", "total_bytes": 10},'
    b' {"id": "bad", "total_bytes": 1e400}]}',
    # Past the JSON parser's recursion limit: RecursionError.
    b"[" * 100_000 + b"]" * 100_000,
]


@pytest.mark.parametrize("body", BAD_CATALOGUES, ids=["size-1e400", "nested-json"])
def test_a_catalogue_the_manager_cannot_parse_is_a_404_not_a_500(
    tmp_path: Path, body: bytes
) -> None:
    with origin("film") as (url, handler), _fleet(tmp_path, url) as (fleet, log):
        conn = _connect(fleet)
        _listed(conn)
        handler.body = body
        time.sleep(MISS_REFRESH_S + 0.1)  # a miss may read the catalogue again
        reads = handler.reads
        status, answer, _ = _steer(conn, "bad")
        assert handler.reads == reads + 1  # it did read that catalogue
        assert status == 404, (status, answer)
        assert "does not list it" in str(answer["error"]), answer
        assert _steer(conn, "film")[0] == 200  # the listing before, or the good entry, stands
        conn.close()

        time.sleep(MISS_REFRESH_S + 0.1)
        with grpc.insecure_channel(fleet.urls["grpc"]) as channel:
            stub = fleet_pb2_grpc.FleetStub(channel)
            with pytest.raises(grpc.RpcError) as missing:
                stub.Steer(fleet_pb2.SteerRequest(client_ip="10.0.0.1", title_id="bad"), timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND, missing.value
        assert "Traceback" not in log.read_text()

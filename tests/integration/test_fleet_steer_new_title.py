"""A title published since the manager's last read of the catalogue plays at once: the
first /steer for it has the manager read the catalogue and ask again (200), not answer 404
for up to `[origin] poll_s`. A title the origin does not list is still a clean 404, and a
flood of /steer for made-up names makes at most one catalogue read per `miss_refresh_s`
(5 s by default), each /steer answered fast. A real manager process; an origin on loopback
that counts its reads.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import grpc
import pytest

from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from tests.integration.catalogue_origin import origin
from tests.integration.serve_support import make_title, serving_origin, start


def _steer(conn: http.client.HTTPConnection, title: str) -> tuple[int, dict[str, object]]:
    conn.request("GET", f"/steer?client_ip=10.0.0.1&title={title}")
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_a_title_published_since_the_last_poll_is_steered_at_once(tmp_path: Path) -> None:
    with origin("film") as (url, handler):
        config = tmp_path / "fleet.toml"
        config.write_text(f"""
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{tmp_path}/db/fleet.sqlite"
[origin]
url = "{url}"
poll_s = 3600
""")
        with (tmp_path / "fleet.log").open("wb") as log:
            fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=log)
        try:
            host, _, port = fleet.urls["http"].partition("://")[2].rpartition(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            deadline = time.monotonic() + 20
            while _steer(conn, "film")[0] != 200:  # the ticker's first poll
                assert time.monotonic() < deadline, "the manager never read the catalogue"
                time.sleep(0.1)
            conn.close()
            time.sleep(5.5)  # miss_refresh_s past that poll: a miss may read at once
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            reads = handler.reads
            handler.titles.append("new-film")

            status, body = _steer(conn, "new-film")
            assert status == 200, body
            assert body["title"] == "new-film" and body["urls"], body
            assert handler.reads == reads + 1

            # Made-up names, as fast as the manager answers: each a 404 at once.
            started, slowest, asked = time.monotonic(), 0.0, 0
            while time.monotonic() - started < 3:
                t0 = time.monotonic()
                status, body = _steer(conn, f"no-such-title-{asked}")
                slowest = max(slowest, time.monotonic() - t0)
                asked += 1
                assert status == 404, body
                assert "does not list it" in str(body["error"]), body
            elapsed = time.monotonic() - started
            assert asked > 100, asked
            assert handler.reads - (reads + 1) <= 1 + elapsed / 5, (handler.reads, reads)
            assert slowest < 1.5, slowest
            conn.close()

            # gRPC Steer (the playback service's way in) reads again too, as rate-limited.
            time.sleep(5.5)
            handler.titles.append("grpc-film")
            with grpc.insecure_channel(fleet.urls["grpc"]) as channel:
                stub = fleet_pb2_grpc.FleetStub(channel)
                answer = stub.Steer(
                    fleet_pb2.SteerRequest(client_ip="10.0.0.1", title_id="grpc-film"), timeout=10
                )
                assert answer.urls
                with pytest.raises(grpc.RpcError) as missing:
                    stub.Steer(
                        fleet_pb2.SteerRequest(client_ip="10.0.0.1", title_id="no-such"),
                        timeout=10,
                    )
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            assert fleet.stop() == 0


def test_a_title_published_on_a_real_origin_is_steered_at_once(tmp_path: Path) -> None:
    """The same end to end with `edgeflix origin serve`: a title moved into its store (as a
    publish renames a finished folder in) is steered on its first /steer, an hour before the
    manager's next poll would have listed it."""
    store = tmp_path / "origin"
    make_title(store / "titles" / "film", "film")
    with serving_origin(store) as real_origin:
        config = tmp_path / "fleet.toml"
        config.write_text(f"""
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{tmp_path}/db/fleet.sqlite"
[origin]
url = "{real_origin.url}"
poll_s = 3600
""")
        with (tmp_path / "fleet.log").open("wb") as log:
            fleet = start(["fleet", "serve", "--config", str(config)], ("http",), stderr=log)
        try:
            host, _, port = fleet.urls["http"].partition("://")[2].rpartition(":")

            def steer(title: str) -> tuple[int, dict[str, object]]:
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                try:
                    return _steer(conn, title)
                finally:
                    conn.close()

            # Until the manager has read the listing it steers any title to the origin; a
            # made-up one is a 404 once it has (the origin answers 503 while it first reads
            # its store, and each miss may read again, miss_refresh_s apart).
            deadline = time.monotonic() + 30
            while steer("no-such-title")[0] != 404:
                assert time.monotonic() < deadline, "the manager never read the catalogue"
                time.sleep(0.5)
            assert steer("film")[0] == 200
            time.sleep(5.5)  # miss_refresh_s past the last miss's read
            make_title(tmp_path / "staging" / "new-film", "new-film")
            (tmp_path / "staging" / "new-film").rename(store / "titles" / "new-film")

            status, body = steer("new-film")
            assert status == 200, body
            assert body["title"] == "new-film" and body["urls"], body
        finally:
            assert fleet.stop() == 0

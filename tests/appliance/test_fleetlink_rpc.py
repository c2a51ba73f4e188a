"""The fleet link dials what `[fleet] url` says in every form the config accepts: the gRPC
target is built from the parsed host and port (`:PORT` gets its host, an IPv6 host its
brackets), not passed on as written. Real gRPC servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from appliance.config import FleetLinkConfig
from appliance.fleetlink_rpc import grpc_target, open_channel
from appliance.fleetlink_state import LinkState


@pytest.fixture
def fleet_port() -> Iterator[int]:
    """A gRPC server (health only) on 127.0.0.1 and ::1, one port."""
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    assert srv.add_insecure_port(f"[::1]:{port}") == port
    srv.start()
    try:
        yield port
    finally:
        srv.stop(None)


@pytest.mark.parametrize(
    "form", [":{port}", "127.0.0.1:{port}", "[::1]:{port}", "localhost:{port}"]
)
def test_every_accepted_url_form_reaches_the_fleet(
    tmp_path: Path, fleet_port: int, form: str
) -> None:
    fleet = FleetLinkConfig(url=form.format(port=fleet_port))
    channel = open_channel(fleet, LinkState(tmp_path / "fleet"))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("url", "target"),
    [(":7070", "127.0.0.1:7070"), ("[::1]:7070", "[::1]:7070"), ("box.lan:7070", "box.lan:7070")],
)
def test_grpc_targets(url: str, target: str) -> None:
    assert grpc_target(url) == target

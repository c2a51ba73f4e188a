"""`edgeflix fleet serve` under a low descriptor limit (`ulimit -n 1024`, hard too): a crowd
of silent connections on the public HTTP port leaves players and appliances served."""

from __future__ import annotations

import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx

from edgeflix.proto import auth
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from tests.integration.test_exhaustion_fixes_fleet_http import FLEET_TOML, STEER


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_a_crowd_of_silent_connections_takes_no_descriptor_gRPC_needs(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    args = [sys.executable, "-m", "edgeflix.cli", "fleet", "serve", "--config"]
    proc = subprocess.Popen(
        [*args, str(tmp_path / "fleet.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,  # unbuffered: select() must see every line
        preexec_fn=_low_nofile,
    )
    crowd: list[socket.socket] = []
    try:
        urls: dict[str, str] = {}
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while len(urls) < 2 and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1)[0]:
                word, _, url = proc.stdout.readline().decode().strip().partition(" on ")
                urls[word] = url
        host, _, port = urls["http"].removeprefix("http://").rpartition(":")
        for _ in range(1100):  # past the 1,024 descriptors the manager may hold
            crowd.append(socket.create_connection((host, int(port)), timeout=5))
        assert httpx.get(urls["http"] + STEER, timeout=5).status_code == 200
        with grpc.insecure_channel(urls["grpc"]) as channel:
            key = auth.public_key(auth.new_private_key())
            request = fleet_pb2.EnrolRequest(name="b1", public_key=key, url="http://b:8081")
            fleet_pb2_grpc.FleetStub(channel).Enrol(request, timeout=10)
    finally:
        for sock in crowd:
            sock.close()
        proc.terminate()
        proc.wait(20)

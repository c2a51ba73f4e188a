"""What /metrics says when a disk dies under the daemon (ext4 loop disks, realdisk_support.py):
a response cut mid-body by the disk's EIO is counted as aborted, not as a 200, and the 404s
for the dead disk's files are counted under their title, not "-"."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import httpx

from tests.conftest import run_cli
from tests.integration import daemon_support
from tests.integration.daemon_support import poll, start_daemon
from tests.integration.realdisk_support import (
    MakeDisks,
    files_on,
    real_disks,
    spread_over,
    write_config,
)
from tests.integration.serve_support import Server, make_title, read_until_closed

__all__ = ["real_disks"]  # the fixture, imported for pytest to find


def _samples(server: Server, family: str) -> dict[str, float]:
    """Labels → value of one metric family from /metrics."""
    text = httpx.get(server.urls["admin"] + "/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith(family + "{"):
            labels, value = line[len(family) :].rsplit(" ", 1)
            out[labels] = float(value)
    return out


def test_a_response_cut_by_eio_is_counted_as_aborted_not_200(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    (disk,) = real_disks(1, mib=32)
    config = write_config(tmp_path, [disk])
    folder = tmp_path / "src" / "big"
    (folder / "v0").mkdir(parents=True)
    body = os.urandom(16 << 20)  # far more than the socket buffers hold
    (folder / "v0" / "huge.m4s").write_bytes(body)
    make_title(folder, "big")
    run_cli(["appliance", "load", "--config", str(config), "--title", "big", "--from",
             str(folder)], check=True)  # fmt: skip
    server = start_daemon(config)
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(10)
            sock.connect(server.addr)
            sock.sendall(b"GET /titles/big/v0/huge.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
            first = sock.recv(64 * 1024)
            assert first.startswith(b"HTTP/1.1 200")
            disk.shutdown()  # every read of the file fails with EIO from now on
            time.sleep(0.2)
            rest, closed = read_until_closed(sock, timeout=10)
        assert closed and len(first) + len(rest) < len(body), "the response was not cut"
        aborted: dict[str, float] = {}
        for _ in range(50):  # the worker's counters reach the supervisor on its tick
            aborted = _samples(server, "edgeflix_appliance_responses_aborted_total")
            if aborted:
                break
            time.sleep(0.1)
        assert aborted == {'{title="big"}': 1.0}
        requests = _samples(server, "edgeflix_appliance_requests_total")
        assert requests.get('{status="200",title="big"}', 0) == 0, requests
    finally:
        server.stop()


def test_404s_for_a_dead_disks_files_are_counted_under_their_title(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    d0, d1 = real_disks(2)
    config, *_ = spread_over(tmp_path, [d0, d1])
    lost = files_on(d1, "spread")
    server = start_daemon(config)
    try:
        d1.shutdown()
        doc = poll(server, lambda d: str(d1.mount) in d["health"]["disks_out_of_service"], 5)
        assert doc is not None, "health did not take the dead disk out within 5 s"
        for rel in lost:
            assert httpx.get(f"{server.url}/titles/spread/{rel}", timeout=5).status_code == 404
        assert httpx.get(f"{server.url}/titles/nosuch/v0/a.m4s", timeout=5).status_code == 404
        want = {'{status="404",title="spread"}': float(len(lost)),
                '{status="404",title="-"}': 1.0}  # fmt: skip
        got: dict[str, float] = {}
        for _ in range(50):
            requests = _samples(server, "edgeflix_appliance_requests_total")
            got = {k: v for k, v in requests.items() if 'status="404"' in k}
            if got == want:
                break
            time.sleep(0.1)
        assert got == want
    finally:
        server.stop()


def test_metrics_answer_with_a_missing_disk_of_detected_tier(tmp_path: Path) -> None:
    config = daemon_support.write_config(tmp_path)
    config.write_text(config.read_text().replace(', tier = "ssd"', ""))  # tier detected
    server = start_daemon(config)
    try:
        shutil.rmtree(tmp_path / "d1")
        doc = poll(server, lambda d: str(tmp_path / "d1") in d["health"]["disks_out_of_service"], 5)
        assert doc is not None, "health did not take the missing disk out within 5 s"
        reply = httpx.get(server.urls["admin"] + "/metrics", timeout=5)
        assert reply.status_code == 200
        assert f'disk="{tmp_path / "d0"}"' in reply.text
        # Said out of service, with no figures (its mount point's would be another disk's).
        assert f'edgeflix_appliance_disk_in_service{{disk="{tmp_path / "d1"}"}} 0' in reply.text
        assert f'_bytes{{disk="{tmp_path / "d1"}"' not in reply.text
    finally:
        server.stop()

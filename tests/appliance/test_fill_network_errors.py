"""Network errors in the middle of a fill are the network's: a reset, a connection closed
mid-body, no route to the host or its network. Each is a transient failure (retried with
backoff, resumed from the bytes already staged), never a fatal error or a traceback.

Resets are real (SO_LINGER 0 on loopback), and so is an unreachable source at connect: a fill
run inside its own network namespace (`unshare -n`, root only) whose source address has no
route, or an `unreachable` route, until the backoff brings it up. On an open connection
EHOSTUNREACH comes only once TCP's retransmissions give up (minutes), too slow to stage
here: the transport's rule for it (connection_lost) is tested directly."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.fill.downloader import Pacer, TitleFetcher, TitleProgress
from appliance.fill.layout import StagingLayout
from appliance.fill.plan import PlannedTitle
from appliance.fill.retry import Failure, Outcome, RetryPolicy
from appliance.fill.stream import _failure_of
from appliance.fill.transport import BodyTruncated, Pool, Timeout, connection_lost
from tests.appliance.fill_server import ScriptedServer, read_request, scripted, serve_files
from tests.appliance.test_fill_stream import FAST, assert_verified, fill, make_source

REPO = Path(__file__).resolve().parents[2]
NETWORK_ERRNOS = (
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ENETDOWN,
    errno.EHOSTDOWN,
)


@pytest.mark.parametrize("code", NETWORK_ERRNOS, ids=errno.errorcode.get)
def test_every_socket_error_once_connected_is_a_transient_transport_error(code: int) -> None:
    """EHOSTUNREACH and ENETUNREACH are plain OSErrors, not ConnectionErrors: they must not
    slip past the transport as a bare OSError (the fill would stop on it with a traceback)."""
    exc = OSError(code, os.strerror(code))
    lost = connection_lost(exc, "connection lost mid-body")
    assert isinstance(lost, BodyTruncated)
    assert os.strerror(code) in str(lost) and "\n" not in str(lost)
    failure = _failure_of(lost)
    assert failure is Failure.TRUNCATED
    assert RetryPolicy().decide(failure, 1, 0, 0) is Outcome.RETRY


def test_a_timeout_stays_a_timeout() -> None:
    lost = connection_lost(TimeoutError(errno.ETIMEDOUT, "Connection timed out"), "recv")
    assert isinstance(lost, Timeout)
    assert RetryPolicy().decide(_failure_of(lost), 1, 0, 0) is Outcome.RETRY


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0): the client's recv sees ECONNRESET."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("where", ["before_head", "mid_body"])
def test_a_reset_is_retried_and_resumed(tmp_path: Path, where: str) -> None:
    model, files = make_source(tmp_path, [400_000])
    seg = "/titles/t/v0/seg0.m4s"
    log: list[dict[str, str]] = []
    struck = [False]

    def handler(sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            log.append(req)
            body = files[req[":target"]]
            start = int(req["range"][6:-1]) if "range" in req else 0
            if req[":target"] == seg and not struck[0]:
                struck[0] = True
                if where == "mid_body":
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    sock.sendall(body[:150_000])
                _reset(sock)
                return
            status = "206 Partial Content" if start else "200 OK"
            head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body) - start}\r\n"
            if start:
                head += f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n"
            # One request per connection: the reset then strikes a fresh connection (on a
            # reused one, Pool.get quietly tries a new one, which is no failed attempt).
            head += "Connection: close\r\n"
            sock.sendall(head.encode() + b"\r\n" + body[start:])
            return

    with scripted(handler) as server:
        progress = fill(server.url, tmp_path / "staging", streams=1)
    assert_verified(tmp_path / "staging", model)
    assert progress.retries == 1
    ranges = [r.get("range") for r in log if r[":target"] == seg]
    if where == "mid_body":  # what had arrived before the RST is kept, not fetched again
        assert ranges[0] is None and ranges[1] is not None and int(ranges[1][6:-1]) > 0
        assert progress.downloaded == model.total_bytes
    else:
        assert ranges == [None, None]


def child_fill(kind: str, folder: str) -> None:
    """Run in a fresh network namespace: a fill from 10.9.9.9, which has no route
    ("net") or an unreachable route ("host") until the first backoff adds it on lo."""
    ip = shutil.which("ip") or "ip"
    subprocess.run([ip, "link", "set", "lo", "up"], check=True)
    if kind == "host":
        subprocess.run([ip, "route", "add", "unreachable", "10.9.9.9/32"], check=True)
    tmp = Path(folder)
    model, files = make_source(tmp, [200_000])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        if not slept:  # the network comes back during the first backoff
            if kind == "host":
                subprocess.run([ip, "route", "del", "unreachable", "10.9.9.9/32"], check=True)
            subprocess.run([ip, "addr", "add", "10.9.9.9/32", "dev", "lo"], check=True)
        slept.append(seconds)
        await asyncio.sleep(0)

    server = ScriptedServer(serve_files(files, []), host="0.0.0.0")
    progress = TitleProgress("t")

    async def go() -> None:
        pool = Pool()
        try:
            title = PlannedTitle(id="t", sources=(f"http://10.9.9.9:{server.port}",))
            staging = StagingLayout(tmp / "staging")
            await TitleFetcher(
                pool, title, staging, Pacer(None, None, sleep=sleep), FAST, 2, progress
            ).run()
        finally:
            pool.close()

    try:
        asyncio.run(go())
    finally:
        server.close()
    assert_verified(tmp / "staging", model)
    print(
        json.dumps(
            {"retries": progress.retries, "last": progress.last_failure, "slept": len(slept)}
        )
    )


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _namespaces_work(), reason="needs root and unshare -n for a private network"
)
@pytest.mark.parametrize(
    ("kind", "reason"), [("net", "Network is unreachable"), ("host", "No route to host")]
)
def test_an_unreachable_source_is_retried_until_its_route_is_back(
    tmp_path: Path, kind: str, reason: str
) -> None:
    code = (
        "import sys; from tests.appliance.test_fill_network_errors import child_fill; "
        "child_fill(sys.argv[1], sys.argv[2])"
    )
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code, kind, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["retries"] == 1 and result["slept"] == 1
    assert reason in result["last"]

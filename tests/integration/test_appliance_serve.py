"""`edgeflix appliance run` over real HTTP: tokens, Range, conditionals, CORS, pipelining and
hostile clients, once with sendfile and once with the user-space fallback."""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgeflix import tokens
from tests.conftest import run_cli
from tests.integration.serve_support import (
    Server,
    connect,
    make_title,
    raw,
    read_response,
    recv_all,
    start,
)

SECRET = b"integration-test-secret-0123"


@dataclass
class Appliance:
    server: Server
    config: Path
    source: Path

    def path(self, rel: str, title: str = "bunny", **kw: object) -> str:
        key = tokens.SigningKey("k1", SECRET)
        token = tokens.sign(title, key, int(time.time()) + 600, **kw)  # type: ignore[arg-type]
        return tokens.signed_path(token, title, rel)

    def url(self, rel: str, title: str = "bunny", **kw: object) -> str:
        return self.server.url + self.path(rel, title, **kw)


def write_config(root: Path, **serve: object) -> Path:
    lines = [
        "[storage]",
        f'disks = [ {{ path = "{root}/ssd0", tier = "ssd" }},',
        f'          {{ path = "{root}/hdd0", tier = "hdd" }} ]',
        f'index = "{root}/index.sqlite"',
        "[serve]",
        'listen = "127.0.0.1:0"',
        *(f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false")
          for k, v in serve.items()),
        "[admin]",
        'listen = "127.0.0.1:0"',
        "[auth]",
        'tokens = "required"',
        f'keys = [ {{ id = "k1", secret = "{base64.b64encode(SECRET).decode()}" }} ]',
    ]  # fmt: skip
    for disk in ("ssd0", "hdd0"):
        (root / disk).mkdir(parents=True, exist_ok=True)
    path = root / "appliance.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def seed(config: Path, source: Path, title: str = "bunny") -> None:
    run_cli(["appliance", "load", "--config", str(config), "--title", title, "--from", str(source)],
            check=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="module", params=[True, False], ids=["sendfile", "fallback"])
def appliance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Appliance]:
    root = tmp_path_factory.mktemp("appliance")
    source = make_title(root / "src" / "bunny", "bunny")
    config = write_config(root, workers=2, header_timeout_s=1.0, sendfile=request.param)
    seed(config, source)
    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    yield Appliance(server, config, source)
    assert server.stop() == 0


def test_token_url_serves_whole_file(appliance: Appliance) -> None:
    seg = (appliance.source / "v0/seg1.m4s").read_bytes()
    r = httpx.get(appliance.url("v0/seg1.m4s"))
    assert r.status_code == 200 and r.content == seg
    # Not named by its content (origin/segments.py name_by_content): it may change on a re-publish.
    assert r.headers["cache-control"] == "public, max-age=30"
    assert r.headers["access-control-allow-origin"] == "*"
    m = httpx.get(appliance.url("master.m3u8"))
    assert m.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert m.headers["cache-control"] == "public, max-age=30"
    assert httpx.get(appliance.url("manifest.mpd")).headers["content-type"] == (
        "application/dash+xml"
    )
    assert httpx.get(appliance.url("poster.jpg")).headers["content-type"] == "image/jpeg"


def test_token_refusals(appliance: Appliance) -> None:
    base = appliance.server.url
    key = tokens.SigningKey("k1", SECRET)
    expired = tokens.signed_path(tokens.sign("bunny", key, int(time.time()) - 5), "bunny", "x")
    other_key = tokens.SigningKey("k2", SECRET)
    unknown = tokens.signed_path(tokens.sign("bunny", other_key, 2**33), "bunny", "master.m3u8")
    good = appliance.path("master.m3u8").partition("/titles/")[0]  # "/t/<token>"
    for path in [
        "/titles/bunny/master.m3u8",  # no token while tokens are required
        expired,
        unknown,
        appliance.path("master.m3u8", title="other").replace("/other/", "/bunny/"),
        appliance.path("master.m3u8", client_ip="10.9.9.9"),
        "/t/not-a-token/titles/bunny/master.m3u8",
        good[:-4] + "/titles/bunny/master.m3u8",  # truncated
        good[:-2] + "+=/titles/bunny/master.m3u8",  # not url-safe base64
        good + "AA/titles/bunny/master.m3u8",  # a longer MAC
        "/titles/bunny/master.m3u8?token=" + good[3:],  # in the query instead of the path
    ]:
        assert httpx.get(base + path).status_code == 403, path
    assert httpx.get(appliance.url("master.m3u8", client_ip="127.0.0.1")).status_code == 200
    assert httpx.get(appliance.url("nope.m4s")).status_code == 404


def test_ranges(appliance: Appliance) -> None:
    seg = (appliance.source / "v0/seg1.m4s").read_bytes()
    url = appliance.url("v0/seg1.m4s")
    with httpx.Client() as c:
        r = c.get(url, headers={"Range": "bytes=10-19"})
        assert (r.status_code, r.content) == (206, seg[10:20])
        r = c.get(url, headers={"Range": "bytes=-7"})
        assert (r.status_code, r.content) == (206, seg[-7:])
        r = c.get(url, headers={"Range": "bytes=299990-"})
        assert r.content == seg[299990:]
        assert r.headers["content-range"] == f"bytes 299990-{len(seg) - 1}/{len(seg)}"
        r = c.get(url, headers={"Range": f"bytes={len(seg)}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(seg)}"
        r = c.get(url, headers={"Range": "bytes=0-1,100-101"})
        assert r.status_code == 206
        boundary = r.headers["content-type"].split("boundary=")[1]
        parts = r.content.split(f"--{boundary}".encode())
        assert parts[1].endswith(b"\r\n\r\n" + seg[0:2] + b"\r\n")
        assert parts[2].endswith(b"\r\n\r\n" + seg[100:102] + b"\r\n")
        assert b"Content-Range: bytes 100-101/" in parts[2]
        assert int(r.headers["content-length"]) == len(r.content)


def test_conditionals(appliance: Appliance) -> None:
    url = appliance.url("v0/init.mp4")
    with httpx.Client() as c:
        first = c.get(url)
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        assert c.get(url, headers={"If-None-Match": etag}).status_code == 304
        assert c.get(url, headers={"If-Modified-Since": modified}).status_code == 304
        assert c.get(url, headers={"If-Match": '"other"'}).status_code == 412
        stale = c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
        assert stale.status_code == 200 and len(stale.content) == 1500
        fresh = c.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert fresh.status_code == 206 and len(fresh.content) == 10


def test_head_and_cors_preflight(appliance: Appliance) -> None:
    head = httpx.head(appliance.url("v0/seg1.m4s"))
    assert head.status_code == 200 and head.headers["content-length"] == "300000"
    assert head.content == b""
    pre = httpx.options(
        appliance.url("v0/seg1.m4s"),
        headers={
            "Origin": "https://player.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "GET" in pre.headers["access-control-allow-methods"]
    assert pre.headers["access-control-allow-headers"] == "range"


def test_keep_alive_and_pipelining(appliance: Appliance) -> None:
    seg = (appliance.source / "v0/seg1.m4s").read_bytes()
    init = (appliance.source / "v0/init.mp4").read_bytes()
    host = b"Host: x\r\n"
    reqs = [
        b"GET " + appliance.path("v0/seg1.m4s").encode() + b" HTTP/1.1\r\n" + host + b"\r\n",
        b"HEAD " + appliance.path("v0/init.mp4").encode() + b" HTTP/1.1\r\n" + host + b"\r\n",
        b"GET " + appliance.path("v0/init.mp4").encode() + b" HTTP/1.1\r\n" + host + b"\r\n",
    ]
    with connect(appliance.server.addr) as sock:
        sock.sendall(b"".join(reqs))  # pipelined: all three before reading anything
        buf = bytearray()
        one = read_response(sock, buf)
        two = read_response(sock, buf, head_only=True)
        three = read_response(sock, buf)
        assert (one.status, one.body) == (200, seg)
        assert (two.status, two.headers["content-length"]) == (200, "1500")
        assert (three.status, three.body) == (200, init)
        sock.sendall(reqs[2])  # the connection is still good for more
        assert read_response(sock, buf).body == init


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /t/x/titles/bunny/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"GET /titles/bunny/..%2f..%2fetc HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"GET /titles/bunny/%252e%252e/x HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"GET /titles/bunny/a%00b HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"GET /titles/bunny/..\\x HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
        (b"DELETE /titles/bunny/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
    ],
)
def test_hostile_requests(appliance: Appliance, request_bytes: bytes, status: bytes) -> None:
    answer = raw(appliance.server.addr, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:80]
    if status == b"405":
        assert b"\r\nAllow: GET, HEAD, OPTIONS\r\n" in answer
    # The daemon is unharmed.
    assert httpx.get(appliance.url("master.m3u8")).status_code == 200


def test_slowloris_dropped_while_others_are_served(appliance: Appliance) -> None:
    slow = connect(appliance.server.addr)
    slow.sendall(b"GET " + appliance.path("master.m3u8").encode() + b" HTTP/1.1\r\n")
    started = time.monotonic()
    for _ in range(3):  # trickle, then stop: the header timeout (1 s) is from the first byte
        slow.sendall(b"X-a: b\r\n")
        assert httpx.get(appliance.url("master.m3u8")).status_code == 200
        time.sleep(0.2)
    rest = recv_all(slow, timeout=10)
    elapsed = time.monotonic() - started
    assert rest == b"" and elapsed < 8
    slow.close()


def test_metrics_and_health(appliance: Appliance) -> None:
    httpx.get(appliance.url("v0/init.mp4"))
    admin = appliance.server.urls["admin"]
    assert httpx.get(admin + "/healthz").text == "ok\n"
    text = ""
    for _ in range(40):  # workers publish counters every half second
        text = httpx.get(admin + "/metrics").text
        if 'edgeflix_appliance_requests_total{status="200",title="bunny"}' in text:
            break
        time.sleep(0.25)
    assert 'edgeflix_appliance_requests_total{status="200",title="bunny"}' in text
    assert 'edgeflix_appliance_response_bytes_total{status="200",title="bunny"}' in text
    assert "edgeflix_appliance_workers 2" in text
    assert 'edgeflix_appliance_disk_size_bytes{disk="' in text and 'tier="ssd"' in text
    assert "edgeflix_appliance_sendfile_errors_total 0" in text
    assert "edgeflix_appliance_open_connections " in text


def test_connection_cap_restart_and_tokens_off(tmp_path: Path) -> None:
    source = make_title(tmp_path / "src" / "bunny", "bunny")
    config = write_config(tmp_path, workers=1, max_connections=2)
    config.write_text(config.read_text().replace('tokens = "required"', 'tokens = "off"'))
    seed(config, source)
    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    try:
        held = [connect(server.addr), connect(server.addr)]
        for sock in held:  # mid-request: an idle one would be closed to make room
            sock.sendall(b"GET /titles/bunny/master.m3u8 HTTP/1.1\r\n")
        time.sleep(0.3)
        refused = raw(server.addr, b"GET /titles/bunny/master.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 503 ")
        for sock in held:
            sock.sendall(b"Host: x\r\n\r\n")
            assert read_response(sock, bytearray()).status == 200
            sock.close()
        time.sleep(0.3)
        assert httpx.get(server.url + "/titles/bunny/master.m3u8").status_code == 200
        port = server.addr[1]
    finally:
        assert server.stop() == 0
    # Restart on the same port: serving resumes from the index.
    config.write_text(config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"', 1))
    again = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    try:
        assert again.addr[1] == port
        r = httpx.get(again.url + "/titles/bunny/v0/seg1.m4s")
        assert r.content == (source / "v0/seg1.m4s").read_bytes()
    finally:
        assert again.stop() == 0


def test_graceful_stop_finishes_in_flight(tmp_path: Path) -> None:
    source = make_title(tmp_path / "src" / "bunny", "bunny")
    big = source / "v0" / "big.m4s"
    config = write_config(tmp_path, workers=1)
    config.write_text(config.read_text().replace('tokens = "required"', 'tokens = "off"'))
    big.write_bytes(b"\0" * (64 << 20))
    _rewrite_files_json(source)  # now with the big file in it
    seed(config, source)
    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    sock = connect(server.addr)
    sock.sendall(b"GET /titles/bunny/v0/big.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
    first = sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 200 ")
    server.proc.send_signal(signal.SIGTERM)  # while the body is still going out
    time.sleep(0.5)  # the stop is under way; the body (far beyond socket buffers) is not
    got = len(first) + len(recv_all(sock, timeout=15))
    assert got >= 64 << 20  # every byte arrived before the close
    assert server.proc.wait(20) == 0
    sock.close()


def _rewrite_files_json(folder: Path) -> None:
    from edgeflix import titlefiles

    model, _ = titlefiles.read(folder)
    entries = titlefiles.scan(folder)
    updated = model.model_copy(
        update={"files": tuple(entries), "total_bytes": sum(e.size for e in entries)}
    )
    (folder / "files.json").write_bytes(titlefiles.render(updated))

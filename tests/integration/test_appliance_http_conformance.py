"""HTTP/1.1 conformance and abuse of `edgeflix appliance run`, in raw bytes over real sockets
(RFC 9110 / 9112, compared with what nginx does): framing, Range, conditionals, paths, once with
sendfile and once with the user-space fallback. Every case also checks the connection afterwards
(closed, or the next request on it works) and that the daemon and other clients are unharmed."""

from __future__ import annotations

import email.utils
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.integration.serve_support import (
    Response,
    Server,
    make_title,
    read_response,
    read_until_closed,
    start,
)
from tests.integration.test_appliance_serve_more import on_disk, seed

# Longer than any wait below: an answer that comes is an answer, not the header timeout firing.
HEADER_TIMEOUT_S = 30
WAIT_S = 8.0
SEG = "/titles/bunny/v0/seg1.m4s"
INIT = "/titles/bunny/v0/init.mp4"
PLAYLIST = "/titles/bunny/master.m3u8"


@dataclass
class Appliance:
    server: Server
    root: Path
    source: Path

    def body(self, rel: str) -> bytes:
        return (self.source / rel).read_bytes()


@pytest.fixture(scope="module", params=[True, False], ids=["sendfile", "fallback"])
def appliance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Appliance]:
    root = tmp_path_factory.mktemp("conformance")
    source = make_title(root / "src" / "bunny", "bunny")
    for disk in ("ssd0", "hdd0"):
        (root / disk).mkdir()
    config = root / "appliance.toml"
    config.write_text(
        f'[storage]\ndisks = [ {{ path = "{root}/ssd0", tier = "ssd" }}, '
        f'{{ path = "{root}/hdd0", tier = "hdd" }} ]\nindex = "{root}/index.sqlite"\n'
        f'[serve]\nlisten = "127.0.0.1:0"\nworkers = 1\nheader_timeout_s = {HEADER_TIMEOUT_S}\n'
        f"sendfile = {'true' if request.param else 'false'}\n"
        '[admin]\nlisten = "127.0.0.1:0"\n[auth]\ntokens = "off"\n'
    )
    seed(config, source, "bunny")
    seed(config, make_title(root / "src" / "other", "other"), "other")
    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    # Symlinks planted in the store while it runs, pointing outside it at files of the sizes
    # the index lists: one in place of a file, one in place of a title's folder.
    poster = on_disk(root, "bunny", "poster.jpg")
    outside = root / "outside"
    outside.mkdir()
    (outside / "poster.jpg").write_bytes(b"S" * poster.stat().st_size)
    (root / "link").symlink_to(outside / "poster.jpg")
    os.replace(root / "link", poster)
    folder = on_disk(root, "other", "v0/init.mp4").parent
    (outside / "init.mp4").write_bytes(b"S" * (folder / "init.mp4").stat().st_size)
    folder.rename(root / "other-v0")
    folder.symlink_to(outside)
    yield Appliance(server, root, source)
    assert server.proc.poll() is None, "the daemon died during the conformance run"
    assert server.stop() == 0


def get(path: str, extra: str = "", method: str = "GET", version: str = "1.1") -> bytes:
    host = "Host: x\r\n" if version == "1.1" else ""
    return f"{method} {path} HTTP/{version}\r\n{host}{extra}\r\n".encode("latin-1")


@dataclass
class Exchange:
    responses: list[Response]
    closed: bool  # the server closed the connection after these responses


def talk(
    appliance: Appliance, data: bytes | list[bytes], heads: tuple[bool, ...] = (False,)
) -> Exchange:
    """Send `data` (pieces sent one by one), read one response per entry of `heads` (True: a
    response to HEAD), then find out whether the connection is still usable: a probe request
    on it must then be answered in full, or the server must have closed it."""
    pieces = [data] if isinstance(data, bytes) else data
    with socket.create_connection(appliance.server.addr, timeout=WAIT_S) as sock:
        for piece in pieces:
            sock.sendall(piece)
        buf = bytearray()
        responses = [read_response(sock, buf, head_only) for head_only in heads]
        try:
            sock.sendall(get(PLAYLIST))
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
        except (BrokenPipeError, ConnectionResetError):
            pass
        if not buf:
            return Exchange(responses, True)  # closed, with nothing left over
        probe = read_response(sock, buf)
        assert probe.status == 200 and probe.body == appliance.body("master.m3u8")
        assert not buf, "bytes beyond the responses asked for"
        return Exchange(responses, False)


def refused(appliance: Appliance, data: bytes) -> bytes:
    """A request the server must answer with an error and then close on: the answer's bytes."""
    with socket.create_connection(appliance.server.addr, timeout=WAIT_S) as sock:
        sock.sendall(data)
        answer, closed = read_until_closed(sock, WAIT_S)
    assert closed, f"not closed within {WAIT_S}s; got {answer[:120]!r}"
    return answer


def served_meanwhile(appliance: Appliance) -> None:
    r = talk(appliance, get(PLAYLIST))
    assert r.responses[0].status == 200 and not r.closed


# -- framing (RFC 9112) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # Smuggling: both framings, a body that would otherwise be read as the next request.
        (get(SEG, "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 400),
        (get(SEG, "Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n" + get(INIT), 413),
        (get(SEG, "Transfer-Encoding: gzip\r\n") + get(INIT), 400),
        (get(SEG, "Content-Length: 5\r\nContent-Length: 5\r\n") + b"GET /", 400),
        (get(SEG, "Content-Length: " + str(len(get(INIT))) + "\r\n") + get(INIT), 413),
        (get(SEG, "Content-Length: " + "9" * 5000 + "\r\n"), 413),  # was a traceback
        (get(SEG, "X: a\r\n folded\r\n"), 400),
        (get(SEG, "X : a\r\n"), 400),
        (get(SEG, "X: a\x00b\r\n"), 400),
        (get(SEG, "X: a\rb\r\n"), 400),
        (get(SEG).replace(b"Host: x\r\n", b""), 400),
        (get(SEG).replace(b"Host: x", b"Host: a b"), 400),
        (get(SEG, method="get"), 405),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (get("/" + "a" * 20000), 414),
        (get("/" + "a" * 9000), 414),
        (get(SEG, "X: " + "a" * 20000 + "\r\n"), 431),
        (get(SEG, "".join(f"X-{i}: v\r\n" for i in range(120))), 431),
        (get(SEG + "#frag"), 400),
        # Unfinished heads no byte could complete: answered at once, not at the header timeout.
        (bytes.fromhex("16030100f4010000f00303") + bytes(range(200)), 400),  # TLS ClientHello
        (b"GET /titles/bunny/master.m3u8 HTTP/1.1\nHost: x\n\n", 400),
        (b"\r\n" * 40000, 400),
    ],
    ids=lambda v: repr(v)[:60] if isinstance(v, bytes) else str(v),
)
def test_malformed_or_refused_requests_answer_then_close(
    appliance: Appliance, data: bytes, status: int
) -> None:
    answer = refused(appliance, data)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:120]
    assert answer.count(b"HTTP/1.1 ") == 1, "a body was parsed as a request"
    served_meanwhile(appliance)


def test_crlf_flood_is_cut_off_while_others_are_served(appliance: Appliance) -> None:
    """Empty lines before a request used to be skipped one by one and never counted: a client
    sending nothing else grew the buffer (and the work of every read) until the timeout."""
    stop = threading.Event()
    answer: list[bytes] = []

    def flood() -> None:
        with socket.create_connection(appliance.server.addr, timeout=WAIT_S) as sock:
            try:
                for _ in range(2000):  # at most 128 MiB
                    if stop.is_set():
                        break
                    sock.sendall(b"\r\n" * 32768)
            except OSError:
                pass
            answer.append(read_until_closed(sock, WAIT_S)[0])

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        for _ in range(20):
            served_meanwhile(appliance)
    finally:
        thread.join(WAIT_S * 2)
        stop.set()
    assert answer and answer[0].startswith(b"HTTP/1.1 400 "), answer[:1]


def test_http10_and_connection_close(appliance: Appliance) -> None:
    init = appliance.body("v0/init.mp4")
    plain = talk(appliance, get(INIT, version="1.0"))
    assert plain.responses[0].body == init and plain.closed
    alive = talk(appliance, get(INIT, "Connection: keep-alive\r\n", version="1.0"))
    assert alive.responses[0].headers["connection"] == "keep-alive" and not alive.closed
    both = talk(appliance, get(INIT, "Connection: keep-alive, close\r\n", version="1.0"))
    assert both.closed
    # Connection is a token list: a token merely containing "close" does not close.
    other = talk(appliance, get(INIT, "Connection: x-closeable\r\n"))
    assert not other.closed
    # `close` mid-pipeline: that response is the last; what follows is never answered.
    with socket.create_connection(appliance.server.addr, timeout=WAIT_S) as sock:
        sock.sendall(get(INIT) + get(INIT, "Connection: close\r\n") + get(INIT))
        answer, closed = read_until_closed(sock, WAIT_S)
    assert closed and answer.count(b"HTTP/1.1 200 ") == 2
    assert answer.endswith(init)


def test_pipeline_split_at_every_byte(appliance: Appliance) -> None:
    init = appliance.body("v0/init.mp4")
    stream = get(INIT) + get(INIT + "?v=1", method="HEAD") + get(INIT, "Range: bytes=0-9\r\n")
    for cut in range(1, len(stream)):
        r = talk(appliance, [stream[:cut], stream[cut:]], (False, True, False))
        statuses = [x.status for x in r.responses]
        assert statuses == [200, 200, 206] and not r.closed, cut
        assert r.responses[0].body == init and r.responses[2].body == init[:10], cut


def test_query_strings_and_repeats_keep_serving_the_file(appliance: Appliance) -> None:
    """Remembered routes are keyed by the head's exact bytes: a query string is a new key,
    never a different file, and a flood of distinct ones neither breaks nor bloats them."""
    seg = appliance.body("v0/seg1.m4s")
    heads = [get(SEG), get(SEG + "?v=1"), get(SEG + "?v=2"), get(SEG + "?v=1", method="HEAD")]
    with socket.create_connection(appliance.server.addr, timeout=WAIT_S) as sock:
        buf = bytearray()
        for _ in range(30):
            for head in heads:
                sock.sendall(head)
                r = read_response(sock, buf, head.startswith(b"HEAD"))
                assert r.status == 200 and r.headers["content-length"] == str(len(seg))
                assert head.startswith(b"HEAD") or r.body == seg
        (worker,) = [
            p
            for p in psutil.Process(appliance.server.proc.pid).children()
            if "appliance.worker" in " ".join(p.cmdline())
        ]
        before = worker.memory_info().rss
        pad = "a" * 15000
        for i in range(1100):
            sock.sendall(get(PLAYLIST + f"?q={i}", f"X-Pad: {pad}\r\n"))
            assert read_response(sock, buf).status == 200
        grown = worker.memory_info().rss - before
        sock.sendall(heads[0])
        assert read_response(sock, buf).body == seg
    # 1100 distinct 15 kB heads, all remembered, held ~16 MB.
    assert grown < 6 << 20, grown


def test_options(appliance: Appliance) -> None:
    star = talk(appliance, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert star.responses[0].status == 204 and not star.closed
    assert star.responses[0].headers["allow"] == "GET, HEAD, OPTIONS"
    assert "content-length" not in star.responses[0].headers  # RFC 9110 §8.6: never on a 204
    pre = talk(
        appliance,
        get(
            SEG,
            "Origin: https://player.example\r\nAccess-Control-Request-Method: GET\r\n"
            "Access-Control-Request-Headers: range, if-none-match\r\n",
            method="OPTIONS",
        ),
    )
    r = pre.responses[0]
    assert r.status == 204 and not pre.closed
    assert r.headers["access-control-allow-headers"] == "range, if-none-match"
    assert r.headers["access-control-allow-origin"] == "*"


def test_expect_100_continue_and_absolute_form(appliance: Appliance) -> None:
    r = talk(appliance, get(INIT, "Expect: 100-continue\r\n"))
    assert r.responses[0].status == 200 and not r.closed
    r = talk(appliance, b"GET http://elsewhere" + INIT.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.responses[0].body == appliance.body("v0/init.mp4") and not r.closed
    # The authority ends at '?': what follows is the query of '/', not a path.
    r = talk(appliance, b"GET http://y?" + PLAYLIST.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.responses[0].status == 404
    answer = refused(
        appliance, b"GET http://" + PLAYLIST.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_a_refused_head_request_gets_no_body(appliance: Appliance) -> None:
    """RFC 9110 §9.3.2, also for a HEAD refused while its head is parsed (a body sent)."""
    answer = refused(appliance, get(SEG, "Content-Length: 3\r\n", method="HEAD") + b"abc")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and body == b""


# -- Range (RFC 9110 §14) -----------------------------------------------------------------


SIZE = 300_000  # of v0/seg1.m4s (serve_support.make_title)


@pytest.mark.parametrize(
    ("value", "status", "spans"),
    [
        ("bytes=0-0", 206, [(0, 1)]),
        ("bytes=-0", 416, []),
        ("bytes=5-2", 200, [(0, SIZE)]),  # invalid: the header is ignored
        ("Bytes=0-0", 206, [(0, 1)]),  # the unit is case-insensitive
        ("bytes=0-1 , 5-6", 206, [(0, 2), (5, 2)]),
        ("bytes=10-19,0-9", 206, [(0, 20)]),  # adjacent, coalesced
        ("bytes=0-99,50-149,40-45", 206, [(0, 150)]),  # overlapping, coalesced
        ("bytes=200-209,0-9", 206, [(200, 10), (0, 10)]),  # asked order kept
        ("bytes=299990-400000", 206, [(299990, 10)]),
        (f"bytes={SIZE}-", 416, []),
        (f"bytes={SIZE}-,{SIZE + 5}-{SIZE + 9}", 416, []),
        ("bytes=" + ",".join(f"{i * 2}-{i * 2}" for i in range(500)), 200, [(0, SIZE)]),
        ("bytes=" + ",".join("0-" for _ in range(500)), 200, [(0, SIZE)]),
        ("items=0-1", 200, [(0, SIZE)]),
    ],
)
def test_ranges(
    appliance: Appliance, value: str, status: int, spans: list[tuple[int, int]]
) -> None:
    seg = appliance.body("v0/seg1.m4s")
    r = talk(appliance, get(SEG, f"Range: {value}\r\n"))
    got = r.responses[0]
    assert got.status == status and not r.closed
    if status == 416:
        assert got.headers["content-range"] == f"bytes */{SIZE}" and got.body == b""
    elif status == 200:
        assert got.body == seg
    elif len(spans) == 1:
        start, length = spans[0]
        assert got.body == seg[start : start + length]
        assert got.headers["content-range"] == f"bytes {start}-{start + length - 1}/{SIZE}"
    else:
        boundary = got.headers["content-type"].split("boundary=")[1].encode()
        parts = got.body.split(b"--" + boundary)[1:-1]
        assert len(parts) == len(spans)
        for part, (start, length) in zip(parts, spans, strict=True):
            assert f"Content-Range: bytes {start}-{start + length - 1}/{SIZE}".encode() in part
            assert part.endswith(b"\r\n\r\n" + seg[start : start + length] + b"\r\n")


def test_range_corner_cases(appliance: Appliance) -> None:
    seg = appliance.body("v0/seg1.m4s")
    # HEAD: range handling is defined for GET only.
    r = talk(appliance, get(SEG, "Range: bytes=0-0\r\n", method="HEAD"), (True,))
    assert r.responses[0].status == 200 and r.responses[0].headers["content-length"] == str(SIZE)
    # Two Range fields are no valid Range: ignored.
    r = talk(appliance, get(SEG, "Range: bytes=0-0\r\nRange: bytes=5-5\r\n"))
    assert r.responses[0].status == 200 and r.responses[0].body == seg
    first = talk(appliance, get(SEG)).responses[0]
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    # A date validates only once Last-Modified is strong (a full second in the past).
    stamp = email.utils.parsedate_to_datetime(modified).timestamp()
    time.sleep(min(max(0.0, stamp + 3 - time.time()), 3.0))
    for if_range, status in [
        (etag, 206),
        (f"W/{etag}", 200),  # weak validators never satisfy If-Range
        ('"other"', 200),
        (modified, 206),  # the file is older than a second: Last-Modified is strong
        (email.utils.formatdate(time.time() + 3600, usegmt=True), 200),
    ]:
        r = talk(appliance, get(SEG, f"Range: bytes=0-9\r\nIf-Range: {if_range}\r\n"))
        assert r.responses[0].status == status, if_range
        assert r.responses[0].body == (seg[:10] if status == 206 else seg)


# -- conditionals (RFC 9110 §13) ----------------------------------------------------------


def test_conditionals(appliance: Appliance) -> None:
    first = talk(appliance, get(INIT)).responses[0]
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    stamp = email.utils.parsedate_to_datetime(modified).timestamp()
    asctime = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(stamp))
    rfc850 = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(stamp))
    future = email.utils.formatdate(time.time() + 86400, usegmt=True)
    for extra, status in [
        ("If-None-Match: *", 304),
        (f'If-None-Match: "a", W/{etag}', 304),  # weak comparison, member of a list
        (f'If-None-Match: "a", {etag}', 304),
        (f'If-None-Match: "a"\r\nIf-Modified-Since: {modified}', 200),  # INM wins
        (f"If-None-Match: {etag}\r\nIf-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT", 304),
        (f"If-Modified-Since: {modified}", 304),
        (f"If-Modified-Since: {asctime}", 304),  # all three date formats (was ignored)
        (f"If-Modified-Since: {rfc850}", 304),
        (f"If-Modified-Since: {future}", 200),  # later than our clock: invalid (was 304)
        (f"If-Modified-Since: {modified}\r\nIf-Modified-Since: {modified}", 200),
        ("If-Modified-Since: yesterday", 200),
        ('If-Match: "a"', 412),
        ("If-Match: *", 200),
        ("If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT", 412),
    ]:
        r = talk(appliance, get(INIT, extra + "\r\n"))
        assert r.responses[0].status == status, extra
        assert not r.closed, extra
    # A 304 carries the validators and caching headers a 200 would, and no body or length.
    r = talk(appliance, get(INIT, f"If-None-Match: {etag}\r\n")).responses[0]
    assert r.status == 304 and r.body == b"" and "content-length" not in r.headers
    assert (
        r.headers["etag"] == etag and r.headers["cache-control"] == first.headers["cache-control"]
    )
    assert r.headers["last-modified"] == modified


# -- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("//titles/bunny/master.m3u8", 400),
        ("/titles/bunny/v0/../v0/init.mp4", 400),
        ("/titles/bunny/./master.m3u8", 400),
        ("/titles/bunny/v0%2Finit.mp4", 400),
        ("/titles/bunny/master.m3u8%00", 400),
        ("/titles/bunny/%c0%ae%c0%ae/files.json", 400),  # overlong UTF-8 dot
        ("/titles/bunny/%252e%252e/files.json", 400),
        ("/titles/bunny/master.m3u8;v=1", 404),
        ("/titles/bunny/master.m3u8?v=1", 200),
        ("/titles/bunny/master%2em3u8", 200),
        ("/titles/bunny/v0/", 400),
        ("/titles/bunny/v0", 404),  # a directory
        ("/titles/bunny", 404),
        ("/titles/bunny/poster.jpg", 404),  # a symlink pointing outside the store (was served)
        ("/titles/other/v0/init.mp4", 404),  # in a symlinked folder (was served)
        ("/titles/other/master.m3u8", 200),
    ],
)
def test_paths(appliance: Appliance, path: str, status: int) -> None:
    r = talk(appliance, get(path))
    got = r.responses[0]
    assert got.status == status
    assert b"S" * 100 not in got.body
    assert r.closed == (status == 400)

"""Resuming a partial file with `If-Range`: the validator (strong ETag, else a strong
Last-Modified) of the response the partial bytes came from is kept beside the `.part`, and
a resume from the same source sends it, so a source whose file changed meanwhile answers
200 with the whole file instead of splicing its new bytes onto our old ones. A 206 for
another version, or for other bytes, is refused. Against scripted loopback sources and the
real `edgeflix origin serve`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.fill.downloader import FillError, Pacer
from appliance.fill.http1 import ResponseHead
from appliance.fill.partfile import if_range_value
from appliance.fill.window import parse_window
from tests.appliance.fill_server import read_request, scripted, serve_files
from tests.appliance.test_fill_stream import assert_verified, fill, make_source
from tests.integration.serve_support import serving_origin
from tests.integration.test_fill import make_title

SEG = "/titles/t/v0/seg0.m4s"


def head(*fields: tuple[str, str]) -> ResponseHead:
    return ResponseHead(11, 200, "OK", tuple((k.lower(), v) for k, v in fields), 0)


def test_the_validator_kept_for_a_resume() -> None:
    date = "Wed, 01 May 2024 12:00:00 GMT"
    assert if_range_value(head(("ETag", '"a-1"'), ("Last-Modified", date))) == '"a-1"'
    # A weak ETag may not go in If-Range; a date only when it is a strong validator, a
    # minute or more before the response's Date (RFC 9110 8.8.2.2).
    later = "Wed, 01 May 2024 12:01:00 GMT"
    assert if_range_value(head(("ETag", 'W/"a"'), ("Last-Modified", date), ("Date", later))) == date
    soon = "Wed, 01 May 2024 12:00:30 GMT"
    assert if_range_value(head(("Last-Modified", date), ("Date", soon))) is None
    assert if_range_value(head(("Last-Modified", date))) is None
    assert if_range_value(head(("ETag", "unquoted"))) is None
    assert if_range_value(head()) is None


class Republishing:
    """A source whose segment changes between two requests: the first answer is version A
    (ETag "A"), cut off after `cut` bytes; from then on it serves version B (ETag "B"), and
    honours If-Range as RFC 9110 says (a 206 only when the validator is B's)."""

    def __init__(self, files: dict[str, bytes], old: bytes, cut: int) -> None:
        self.files, self.old, self.cut = files, old, cut
        self.log: list[dict[str, str]] = []

    def __call__(self, sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            self.log.append(req)
            target = req[":target"]
            if target == SEG and sum(r[":target"] == SEG for r in self.log) == 1:
                sock.sendall(
                    b'HTTP/1.1 200 OK\r\nETag: "A"\r\nContent-Length: %d\r\n\r\n' % len(self.old)
                    + self.old[: self.cut]
                )
                return
            body = self.files[target]
            start = int(req["range"][6:-1]) if "range" in req else 0
            if req.get("if-range", '"B"') != '"B"':
                start = 0
            fields = f'ETag: "B"\r\nContent-Length: {len(body) - start}\r\n'
            if start:
                fields += f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n"
            status = "206 Partial Content" if start else "200 OK"
            sock.sendall(f"HTTP/1.1 {status}\r\n{fields}\r\n".encode() + body[start:])


def test_a_file_changed_at_the_source_starts_over_instead_of_splicing(tmp_path: Path) -> None:
    """The segment was re-published (repaired, re-copied) between two requests. Resumed with
    a bare Range, old and new bytes would be spliced, fail the SHA-256 and cost a digest
    strike and a second full download; with If-Range the source sends the whole new file."""
    model, files = make_source(tmp_path, [400_000])
    old = bytes(b ^ 0x5A for b in files[SEG])  # another version of the same size
    source = Republishing(files, old, cut=150_000)
    with scripted(source) as server:
        progress = fill(server.url, tmp_path / "staging", streams=1)
    assert_verified(tmp_path / "staging", model)
    asked = [r for r in source.log if r[":target"] == SEG]
    assert [(r.get("range"), r.get("if-range")) for r in asked] == [
        (None, None),
        ("bytes=150000-", '"A"'),
    ]
    assert progress.digest_failures == 0
    assert progress.downloaded == 150_000 + model.total_bytes
    assert not list((tmp_path / "staging").rglob("*.validator"))


def test_a_206_for_another_version_is_refused(tmp_path: Path) -> None:
    """A source that ignores If-Range and answers 206 with another ETag: its bytes are not
    spliced on (the partial starts over), and the file still completes."""
    model, files = make_source(tmp_path, [300_000])
    old = bytes(b ^ 0x5A for b in files[SEG])
    log: list[dict[str, str]] = []

    def handler(sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            log.append(req)
            body = files[req[":target"]]
            if req[":target"] == SEG and sum(r[":target"] == SEG for r in log) == 1:
                sock.sendall(
                    b'HTTP/1.1 200 OK\r\nETag: "A"\r\nContent-Length: %d\r\n\r\n' % len(old)
                    + old[:100_000]
                )
                return
            start = int(req["range"][6:-1]) if "range" in req else 0
            fields = f'ETag: "B"\r\nContent-Length: {len(body) - start}\r\n'
            if start:  # If-Range ignored
                fields += f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n"
            status = "206 Partial Content" if start else "200 OK"
            sock.sendall(f"HTTP/1.1 {status}\r\n{fields}\r\n".encode() + body[start:])

    with scripted(handler) as server:
        progress = fill(server.url, tmp_path / "staging", streams=1)
    assert_verified(tmp_path / "staging", model)
    assert progress.digest_failures == 0
    asked = [r.get("range") for r in log if r[":target"] == SEG]
    assert asked == [None, "bytes=100000-", None]


def test_resumes_against_the_real_origin_keep_their_range(tmp_path: Path) -> None:
    """`origin serve` must take our If-Range (its ETag, quoted as it sent it) and answer
    206: a file paused by closing fill windows resumes each time, and no byte is fetched
    twice. (A refused If-Range would show as bytes downloaded again.)"""
    store = tmp_path / "origin"
    model = make_title(store, "t", [600_000], seed=5)
    at = [datetime(2024, 5, 1, 5, 59, tzinfo=UTC)]

    async def sleep(seconds: float) -> None:
        at[0] += timedelta(seconds=seconds)
        await asyncio.sleep(0)

    # A one-minute window a day at 32 kbit/s: each 64 KiB batch costs 16 s, so the segment
    # takes several windows, each a resume with Range and If-Range.
    window = parse_window("05:59-06:00", "UTC")
    pacer = Pacer(32_000, window, lambda: at[0].timestamp(), lambda: at[0], sleep)
    with serving_origin(store) as origin:
        progress = fill(origin.url, tmp_path / "staging", pacer, streams=1)
    assert_verified(tmp_path / "staging", model)
    assert progress.downloaded == model.total_bytes  # nothing twice
    assert progress.retries == 0


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_the_next_run_resumes_with_the_validator_kept_on_disk(
    tmp_path: Path, validator: str
) -> None:
    """The validator outlives the process: a run that gave up mid-file (its source broke
    off, then answered 503) leaves it beside the .part, and the next run sends it."""
    model, files = make_source(tmp_path, [200_000])
    value = '"v7"' if validator == "etag" else "Wed, 01 May 2024 12:00:00 GMT"
    field = "ETag" if validator == "etag" else "Last-Modified"
    log: list[dict[str, str]] = []
    broken = [True]

    def handler(sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            body = files[req[":target"]]
            if req[":target"] == SEG:
                log.append(req)
                if broken[0] and len(log) > 1:
                    sock.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
                    continue
            start = int(req["range"][6:-1]) if "range" in req else 0
            fields = (
                f"{field}: {value}\r\nDate: Thu, 02 May 2024 12:00:00 GMT\r\n"
                f"Content-Length: {len(body) - start}\r\n"
            )
            if start:
                fields += f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n"
            status = "206 Partial Content" if start else "200 OK"
            if broken[0] and log and len(log) == 1 and req[":target"] == SEG:
                sock.sendall(f"HTTP/1.1 {status}\r\n{fields}\r\n".encode() + body[:80_000])
                return
            sock.sendall(f"HTTP/1.1 {status}\r\n{fields}\r\n".encode() + body[start:])

    staging = tmp_path / "staging"
    with scripted(handler) as server:
        with pytest.raises(FillError, match="503"):
            fill(server.url, staging, streams=1)
        assert (staging / "v0/seg0.m4s.part").stat().st_size == 80_000
        broken[0] = False
        log.clear()
        fill(server.url, staging, streams=1)
    assert_verified(staging, model)
    assert [(r.get("range"), r.get("if-range")) for r in log] == [("bytes=80000-", value)]


def test_a_resume_through_a_balancer_to_another_replica_keeps_its_bytes(tmp_path: Path) -> None:
    """An origin of two replicas behind a redirecting balancer: the same bytes, each with
    its own ETag (its own mtimes). The partial came from replica 1; the resume lands on
    replica 2, which would answer If-Range "r1" with the whole file. The validator is kept
    for the server that gave it, so replica 2 gets a plain Range and the bytes are kept."""
    model, files = make_source(tmp_path, [300_000])
    logs: dict[str, list[dict[str, str]]] = {"r1": [], "r2": []}

    def replica(name: str) -> Callable[[socket.socket, int], None]:
        def handler(sock: socket.socket, _: int) -> None:
            while (req := read_request(sock)) is not None:
                logs[name].append(req)
                body = files[req[":target"]]
                start = int(req["range"][6:-1]) if "range" in req else 0
                if req.get("if-range", f'"{name}"') != f'"{name}"':
                    start = 0  # RFC 9110: another validator, the whole file
                fields = f'ETag: "{name}"\r\nContent-Length: {len(body) - start}\r\n'
                if start:
                    fields += f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n"
                status = "206 Partial Content" if start else "200 OK"
                out = f"HTTP/1.1 {status}\r\n{fields}\r\n".encode() + body[start:]
                if name == "r1" and req[":target"] == SEG:
                    sock.sendall(out[: len(out) - 200_000])  # cut off mid-body
                    return
                sock.sendall(out)

        return handler

    with scripted(replica("r1")) as r1, scripted(replica("r2")) as r2:
        first = [True]

        def balancer(sock: socket.socket, _: int) -> None:
            while (req := read_request(sock)) is not None:
                to = r1 if req[":target"] == SEG and first[0] else r2
                first[0] = first[0] and req[":target"] != SEG
                sock.sendall(
                    f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {to.url}{req[':target']}"
                    "\r\nContent-Length: 0\r\n\r\n".encode()
                )

        with scripted(balancer) as lb:
            progress = fill(lb.url, tmp_path / "staging", streams=1)
    assert_verified(tmp_path / "staging", model)
    assert progress.digest_failures == 0
    (resumed,) = [r for r in logs["r2"] if r[":target"] == SEG]
    assert resumed.get("range") is not None and "if-range" not in resumed


def test_an_empty_part_left_with_a_validator_is_fetched_whole_and_both_go(
    tmp_path: Path,
) -> None:
    """A run killed after it kept the validator but before the first bytes reached the
    .part: the next run asks for the whole file (nothing to resume) and leaves neither
    behind, though a file received in one go writes no validator of its own."""
    model, files = make_source(tmp_path, [20_000])
    staging = tmp_path / "staging"
    part = staging / "v0/seg0.m4s.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"")
    validator = part.with_name(part.name + ".validator")
    validator.write_text('{"source": "http://elsewhere/x", "if_range": "\\"v1\\""}')
    log: list[dict[str, str]] = []
    with scripted(serve_files(files, log)) as server:
        fill(server.url, staging, streams=1)
    assert_verified(staging, model)
    assert [(r.get("range"), r.get("if-range")) for r in log if r[":target"] == SEG] == [
        (None, None)
    ]

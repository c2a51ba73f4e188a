"""A site peer's fill source carries a URL token (`PEER/t/<token>`) that plays the title on
every appliance of the fleet until it expires: `redact` hides it, and the fill shows it
nowhere (progress, failures, log events, the validators beside `.part` files) while its
requests still carry it and a resume under a re-signed token still sends If-Range.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.fill.downloader import FillError, Pacer, TitleFetcher, TitleProgress
from appliance.fill.layout import StagingLayout
from appliance.fill.partfile import read_validator, validator_path, write_validator
from appliance.fill.plan import PlanError, PlannedTitle, parse_plan
from appliance.fill.redact import REDACTED, redact
from appliance.fill.retry import Failure
from appliance.fill.stream import SourceFailure
from appliance.fill.transport import Pool
from edgeflix import tokens
from tests.appliance.fill_server import read_request, scripted
from tests.appliance.test_fill_stream import FAST, FakeSleep, assert_verified, make_source

TOKEN = "k4-f935bfd9.1795916531.any.M4gngAbc_-9"
IP_TOKEN = "k1.1795916531.ip.bWFj.Y2xpZW50"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"http://127.0.0.1:50813/t/{TOKEN}", "http://127.0.0.1:50813/t/<redacted>"),
        (f"http://h:1/t/{TOKEN}/", "http://h:1/t/<redacted>/"),
        (
            f"http://h:1/t/{TOKEN}/titles/film/v0/seg001.m4s",
            "http://h:1/t/<redacted>/titles/film/v0/seg001.m4s",
        ),
        (f"https://h/edge/t/{IP_TOKEN}", "https://h/edge/t/<redacted>"),
        # A title named "t": its folders are no token, the peer's token still is.
        (
            f"http://h/t/{TOKEN}/titles/t/v0/seg.1.m4s",
            "http://h/t/<redacted>/titles/t/v0/seg.1.m4s",
        ),
        # Messages: what follows a URL (a colon, a quote, a space) stays.
        (
            f"http://h:1/t/{TOKEN}: files.json HTTP 404",
            "http://h:1/t/<redacted>: files.json HTTP 404",
        ),
        (
            f"cannot request 'http://h/t/{TOKEN}/titles/x/y': bad port",
            "cannot request 'http://h/t/<redacted>/titles/x/y': bad port",
        ),
        (
            f"http://a/t/{TOKEN}/titles/x: redirect from http://a/t/{TOKEN}/titles/x to "
            f"http://b/t/{IP_TOKEN}/titles/x?q=1",
            "http://a/t/<redacted>/titles/x: redirect from http://a/t/<redacted>/titles/x to "
            "http://b/t/<redacted>/titles/x?q=1",
        ),
        # Anything that reads like a token, wherever it sits after /t/.
        (f"http://h/t/{TOKEN}/elsewhere", "http://h/t/<redacted>/elsewhere"),
    ],
)
def test_redact_hides_the_path_token(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert redact(shown) == shown


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:8081",
        "http://origin:8081/titles/film/v0/seg001.m4s",
        "http://h/titles/t/v0/seg0.m4s",  # a title named "t"
        "http://h/titles/t/seg.1.m4s",
        "v0/seg001.m4s: SHA-256 mismatch from http://origin:8081",
        "/t/",
        "",
    ],
)
def test_redact_leaves_text_without_a_token(text: str) -> None:
    assert redact(text) == text


_ID = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@given(
    title=_ID,
    key_id=st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True),
    expires=st.integers(0, tokens.MAX_EXPIRES),
    ip=st.none() | st.ip_addresses().map(str),
    prefix=st.sampled_from(["", "/edge", "/t"]),
    after=st.sampled_from(["", "/", "/titles/{t}/v0/s.m4s", ": HTTP 403", "' at x", "?a=1"]),
)
def test_no_signed_token_survives_redact(
    title: str, key_id: str, expires: int, ip: str | None, prefix: str, after: str
) -> None:
    token = tokens.sign(title, tokens.SigningKey(key_id, b"s" * 16), expires, ip)
    text = f"peer http://peer:8080{prefix}/t/{token}{after.format(t=title)} failed"
    shown = redact(text)
    assert token not in shown and f"/t/{REDACTED}" in shown
    assert redact(shown) == shown


def test_failures_and_validators_keep_no_token(tmp_path: Path) -> None:
    exc = SourceFailure(Failure.NOT_FOUND, f"http://h/t/{TOKEN}: files.json HTTP 404")
    assert TOKEN not in exc.detail and TOKEN not in str(exc)
    part = tmp_path / "seg.m4s.part"
    write_validator(part, f"http://h/t/{TOKEN}/titles/f/seg.m4s", '"v1"')
    assert TOKEN not in validator_path(part).read_text()
    assert read_validator(part) == ("http://h/t/<redacted>/titles/f/seg.m4s", '"v1"')
    # One kept before redaction (its URL whole) reads redacted, so it still matches.
    kept = {"source": f"http://h/t/{TOKEN}/titles/f/seg.m4s", "if_range": '"v1"'}
    validator_path(part).write_text(json.dumps(kept))
    assert read_validator(part) == ("http://h/t/<redacted>/titles/f/seg.m4s", '"v1"')


def test_a_plan_refusing_a_peer_source_does_not_quote_its_token() -> None:
    plan = {"titles": [{"id": "film", "sources": [f"http://h:0/t/{TOKEN}", "http://o:1"]}]}
    with pytest.raises(PlanError) as caught:
        parse_plan(json.dumps(plan).encode(), "fleet plan")
    assert TOKEN not in str(caught.value) and "<redacted>" in str(caught.value)


class TokenPeer:
    """A peer that serves `/t/<token>/titles/…` for the tokens in `accepted` (403 else),
    ETag "v1" on every file. While `broken`, the first request for `seg` is cut after
    80 000 bytes and the later ones get 503: the run gives up with a .part left."""

    def __init__(self, files: dict[str, bytes], seg: str) -> None:
        self.files, self.seg = files, seg
        self.accepted: set[str] = set()
        self.broken = True
        self.log: list[dict[str, str]] = []

    def __call__(self, sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            self.log.append(req)
            _lead, prefix, token, rest = req[":target"].split("/", 3)
            if prefix != "t" or token not in self.accepted:
                sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                continue
            target = "/" + rest
            body = self.files[target]
            asked = [r for r in self.log if r[":target"].endswith(self.seg)]
            if self.broken and target == self.seg and len(asked) > 1:
                sock.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
                continue
            start = int(req["range"][6:-1]) if "range" in req else 0
            fields = f'ETag: "v1"\r\nContent-Length: {len(body) - start}\r\n'
            if start:
                fields += f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n"
            status = "206 Partial Content" if start else "200 OK"
            head = f"HTTP/1.1 {status}\r\n{fields}\r\n".encode()
            if self.broken and target == self.seg:
                sock.sendall(head + body[:80_000])
                return
            sock.sendall(head + body[start:])


def _fill(source: str, staging: Path, progress: TitleProgress) -> None:
    async def go() -> None:
        pool = Pool()
        try:
            title = PlannedTitle(id="t", sources=(source,))
            pacer = Pacer(None, None, sleep=FakeSleep())
            await TitleFetcher(pool, title, StagingLayout(staging), pacer, FAST, 1, progress).run()
        finally:
            pool.close()

    asyncio.run(go())


def test_a_peer_fill_shows_no_token_and_resumes_under_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, files = make_source(tmp_path, [200_000])
    seg = "/titles/t/v0/seg0.m4s"
    peer = TokenPeer(files, seg)
    first, second = "k1.100.any.Zmlyc3Q", "k2.200.any.c2Vjb25k"
    staging = tmp_path / "staging"
    caplog.set_level(logging.INFO, logger="appliance.fill")
    with scripted(peer) as server:
        peer.accepted = {first}
        broken = TitleProgress("t")
        with pytest.raises(FillError) as failed:
            _fill(f"{server.url}/t/{first}", staging, broken)
        assert (staging / "v0/seg0.m4s.part").stat().st_size == 80_000
        # The plan is signed anew (a new key): the old token is refused from now on.
        peer.accepted, peer.broken = {second}, False
        peer.log.clear()
        done = TitleProgress("t")
        _fill(f"{server.url}/t/{second}", staging, done)
        assert_verified(staging, model)
        resumed = [
            (r.get("range"), r.get("if-range")) for r in peer.log if r[":target"].endswith(seg)
        ]
    # The requests carried the token; the resume kept its bytes and sent the validator,
    # which belongs to the server, not to the token.
    assert resumed == [("bytes=80000-", '"v1"')]
    assert done.source == f"{server.url}/t/<redacted>"
    assert done.downloaded == 200_000 - 80_000
    shown = [str(failed.value), json.dumps(broken.__dict__), json.dumps(done.__dict__)]
    shown += [f"{r.getMessage()} {getattr(r, 'edgeflix_fields', {})}" for r in caplog.records]
    assert any("fill.file_failed" in line for line in shown)
    for text in shown:
        assert first not in text and second not in text, text

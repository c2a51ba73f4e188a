"""Request heads: strict parsing, the status each malformed input earns, pipelining."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeflix.http.errors import HttpError
from edgeflix.http.request import parse_head

LIMIT = 16 * 1024


def parse(raw: bytes) -> tuple[object, int] | None:
    return parse_head(raw, 0, LIMIT)


def test_simple_get() -> None:
    raw = b"GET /titles/a/b.m4s?x=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\n"
    parsed = parse_head(raw, 0, LIMIT)
    assert parsed is not None
    head, end = parsed
    assert end == len(raw)
    assert (head.method, head.path, head.query, head.minor) == ("GET", "/titles/a/b.m4s", "x=1", 1)
    assert head.headers["range"] == "bytes=0-1"
    assert head.keep_alive


def test_incomplete_returns_none() -> None:
    assert parse(b"GET / HTTP/1.1\r\nHost: h\r\n") is None


def test_pipelined_heads_parse_one_by_one() -> None:
    raw = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c"
    first = parse_head(raw, 0, LIMIT)
    assert first is not None
    second = parse_head(raw, first[1], LIMIT)
    assert second is not None
    assert (first[0].path, second[0].path, second[0].method) == ("/a", "/b", "HEAD")
    assert parse_head(raw, second[1], LIMIT) is None


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\nb\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", 413),
        (b"PUT / HTTP/1.1\r\nHost: h\r\n\r\n", 405),
        (b"BREW / HTTP/1.1\r\nHost: h\r\n\r\n", 405),
        (b"GET ftp://x/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ],
)
def test_refusals(raw: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        parse(raw)
    assert info.value.status == status


def test_oversized_heads_get_431_complete_or_not() -> None:
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * LIMIT
    with pytest.raises(HttpError) as info:
        parse(big)
    assert info.value.status == 431
    with pytest.raises(HttpError) as info:
        parse(big + b"\r\n\r\n")
    assert info.value.status == 431


def test_absolute_form_and_keep_alive_rules() -> None:
    parsed = parse(b"GET http://example/titles/x HTTP/1.0\r\n\r\n")
    assert parsed is not None
    assert parsed[0].path == "/titles/x"
    assert not parsed[0].keep_alive
    parsed = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert parsed is not None and parsed[0].keep_alive
    parsed = parse(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert parsed is not None and not parsed[0].keep_alive


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_refuse_cleanly(raw: bytes) -> None:
    try:
        result = parse_head(raw + b"\r\n\r\n", 0, 1024)
    except HttpError as exc:
        assert exc.status in (400, 405, 413, 414, 431, 505)
    else:
        if result is None:  # only blank lines, which RFC 9112 says to skip
            assert not raw.replace(b"\r\n", b"")
            return
        assert result[0].path.startswith("/") or result[0].path == "*"

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


def test_absolute_form_authority_ends_at_a_query_and_is_never_empty() -> None:
    """RFC 3986 §3.2: the authority ends at '/', '?' or '#'; RFC 9110 §4.2.1: an http URI
    with an empty host is invalid."""
    parsed = parse(b"GET http://y?/titles/a/master.m3u8 HTTP/1.1\r\nHost: y\r\n\r\n")
    assert parsed is not None
    assert (parsed[0].path, parsed[0].query) == ("/", "/titles/a/master.m3u8")
    for target in (b"http:///titles/a/x", b"http://?x", b"https://"):
        with pytest.raises(HttpError) as refused:
            parse(b"GET " + target + b" HTTP/1.1\r\nHost: y\r\n\r\n")
        assert refused.value.status == 400


def test_a_refused_head_request_is_marked_so_its_answer_has_no_body() -> None:
    with pytest.raises(HttpError) as refused:
        parse(b"HEAD /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    assert refused.value.status == 413 and refused.value.head
    with pytest.raises(HttpError) as refused:
        parse(b"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    assert not refused.value.head


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


# -- abuse and framing (the conformance audit) ---------------------------------------------


def status_of(raw: bytes, limit: int = LIMIT) -> int | None:
    """The refusal's status, or None when `raw` parses or is still incomplete."""
    try:
        parse_head(raw, 0, limit)
    except HttpError as exc:
        return exc.status
    return None


def test_a_stream_of_empty_lines_is_bounded() -> None:
    # Skipped one by one and never counted, they let a client grow the buffer (and the time to
    # skip them again on every read) without limit until the header timeout.
    assert status_of(b"\r\n" * (LIMIT // 2 + 1)) == 400
    assert status_of(b"\r\n" * 8 + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") is None


def test_huge_content_length_is_refused_not_crashed() -> None:
    # int() of more than 4300 digits raises ValueError, which escaped as a traceback.
    assert (
        status_of(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
        == 413
    )
    zeros = parse(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"0" * 5000 + b"\r\n\r\n")
    assert zeros is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"DELETE / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_ambiguous_framing_is_a_bad_request(raw: bytes) -> None:
    # RFC 9112 §6.1/§6.3: the way requests are smuggled past a proxy; 400, then close.
    with pytest.raises(HttpError) as info:
        parse(raw)
    assert (info.value.status, info.value.close) == (400, True)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (bytes.fromhex("160301020001000200") + bytes(range(32)), 400),  # a TLS ClientHello
        (b"GET /titles/a HTTP/1.1\nHost: h\n", 400),  # LF-only line ends
        (b"GET / HTTP/1.1\r\nHost: h\rX", 400),  # a CR not before LF
        (b"GARBAGE\r\n", 400),  # a request line that more bytes cannot mend
        (b'{"json": 1}', 400),
        (b"GET / HTTP/2.0\r\n", 505),
        (b"GET /" + b"a" * (LIMIT + 10), 414),  # the request line alone outgrows the head
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n", 414),
    ],
)
def test_unfinished_heads_that_cannot_become_requests(raw: bytes, status: int) -> None:
    # Answered at once rather than held (silently) until the header timeout.
    assert status_of(raw) == status


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r",
        b"\r\n\r",
        b"G",
        b"GET /titles/a/b.m4s HTTP/1.1\r",
        b"GET /titles/a/b.m4s HTTP/1.1\r\nHost: h\r\nX: \xff\t v\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n\r",
    ],
)
def test_unfinished_heads_that_may_still_become_requests(raw: bytes) -> None:
    assert parse(raw) is None


def test_long_headers_are_431_and_a_long_request_line_414() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * LIMIT + b"\r\n\r\n"
    assert status_of(head) == 431
    assert status_of(b"GET /" + b"a" * LIMIT + b" HTTP/1.1\r\nHost: h\r\n\r\n") == 414


@pytest.mark.parametrize("host", [b"a b", b"a/b", b"a@b", b'h"', b"[::1", b"h:80x"])
def test_malformed_host_is_400(host: bytes) -> None:
    assert status_of(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") == 400


@pytest.mark.parametrize(
    "host", [b"h", b"h:8080", b"127.0.0.1:1", b"[::1]:80", b"[fe80::1%25eth0]", b"xn--a.b", b""]
)
def test_wellformed_host_is_accepted(host: bytes) -> None:
    assert parse(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") is not None


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-closeable\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: TE, Close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_connection_options_are_tokens(raw: bytes, keep_alive: bool) -> None:
    parsed = parse(raw)
    assert parsed is not None and parsed[0].keep_alive is keep_alive


_VALID = [
    b"GET /titles/a/v0/seg1.m4s?v=1 HTTP/1.1\r\nHost: h:80\r\nRange: bytes=0-1\r\n\r\n",
    b"\r\nHEAD /x HTTP/1.0\r\nX-Obs: \xe9t\xe9\t\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: [::1]\r\nAccess-Control-Request-Method: GET\r\n\r\n",
    b"GET http://h/titles/a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
]


@given(st.lists(st.sampled_from(_VALID), min_size=1, max_size=4), st.data())
def test_every_prefix_of_valid_pipelines_waits_for_more(
    heads: list[bytes], data: st.DataObject
) -> None:
    """The early refusals never fire on a valid stream cut anywhere (as reads may cut it)."""
    stream = b"".join(heads)
    cut = data.draw(st.integers(0, len(stream)))
    offset, parsed = 0, 0
    while True:
        result = parse_head(stream[:cut], offset, LIMIT)
        if result is None:
            break
        offset, parsed = result[1], parsed + 1
    assert parsed <= len(heads)
    for raw in heads:  # and each one whole parses
        assert parse(raw) is not None


@given(st.binary(max_size=400), st.integers(1024, 4096))
def test_arbitrary_partial_bytes_wait_or_refuse_cleanly(raw: bytes, limit: int) -> None:
    try:
        parse_head(raw, 0, limit)
    except HttpError as exc:
        assert exc.status in (400, 405, 413, 414, 431, 505)

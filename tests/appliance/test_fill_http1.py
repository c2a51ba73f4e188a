"""The fill client's HTTP/1.1 core without sockets: request rendering, strict head parsing,
body framing, keep-alive, Content-Range, and chunked decoding under any split of the bytes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.fill.http1 import (
    MAX_CHUNK_OVERHEAD,
    MAX_FIELDS,
    MAX_HEAD,
    ChunkedDecoder,
    ContentRange,
    Framing,
    ProtocolError,
    body_framing,
    head_end,
    keep_alive,
    parse_content_range,
    parse_head,
    render_get,
)


def head(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("latin-1") + b"\r\n"


def test_render_get() -> None:
    raw = render_get("127.0.0.1:8080", "/titles/a/v0/seg%201.m4s", [("Range", "bytes=5-")])
    assert raw == (
        b"GET /titles/a/v0/seg%201.m4s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"User-Agent: edgeflix-fill\r\nAccept-Encoding: identity\r\nRange: bytes=5-\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("target", "fields"),
    [
        ("no-slash", []),
        ("/a b", []),
        ("/a\r\nX: y", []),
        ("/", [("Range", "bytes=0-\r\nEvil: 1")]),
        ("/", [("Bad Name", "x")]),
    ],
)
def test_render_get_refuses_injection(target: str, fields: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        render_get("h", target, fields)


def test_parse_head_and_framing() -> None:
    raw = head("HTTP/1.1 206 Partial Content\nContent-Length: 10\nContent-Range: bytes 5-14/15\n")
    assert head_end(raw + b"body") == len(raw)
    h = parse_head(raw)
    assert (h.version, h.status, h.reason, h.size) == (11, 206, "Partial Content", len(raw))
    assert h.get("content-range") == "bytes 5-14/15"
    assert body_framing(h).kind is Framing.LENGTH and body_framing(h).length == 10
    assert keep_alive(h)


def test_head_end_waits_then_limits() -> None:
    assert head_end(b"HTTP/1.1 200 OK\r\nContent-Len") == 0
    with pytest.raises(ProtocolError, match="longer than"):
        head_end(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEAD // 6 + 10))


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",  # bare LF
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n  folded\r\n\r\n",  # obs-fold
        b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",  # space before colon
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",
    ],
)
def test_parse_head_is_strict(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_head(raw)


@pytest.mark.parametrize(
    ("fields", "kind", "length"),
    [
        ("Content-Length: 7\n", Framing.LENGTH, 7),
        ("Content-Length: 7\nContent-Length: 7\n", Framing.LENGTH, 7),
        ("Transfer-Encoding: chunked\n", Framing.CHUNKED, 0),
        ("", Framing.CLOSE, 0),
    ],
)
def test_body_framing(fields: str, kind: Framing, length: int) -> None:
    framing = body_framing(parse_head(head(f"HTTP/1.1 200 OK\n{fields}")))
    assert (framing.kind, framing.length) == (kind, length)


@pytest.mark.parametrize(
    "fields",
    [
        "Content-Length: 7\nContent-Length: 8\n",
        "Content-Length: -1\n",
        "Content-Length: 1e3\n",
        "Transfer-Encoding: gzip, chunked\n",
        "Transfer-Encoding: chunked\nContent-Length: 3\n",
    ],
)
def test_body_framing_refuses_ambiguity(fields: str) -> None:
    with pytest.raises(ProtocolError):
        body_framing(parse_head(head(f"HTTP/1.1 200 OK\n{fields}")))


def test_no_body_statuses() -> None:
    for status in (204, 304):
        h = parse_head(head(f"HTTP/1.1 {status} X\nContent-Length: 9\n"))
        assert body_framing(h).kind is Framing.NONE


def test_keep_alive() -> None:
    assert not keep_alive(parse_head(head("HTTP/1.1 200 OK\nConnection: close\n")))
    assert not keep_alive(parse_head(head("HTTP/1.0 200 OK\n")))
    assert keep_alive(parse_head(head("HTTP/1.0 200 OK\nConnection: Keep-Alive\n")))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 5-14/15", ContentRange(5, 14, 15)),
        ("bytes 0-0/*", ContentRange(0, 0, None)),
        ("bytes 5-4/15", None),
        ("bytes 5-15/15", None),
        ("bytes=5-14/15", None),
        ("bytes */15", None),
        (None, None),
    ],
)
def test_content_range(value: str | None, expected: ContentRange | None) -> None:
    assert parse_content_range(value) == expected


def chunked(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n" + trailer + b"\r\n"


def decode_split(data: bytes, cuts: list[int]) -> tuple[bytes, bytes]:
    """Feed `data` cut at `cuts`; return (body, bytes left unused after the end)."""
    decoder = ChunkedDecoder()
    body = bytearray()
    rest = b""
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for a, b in itertools.pairwise(bounds):
        piece = data[a:b]
        if decoder.done:
            rest += piece
            continue
        out, used = decoder.feed(piece)
        for chunk in out:
            body += chunk
        rest += piece[used:]
    assert decoder.done
    return bytes(body), rest


@given(
    pieces=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
    trailer=st.sampled_from([b"", b"X-Sum: 1\r\n"]),
    after=st.binary(max_size=20),
)
def test_chunked_any_split(
    pieces: list[bytes], cuts: list[int], trailer: bytes, after: bytes
) -> None:
    body, rest = decode_split(chunked(pieces, trailer) + after, cuts)
    assert body == b"".join(pieces)
    assert rest == after


@pytest.mark.parametrize(
    "data",
    [
        b"zz\r\n",  # not hex
        b"3\r\nabcd\r\n",  # data longer than the size
        b"3\nabc\r\n",  # bare LF
        b"1" * 5000,  # size line too long
        b"0\r\nbad trailer\r\n\r\n",
    ],
)
def test_chunked_rejects(data: bytes) -> None:
    decoder = ChunkedDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(data)
        decoder.check()  # data came first: returned, and the error raised after it
    with pytest.raises(ProtocolError):
        decoder.feed(b"more")


def test_data_before_bad_framing_is_returned_first() -> None:
    """Framing that goes bad in the same recv as a chunk's data (an endless trailer sent as
    fast as the socket goes): the data comes out, the error on the next call."""
    decoder = ChunkedDecoder()
    out, _ = decoder.feed(b"5\r\nhello\r\n0\r\n" + b"X-Pad: a\r\n" * (MAX_FIELDS + 1))
    assert b"".join(out) == b"hello" and decoder.error is not None
    with pytest.raises(ProtocolError, match="trailer fields"):
        decoder.check()
    with pytest.raises(ProtocolError, match="trailer fields"):
        decoder.feed(b"\r\n")


def feed_all(decoder: ChunkedDecoder, data: bytes, step: int = 4096) -> bytes:
    """Feed `data` in pieces of `step` bytes (as recvs bring it); the body decoded."""
    body = bytearray()
    for i in range(0, len(data), step):
        out, _ = decoder.feed(data[i : i + step])
        body += b"".join(out)
    return bytes(body)


def test_an_endless_trailer_section_is_refused() -> None:
    """Trailer fields alone are never body data: without a bound a source could send them
    forever, each recv inside the read timeout, the speed floor never fed."""
    start = b"5\r\nhello\r\n0\r\n"
    many_lines = start + b"X-Pad: a\r\n" * (MAX_FIELDS + 1)
    with pytest.raises(ProtocolError, match="trailer fields"):
        feed_all(ChunkedDecoder(), many_lines, step=7)
    long_lines = start + (b"X-Pad: " + b"a" * 4000 + b"\r\n") * 17  # under MAX_FIELDS lines
    with pytest.raises(ProtocolError, match="trailer section longer"):
        feed_all(ChunkedDecoder(), long_lines)
    # A trailer section within the limits is read and dropped, as before.
    fine = start + b"X-Pad: a\r\n" * MAX_FIELDS + b"\r\n"
    decoder = ChunkedDecoder()
    assert feed_all(decoder, fine, step=5) == b"hello" and decoder.done


def test_framing_padding_is_refused() -> None:
    """One byte of data per chunk, each with a 4 KB extension: thousands of times the file
    over the wire. Framing may outgrow the data by MAX_CHUNK_OVERHEAD bytes, no more."""
    padded = b"".join(b"1;" + b"e" * 4000 + b"\r\n" + b"%c\r\n" % (65 + i % 26) for i in range(100))
    decoder = ChunkedDecoder()
    with pytest.raises(ProtocolError, match="chunked framing"):
        feed_all(decoder, padded)
    assert decoder.data_bytes <= MAX_CHUNK_OVERHEAD // 4000 + 1
    # Ordinary small chunks (a few bytes of framing for kilobytes of data) are fine.
    body = bytes(range(256)) * 4000
    decoder = ChunkedDecoder()
    assert (
        feed_all(decoder, chunked([body[i : i + 1000] for i in range(0, len(body), 1000)])) == body
    )
    assert decoder.done


_VALUE = st.sampled_from([b"", b" ", b"\t", b"5", b'"v1"', b"a b", b"\xe9", b"\r", b"\n", b"\x00"])
_LINE = st.tuples(
    st.sampled_from([b"Content-Length", b"ETag", b"X-a", b"", b" X", b"a(b", b"HTTP/1.1"]),
    st.sampled_from([b":", b": ", b":\t", b" :", b""]),
    st.lists(_VALUE, max_size=4),
).map(lambda t: t[0] + t[1] + b"".join(t[2]))


@given(st.lists(_LINE, max_size=8), st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 2x"]))
def test_a_head_parses_the_same_in_one_match_as_line_by_line(
    lines: list[bytes], status: bytes
) -> None:
    """parse_head checks a head's field lines in one regex match; whatever the bytes, it
    must accept and refuse exactly what the line-by-line parser does, with the same result."""
    from appliance.fill.http1 import _parse_head_by_line

    raw = b"\r\n".join([status, *lines]) + b"\r\n\r\n"
    try:
        expected: object = _parse_head_by_line(raw)
    except ProtocolError:
        expected = ProtocolError
    try:
        got: object = parse_head(raw)
    except ProtocolError:
        got = ProtocolError
    assert got == expected

"""Range parsing per RFC 9110 §14.1.2, by example and by property."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeflix.http.ranges import MAX_SPANS, Span, Unsatisfiable, parse_range

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "spans"),
    [
        ("bytes=0-99", [(0, 100)]),
        ("bytes=100-", [(100, 900)]),
        ("bytes=-100", [(900, 100)]),
        ("bytes=-5000", [(0, 1000)]),
        ("bytes=990-5000", [(990, 10)]),
        ("BYTES = 0-0", [(0, 1)]),
        ("bytes=0-9, 20-29", [(0, 10), (20, 10)]),
        ("bytes=20-29,0-9", [(20, 10), (0, 10)]),  # request order kept when nothing merges
        ("bytes=0-9,5-14", [(0, 15)]),  # overlap coalesced
        ("bytes=0-9,10-19", [(0, 20)]),  # adjacent coalesced
        ("bytes=0-9,,20-29", [(0, 10), (20, 10)]),  # empty list elements allowed
        ("bytes=0-9,2000-3000", [(0, 10)]),  # unsatisfiable member dropped
    ],
)
def test_satisfiable(header: str, spans: list[tuple[int, int]]) -> None:
    assert parse_range(header, SIZE) == tuple(Span(a, n) for a, n in spans)


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=-0,2000-"])
def test_unsatisfiable(header: str) -> None:
    assert parse_range(header, SIZE) == Unsatisfiable(SIZE)


@pytest.mark.parametrize(
    "header",
    [
        "bytes=",
        "bytes=abc",
        "bytes=5-1",  # last < first: invalid, so the whole header is ignored
        "bytes=1-2-3",
        "bytes=--1",
        "items=0-1",
        "bytes 0-1",
        "bytes=0x1-2",
        "bytes=" + "9" * 40 + "-",
        "bytes=" + ",".join(f"{i * 10}-{i * 10}" for i in range(MAX_SPANS + 1)),
    ],
)
def test_ignored(header: str) -> None:
    assert parse_range(header, SIZE) is None


def test_empty_file_ignores_ranges() -> None:
    assert parse_range("bytes=0-1", 0) is None


@given(st.text(max_size=80), st.integers(min_value=0, max_value=10_000))
def test_any_header_gives_spans_inside_the_file(header: str, size: int) -> None:
    result = parse_range(header, size)
    if result is None or isinstance(result, Unsatisfiable):
        return
    assert 1 <= len(result) <= MAX_SPANS
    ordered = sorted(result, key=lambda s: s.start)
    for span in ordered:
        assert span.start >= 0 and span.length >= 1 and span.start + span.length <= size
    for a, b in itertools.pairwise(ordered):
        assert a.start + a.length < b.start  # no overlap, no adjacency left


@given(
    st.lists(
        st.tuples(st.integers(0, 2000), st.integers(0, 2000)).map(sorted), min_size=1, max_size=8
    ),
    st.integers(1, 1500),
)
def test_covered_bytes_match_the_request(pairs: list[list[int]], size: int) -> None:
    header = "bytes=" + ",".join(f"{a}-{b}" for a, b in pairs)
    wanted = {i for a, b in pairs for i in range(a, min(b, size - 1) + 1)}
    result = parse_range(header, size)
    if not wanted:
        assert result == Unsatisfiable(size)
        return
    if result is None:  # more distinct spans than MAX_SPANS is impossible with 8
        pytest.fail("valid header ignored")
    assert not isinstance(result, Unsatisfiable)
    covered = {i for s in result for i in range(s.start, s.start + s.length)}
    assert covered == wanted

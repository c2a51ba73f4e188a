"""The hot-path shortcuts in paths.py and request.py agree with the strict checks they skip."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from edgeflix.http import request
from edgeflix.http.errors import HttpError
from edgeflix.http.paths import _segment, split_path

_PATH_CHARS = st.sampled_from([*"ab.%2e5cF/\\", "\x00", "\x1f", "\x7f", "é", "%2f", "%00"])


def _strict_split(path: str) -> tuple[str, ...] | str:
    if "\\" in path:
        return "error"
    try:
        return tuple(_segment(raw) for raw in path[1:].split("/"))
    except HttpError:
        return "error"


@given(st.lists(_PATH_CHARS, max_size=12).map(lambda cs: "/" + "".join(cs)))
def test_split_path_matches_the_strict_rules(path: str) -> None:
    try:
        got: tuple[str, ...] | str = split_path(path)
    except HttpError:
        got = "error"
    if path == "/":
        assert got == ()
    else:
        assert got == _strict_split(path)


_METHODS = st.sampled_from(["GET", "HEAD", "OPTIONS", "G@T", "", "BREW"])
_TARGETS = st.sampled_from(["/a", "/a#b", "/é", "/\x7f", "/a b", "*", "", "/" + "x" * 9000])
_VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "http/1.1", ""])
_LINES = st.one_of(
    st.tuples(_METHODS, _TARGETS, _VERSIONS).map(" ".join),
    st.lists(st.one_of(_METHODS, _TARGETS, _VERSIONS), max_size=4).map(" ".join),
)


def _parse(head: bytes, *, fast: bool) -> object:
    """parse_head's answer (the head, or the error status), with or without the shortcut."""
    saved = request._PLAIN_LINE
    if not fast:
        request._PLAIN_LINE = re.compile(r"(?!)")  # matches nothing: always the strict path
    try:
        parsed = request.parse_head(head, 0, 16384)
        return parsed[0] if parsed else None
    except HttpError as exc:
        return exc.status
    finally:
        request._PLAIN_LINE = saved


@given(_LINES)
def test_request_line_fast_path_matches_the_strict_one(line: str) -> None:
    head = (line + "\r\nHost: x\r\n\r\n").encode("utf-8")
    assert _parse(head, fast=True) == _parse(head, fast=False)

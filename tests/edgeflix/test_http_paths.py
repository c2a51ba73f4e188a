"""Path normalisation: every spelling of traversal is refused, plain names pass unchanged."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeflix.http.errors import BadRequest
from edgeflix.http.paths import split_path


def test_plain_paths() -> None:
    assert split_path("/") == ()
    assert split_path("/titles/t1/v0/seg%201.m4s") == ("titles", "t1", "v0", "seg 1.m4s")
    assert split_path("/titles/caf%C3%A9") == ("titles", "café")


@pytest.mark.parametrize(
    "path",
    [
        "/titles/t1/../../etc/passwd",
        "/titles/t1/%2e%2e/%2e%2e/etc/passwd",
        "/titles/t1/%2E%2E/x",
        "/titles/t1/.%2e/x",
        "/titles/t1/..%2fetc",
        "/titles/t1/a%2fb",
        "/titles/t1/a%2Fb",
        "/titles/t1/%252e%252e/x",  # double encoding
        "/titles/t1/a%5cb",
        "/titles/t1/..\\..\\x",
        "/titles/t1/a%00.m4s",
        "/titles//x",
        "/titles/./x",
        "/titles/t1/",
        "/titles/%zz",
        "/titles/%",
        "/titles/%ff",  # not UTF-8
        "titles/x",
    ],
)
def test_traversal_spellings_refused(path: str) -> None:
    with pytest.raises(BadRequest):
        split_path(path)


@given(st.text(max_size=60))
def test_segments_are_always_plain_names(path: str) -> None:
    try:
        segments = split_path("/" + path)
    except BadRequest:
        return
    for seg in segments:
        assert seg not in ("", ".", "..")
        assert not any(c in seg for c in "/\\\x00%")


@given(st.lists(st.sampled_from(["..", "%2e%2e", "%2E.", ".%2e", "%252e%252e", "a"]), min_size=1))
def test_no_combination_climbs_out(parts: list[str]) -> None:
    try:
        segments = split_path("/" + "/".join(parts))
    except BadRequest:
        return
    assert all(seg == "a" for seg in segments)

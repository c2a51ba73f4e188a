"""Versioned control-plane documents: whole or nothing, never backwards."""

from __future__ import annotations

import pytest

from edgeflix.versioning import Versioned, needs_push, receive


def nonempty(payload: tuple[str, ...]) -> None:
    if any(not p for p in payload):
        raise ValueError("an empty title id")


def plan(version: int, *titles: str) -> Versioned[tuple[str, ...]]:
    return Versioned("plan", version, titles)


def test_first_document_is_applied() -> None:
    got = receive(None, plan(1, "a"), nonempty)
    assert (got.action, got.running) == ("applied", plan(1, "a"))


def test_newer_replaces_whole_and_older_is_ignored() -> None:
    got = receive(plan(3, "a"), plan(5, "b", "c"), nonempty)
    assert got.action == "applied" and got.running == plan(5, "b", "c")
    late = receive(got.running, plan(4, "x"), nonempty)
    assert late.action == "stale" and late.running == plan(5, "b", "c")
    assert "older than 5" in late.reason


def test_an_invalid_part_rejects_all_of_it() -> None:
    got = receive(plan(1, "a"), plan(2, "b", ""), nonempty)
    assert got.action == "rejected" and got.running == plan(1, "a")
    assert got.reason.startswith("version 2:")


def test_same_version_same_content_is_a_no_op_other_content_is_refused() -> None:
    assert receive(plan(2, "a"), plan(2, "a"), nonempty).action == "unchanged"
    assert receive(plan(2, "a"), plan(2, "b"), nonempty).action == "rejected"


def test_kinds_never_mix() -> None:
    keys = Versioned("keys", 9, ("a",))
    assert receive(plan(1, "a"), keys, nonempty).action == "rejected"


def test_versions_start_at_one_and_push_only_when_behind() -> None:
    with pytest.raises(ValueError):
        plan(0)
    assert needs_push(None, 1) and needs_push(3, 4)
    assert not needs_push(4, 4) and not needs_push(5, 4)

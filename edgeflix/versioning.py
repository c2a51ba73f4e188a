"""Control-plane changes arrive whole and in order: the pure rules for a versioned document.

A plan or key set carries a version that only rises. A receiver (an appliance, or the fleet
replaying its own store) applies a document completely or not at all, ignores one older
than what it runs, and reports the version it runs; the sender pushes only when that report
is behind. Both sides call these functions (fleet/ sends, appliance/fleetlink.py receives),
so the rules live here in edgeflix/, the one package both may import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
Action = Literal["applied", "unchanged", "stale", "rejected"]


@dataclass(frozen=True)
class Versioned(Generic[T]):
    kind: str  # "plan", "keys": versions of different kinds never compare
    version: int
    payload: T

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("versions start at 1")


@dataclass(frozen=True)
class ApplyResult(Generic[T]):
    action: Action
    running: Versioned[T] | None  # what the receiver runs afterwards
    reason: str = ""


def receive(
    running: Versioned[T] | None,
    incoming: Versioned[T],
    check: Callable[[T], None],
) -> ApplyResult[T]:
    """Decide what a receiver runs after `incoming` arrives.

    `check` validates the whole payload and raises ValueError (or a subclass) if any part
    is unusable; then nothing of it is applied. Older versions arriving late are ignored.
    """
    if running is not None and incoming.kind != running.kind:
        return ApplyResult("rejected", running, f"a {incoming.kind} is not a {running.kind}")
    if running is not None and incoming.version < running.version:
        return ApplyResult(
            "stale", running, f"version {incoming.version} is older than {running.version}"
        )
    if running is not None and incoming.version == running.version:
        if incoming.payload != running.payload:
            return ApplyResult(
                "rejected", running, f"version {incoming.version} arrived with other content"
            )
        return ApplyResult("unchanged", running)
    try:
        check(incoming.payload)
    except ValueError as exc:
        return ApplyResult("rejected", running, f"version {incoming.version}: {exc}")
    return ApplyResult("applied", incoming)


def needs_push(reported: int | None, current: int) -> bool:
    """The sender's side: push the current document when the receiver runs an older one."""
    return reported is None or reported < current

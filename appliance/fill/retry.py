"""What to do when a download goes wrong, and how long to wait before trying again. Pure.

Errors are sorted into a few outcomes (retry the same source, move to the next source,
restart the file from byte 0, give up) by a table, and delays are capped exponential
backoff with full jitter; the random draw is passed in so tests choose it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class Outcome(Enum):
    RETRY = "retry"  # transient: same source after a backoff
    NEXT_SOURCE = "next_source"  # this source cannot help: a peer lacks the title, or is sick
    RESTART_FILE = "restart_file"  # our partial bytes are useless (bad hash, range refused)
    GIVE_UP = "give_up"


class Failure(Enum):
    CONNECT = "connect"  # refused, DNS, TLS
    TIMEOUT = "timeout"
    TRUNCATED = "truncated"  # the body ended early
    NOT_FOUND = "not_found"  # 404/410
    SERVER = "server"  # 5xx, 429
    CLIENT = "client"  # other 4xx: our request is wrong for this source
    RANGE = "range"  # 416 or a Content-Range that does not start where we asked
    DIGEST = "digest"  # SHA-256 or size mismatch after the last byte
    TITLE_CHANGED = "title_changed"  # files.json digest is not the plan's


_TABLE: dict[Failure, Outcome] = {
    Failure.CONNECT: Outcome.RETRY,
    Failure.TIMEOUT: Outcome.RETRY,
    Failure.TRUNCATED: Outcome.RETRY,
    Failure.SERVER: Outcome.RETRY,
    Failure.NOT_FOUND: Outcome.NEXT_SOURCE,
    Failure.CLIENT: Outcome.NEXT_SOURCE,
    Failure.TITLE_CHANGED: Outcome.NEXT_SOURCE,
    Failure.RANGE: Outcome.RESTART_FILE,
    Failure.DIGEST: Outcome.RESTART_FILE,
}


def failure_for_status(status: int) -> Failure | None:
    if status in (404, 410):
        return Failure.NOT_FOUND
    if status == 416:
        return Failure.RANGE
    if status == 429 or status >= 500:
        return Failure.SERVER
    if status >= 400:
        return Failure.CLIENT
    return None


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 30.0
    # Attempts per source before moving on; a file whose bytes keep failing the hash is
    # retried from zero this many times in all, then the title fails (a corrupt source).
    attempts_per_source: int = 4
    digest_restarts: int = 2
    # An attempt that moved the file on by this many bytes before it broke does not count
    # against attempts_per_source: a flaky link that resets every few MB still gets a big
    # file through by resuming, and the bytes bound the extra attempts.
    progress_bytes: int = 1 << 20

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds before attempt number `attempt` (1 = first retry); `draw` in [0, 1)."""
        ceiling = min(self.max_delay_s, self.base_s * self.factor ** max(attempt - 1, 0))
        return ceiling * min(max(draw, 0.0), 1.0)

    def attempts_after(self, attempts: int, progressed: int) -> int:
        """Failed attempts on this source once one more failed after receiving `progressed`
        bytes: one more, or none left over when it made real progress."""
        return 0 if progressed >= self.progress_bytes else attempts + 1

    def decide(
        self, failure: Failure, attempts_here: int, sources_left: int, digest_failures: int
    ) -> Outcome:
        """What to do after `failure`, given how often this source failed already
        (including this one), how many sources remain after it, and past hash failures."""
        outcome = _TABLE[failure]
        if failure is Failure.DIGEST and digest_failures > self.digest_restarts:
            outcome = Outcome.NEXT_SOURCE
        # A restart counts like a retry (a source that answers every request with 416 must
        # not be asked again and again), except after a bad hash: digest_restarts bound those.
        again = outcome is Outcome.RETRY or (
            outcome is Outcome.RESTART_FILE and failure is not Failure.DIGEST
        )
        if again and attempts_here >= self.attempts_per_source:
            outcome = Outcome.NEXT_SOURCE
        if outcome is Outcome.NEXT_SOURCE and sources_left == 0:
            return Outcome.GIVE_UP
        return outcome


def discard_partial(failure: Failure, outcome: Outcome) -> bool:
    """Whether the file's partial bytes go: on a restart, and when leaving a source (or
    giving up) after its bytes failed the hash (kept, they would fail again at the next
    source or run, a strike against a good source). Bytes from a source that merely broke
    off are kept: the hash at the end still checks every one of them."""
    if outcome is Outcome.RESTART_FILE:
        return True
    return outcome is not Outcome.RETRY and failure in (Failure.DIGEST, Failure.RANGE)


@dataclass(frozen=True)
class SpeedFloor:
    """curl's --speed-limit/--speed-time for one response: fewer than `min_bps` bytes per
    second of time spent waiting on the socket, over a stretch of `period_s`, is a stalled
    source. Only the wait for bytes counts, so the bandwidth cap's pauses, the disk writes
    and the hashing never make a good source look slow. `feed` returns None when too slow."""

    min_bps: float
    period_s: float
    waited: float = 0.0  # seconds waited for data in this stretch
    got: int = 0  # bytes received in this stretch

    def feed(self, waited: float, nbytes: int) -> SpeedFloor | None:
        waited, got = self.waited + max(waited, 0.0), self.got + nbytes
        if waited < self.period_s:
            return replace(self, waited=waited, got=got)
        if got < self.min_bps * waited:
            return None
        return replace(self, waited=0.0, got=0)


def retry_after_s(value: str | None, cap_s: float) -> float:
    """A Retry-After in seconds (the HTTP-date form is not worth a clock here), capped so a
    wrong header cannot park a stream for a day; 0 when absent or not a number."""
    if value is None or not value.strip().isdigit():
        return 0.0
    return min(float(value.strip()), cap_s)

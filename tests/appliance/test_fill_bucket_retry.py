"""Token bucket arithmetic and the retry policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.fill.bucket import TokenBucket
from appliance.fill.retry import Failure, Outcome, RetryPolicy, failure_for_status


def test_bucket_grants_burst_then_paces() -> None:
    b = TokenBucket.full(rate=100.0, burst=50.0, now=0.0)
    b, wait = b.take(50, 0.0)
    assert wait == 0.0
    b, wait = b.take(100, 0.0)
    assert wait == 1.0  # 100 bytes of debt at 100/s
    b, wait = b.take(10, 2.0)  # 2 s later: debt repaid, 100 tokens minted, capped to burst 50
    assert wait == 0.0 and b.tokens == 40.0


def test_bucket_ignores_clock_going_back() -> None:
    b = TokenBucket.full(rate=10.0, burst=10.0, now=100.0)
    b, _ = b.take(10, 100.0)
    b, wait = b.take(10, 50.0)
    assert wait == 1.0


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket.full(0, None, 0)


@given(
    rate=st.floats(1, 1e9),
    sizes=st.lists(st.integers(1, 1 << 20), min_size=1, max_size=50),
)
def test_bucket_long_run_rate_is_the_cap(rate: float, sizes: list[int]) -> None:
    """Whatever the chunk sizes, sending them back-to-back while obeying the waits never
    moves more than burst + rate * elapsed bytes."""
    now = 0.0
    b = TokenBucket.full(rate, None, now)
    sent = 0
    for size in sizes:
        b, wait = b.take(size, now)
        now += wait
        sent += size
    assert sent <= b.burst + rate * now + 1e-6 * sent + 1


def test_failure_for_status() -> None:
    assert failure_for_status(200) is None and failure_for_status(206) is None
    assert failure_for_status(404) is Failure.NOT_FOUND
    assert failure_for_status(416) is Failure.RANGE
    assert failure_for_status(503) is Failure.SERVER
    assert failure_for_status(429) is Failure.SERVER
    assert failure_for_status(403) is Failure.CLIENT


def test_policy_decisions() -> None:
    p = RetryPolicy(attempts_per_source=3, digest_restarts=1)
    assert p.decide(Failure.TIMEOUT, 1, 1, 0) is Outcome.RETRY
    assert p.decide(Failure.TIMEOUT, 3, 1, 0) is Outcome.NEXT_SOURCE  # peer exhausted → origin
    assert p.decide(Failure.TIMEOUT, 3, 0, 0) is Outcome.GIVE_UP
    assert p.decide(Failure.NOT_FOUND, 1, 1, 0) is Outcome.NEXT_SOURCE
    assert p.decide(Failure.NOT_FOUND, 1, 0, 0) is Outcome.GIVE_UP
    assert p.decide(Failure.RANGE, 1, 0, 0) is Outcome.RESTART_FILE
    assert p.decide(Failure.DIGEST, 1, 0, 1) is Outcome.RESTART_FILE
    assert p.decide(Failure.DIGEST, 2, 0, 2) is Outcome.GIVE_UP
    assert p.decide(Failure.DIGEST, 2, 1, 2) is Outcome.NEXT_SOURCE


@given(attempt=st.integers(1, 100), draw=st.floats(0, 1, exclude_max=True))
def test_delays_are_capped_and_jittered(attempt: int, draw: float) -> None:
    p = RetryPolicy(base_s=0.5, factor=2, max_delay_s=30)
    d = p.delay(attempt, draw)
    assert 0 <= d <= 30
    assert d <= 0.5 * 2 ** (attempt - 1) + 1e-9
    assert p.delay(attempt, 0.0) == 0.0

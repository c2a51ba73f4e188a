"""Token bucket arithmetic and the retry policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance import config as appliance_config
from appliance.fill.retry import (
    Failure,
    Outcome,
    RetryPolicy,
    SpeedFloor,
    discard_partial,
    failure_for_status,
    retry_after_s,
)
from edgeflix.bucket import TokenBucket
from edgeflix.errors import ConfigError


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
    # Restarts after a refused range count as attempts: a source that always refuses is left.
    assert p.decide(Failure.RANGE, 3, 1, 0) is Outcome.NEXT_SOURCE
    assert p.decide(Failure.RANGE, 3, 0, 0) is Outcome.GIVE_UP
    # Hash failures are bounded by digest_restarts alone (small files count attempts too).
    assert RetryPolicy(attempts_per_source=1).decide(Failure.DIGEST, 1, 0, 1) is (
        Outcome.RESTART_FILE
    )


@given(attempt=st.integers(1, 100), draw=st.floats(0, 1, exclude_max=True))
def test_delays_are_capped_and_jittered(attempt: int, draw: float) -> None:
    p = RetryPolicy(base_s=0.5, factor=2, max_delay_s=30)
    d = p.delay(attempt, draw)
    assert 0 <= d <= 30
    assert d <= 0.5 * 2 ** (attempt - 1) + 1e-9
    assert p.delay(attempt, 0.0) == 0.0


def test_progress_forgives_an_attempt() -> None:
    p = RetryPolicy(attempts_per_source=3, progress_bytes=1000)
    assert p.attempts_after(2, 999) == 3
    assert p.attempts_after(2, 1000) == 0  # moved the file on: a flaky link, not a dead one
    assert p.attempts_after(0, 0) == 1


def test_partial_bytes_go_with_a_corrupt_source() -> None:
    assert discard_partial(Failure.DIGEST, Outcome.RESTART_FILE)
    assert discard_partial(Failure.DIGEST, Outcome.NEXT_SOURCE)  # else they fail again
    assert discard_partial(Failure.RANGE, Outcome.NEXT_SOURCE)
    assert not discard_partial(Failure.TIMEOUT, Outcome.NEXT_SOURCE)  # good bytes, kept
    assert not discard_partial(Failure.TRUNCATED, Outcome.RETRY)
    assert discard_partial(Failure.DIGEST, Outcome.GIVE_UP)  # not a strike next run
    assert not discard_partial(Failure.TIMEOUT, Outcome.GIVE_UP)  # resumed next run


def test_speed_floor_catches_a_trickle_not_a_pause() -> None:
    floor: SpeedFloor | None = SpeedFloor(min_bps=1000, period_s=10)
    for _ in range(9):  # 9 s of waiting for 10 bytes a second: not judged before 10 s
        assert floor is not None
        floor = floor.feed(1.0, 10)
    assert floor is not None and floor.feed(1.0, 10) is None
    fast = SpeedFloor(min_bps=1000, period_s=10).feed(10.0, 20_000)
    assert fast is not None and (fast.waited, fast.got) == (0.0, 0)  # a new stretch
    # Time not spent waiting (the cap's sleeps, disk writes) is never fed: a capped stream
    # that gets its bytes at once is not slow, however long its pauses.
    capped = SpeedFloor(min_bps=1000, period_s=10)
    for _ in range(1000):
        assert capped is not None
        capped = capped.feed(0.001, 65536)
    assert capped is not None


@given(
    steps=st.lists(st.tuples(st.floats(0, 5), st.integers(0, 10_000)), max_size=200),
    rate=st.floats(1, 5000),
)
def test_speed_floor_judges_only_slow_stretches(
    steps: list[tuple[float, int]], rate: float
) -> None:
    floor: SpeedFloor | None = SpeedFloor(min_bps=rate, period_s=10)
    for waited, got in steps:
        assert floor is not None
        before = floor
        floor = floor.feed(waited, got)
        if floor is None:
            total_wait, total_got = before.waited + waited, before.got + got
            assert total_wait >= 10 and total_got < rate * total_wait
            return


def test_retry_after() -> None:
    assert retry_after_s("3", 30) == 3.0
    assert retry_after_s(" 120 ", 30) == 30.0  # capped
    assert retry_after_s(None, 30) == 0.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 30) == 0.0
    assert retry_after_s("-1", 30) == 0.0


def test_fill_retry_settings_must_be_ordered(tmp_path: Path) -> None:
    """A backoff cap below its base is refused when the config loads, naming the keys."""
    path = tmp_path / "appliance.toml"
    path.write_text("[fill]\nretry_base_s = 10\nretry_max_s = 1\n")
    with pytest.raises(ConfigError, match="retry_max_s must be at least retry_base_s"):
        appliance_config.load(path)
    path.write_text("[fill]\nretry_base_s = 1\nretry_max_s = 1\n")
    assert appliance_config.load(path).fill.retry_max_s == 1

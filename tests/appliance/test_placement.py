from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.placement import (
    Bucket,
    Room,
    Shortfall,
    bytes_per_disk,
    choose,
    place_title,
    shortfalls,
)

KEYS = [f"title{t}/v{r}/seg{s:05d}.m4s" for t in range(4) for r in range(3) for s in range(500)]


def test_share_follows_capacity() -> None:
    buckets = [Bucket("a", 1.0), Bucket("b", 2.0), Bucket("c", 1.0)]
    counts = Counter(choose(k, buckets) for k in KEYS)
    n = len(KEYS)
    # 6000 keys: a binomial share is within ~3% of its mean at many sigmas.
    assert abs(counts["b"] / n - 0.5) < 0.03
    assert abs(counts["a"] / n - 0.25) < 0.03
    assert abs(counts["c"] / n - 0.25) < 0.03


def test_adding_a_disk_moves_only_its_share_and_only_onto_it() -> None:
    before = [Bucket("a", 4.0), Bucket("b", 4.0)]
    after = [*before, Bucket("c", 2.0)]
    moved = [(k, choose(k, before), choose(k, after)) for k in KEYS]
    changed = [(k, old, new) for k, old, new in moved if old != new]
    assert all(new == "c" for _, _, new in changed)
    assert abs(len(changed) / len(KEYS) - 0.2) < 0.03  # c's share: 2 / 10


def test_losing_a_disk_costs_only_its_share() -> None:
    full = [Bucket("a", 1.0), Bucket("b", 1.0), Bucket("c", 1.0)]
    without_b = [full[0], full[2]]
    for key in KEYS[:2000]:
        old = choose(key, full)
        if old != "b":
            assert choose(key, without_b) == old


def test_order_of_buckets_does_not_matter() -> None:
    buckets = [Bucket("x", 3.0), Bucket("y", 1.0), Bucket("z", 2.0)]
    for key in KEYS[:500]:
        assert choose(key, buckets) == choose(key, list(reversed(buckets)))


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.floats(0.5, 100.0), min_size=2, max_size=6),
    keys=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=40),
    drop=st.integers(0, 5),
)
def test_removing_any_bucket_moves_only_its_keys(
    weights: list[float], keys: list[str], drop: int
) -> None:
    buckets = [Bucket(f"d{i}", w) for i, w in enumerate(weights)]
    gone = buckets[drop % len(buckets)]
    rest = [b for b in buckets if b != gone]
    for key in keys:
        old = choose(key, buckets)
        assert old in {b.id for b in buckets}
        if old != gone.id:
            assert choose(key, rest) == old


def test_place_title_and_fit() -> None:
    buckets = [Bucket("a", 1.0), Bucket("b", 1.0)]
    sizes = {f"seg{i}.m4s": 1000 + i for i in range(50)}
    placement = place_title("t", sizes, buckets)
    assert set(placement) == set(sizes) and set(placement.values()) == {"a", "b"}
    assert placement == place_title("t", list(reversed(sizes)), buckets)
    needed = bytes_per_disk(placement, sizes)
    assert sum(needed.values()) == sum(sizes.values())
    assert shortfalls(needed, [Room("a", 10**9), Room("b", 10**9)]) == []
    short = shortfalls(needed, [Room("a", 10**9), Room("b", 10)])
    assert short == [Shortfall("b", needed["b"], 10)]
    assert shortfalls(needed, [Room("a", 10**9)]) == [Shortfall("b", needed["b"], 0)]

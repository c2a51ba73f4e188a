"""The fleet link's pure rules: counts exactly once across failed beats, the beat itself,
plans and key sets checked whole, the grace clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.fill.plan import FillPlan, PlannedTitle
from appliance.fleetlink_core import (
    BeatFigures,
    CountLedger,
    HeldTitle,
    build_beat,
    check_plan,
    fill_progress,
    link_health,
    load_bps,
    phase,
    plan_document,
    to_fill_plan,
)
from appliance.fleetlink_keys import (
    FleetKey,
    check_keys,
    keys_from_proto,
    signing_key,
    usable_keys,
    verified_until,
)
from edgeflix.proto.codec import Counts, unpack_counts
from edgeflix.proto.gen import fleet_pb2

SHA = "a" * 64


class Fleet:
    """The receiving rule of the fleet manager (fleet/registry.accept_beat): a sequence not
    above the last is dropped, except 1 (a restart). Counts of accepted beats add up."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.totals: dict[str, Counts] = {}

    def receive(self, sequence: int, counts: dict[str, Counts]) -> None:
        if self.last is not None and sequence <= self.last and sequence != 1:
            return
        self.last = sequence
        for t, c in counts.items():
            p = self.totals.get(t, Counts(0, 0))
            self.totals[t] = Counts(p.requests + c.requests, p.bytes + c.bytes)


def test_counts_wait_for_an_answer_and_go_out_once() -> None:
    ledger, fleet = CountLedger(), Fleet()
    first = ledger.next_batch()
    assert first.sequence == 1 and not first.counts  # a restart beat carries no counts
    fleet.receive(first.sequence, dict(first.counts))
    ledger.acknowledge(1)
    ledger.observe({"film": (3, 3000)})
    beat = ledger.next_batch()
    assert beat.counts == {"film": Counts(3, 3000)}
    # The beat reached the fleet but its answer was lost: the same batch goes again ...
    fleet.receive(beat.sequence, dict(beat.counts))
    ledger.observe({"film": (5, 5000)})
    again = ledger.next_batch()
    assert again == beat
    fleet.receive(again.sequence, dict(again.counts))  # ... and the fleet drops the repeat
    ledger.acknowledge(again.sequence)
    after = ledger.next_batch()
    assert after.sequence == beat.sequence + 1 and after.counts == {"film": Counts(2, 2000)}
    fleet.receive(after.sequence, dict(after.counts))
    assert fleet.totals == {"film": Counts(5, 5000)}


def test_a_stale_answer_keeps_the_counts_for_the_next_beat() -> None:
    """A beat the fleet answered but did not take (HeartbeatResponse.stale: it holds a later
    sequence of this boot) was acknowledged as if taken: its counts were lost."""
    ledger = CountLedger()
    ledger.acknowledge(ledger.next_batch().sequence)
    ledger.observe({"film": (3, 3000)})
    dropped = ledger.next_batch()
    assert dropped.counts == {"film": Counts(3, 3000)}
    ledger.requeue(dropped.sequence)
    assert ledger.unsent() == {"film": Counts(3, 3000)}
    ledger.observe({"film": (5, 5000)})
    after = ledger.next_batch()
    assert after.sequence == dropped.sequence + 1
    assert after.counts == {"film": Counts(5, 5000)}
    ledger.requeue(dropped.sequence)  # an answer for a batch no longer outstanding: nothing
    assert ledger.outstanding == after


def test_each_start_beats_under_a_boot_of_its_own() -> None:
    first, second = CountLedger(), CountLedger()
    assert len(first.boot) == 16 and first.boot != second.boot
    req = build_beat(
        "h1",
        first.next_batch(),
        figures(keys_digest=b"k" * 16, plan_digest=b"p" * 16),
        boot=first.boot,
    )
    assert (req.boot, req.keys_digest, req.plan_digest) == (first.boot, b"k" * 16, b"p" * 16)


def test_held_titles_are_left_out_while_the_fleet_keeps_the_same_list() -> None:
    ledger = CountLedger()
    first = build_beat("h1", ledger.next_batch(), figures())
    assert [t.title_id for t in first.titles] == ["a", "b"] and not first.titles_omitted
    again = build_beat("h1", ledger.next_batch(), figures(), fleet_titles=first.titles_digest)
    assert again.titles_omitted and not again.titles
    assert again.titles_digest == first.titles_digest
    # The list changed, or the fleet keeps another one (restarted, restored): sent whole.
    fewer = figures(titles=(HeldTitle("a", SHA, True, 9, "ssd"),))
    changed = build_beat("h1", ledger.next_batch(), fewer, fleet_titles=first.titles_digest)
    assert [t.title_id for t in changed.titles] == ["a"] and not changed.titles_omitted
    other = build_beat("h1", ledger.next_batch(), figures(), fleet_titles=b"x" * 16)
    assert len(other.titles) == 2 and not other.titles_omitted


def test_a_fall_counts_nothing_until_the_total_passes_its_high() -> None:
    # Within one daemon a total only falls when a reading missed a worker's counters file
    # (the supervisor keeps dead workers' counts): re-adding it would count demand twice.
    ledger = CountLedger()
    ledger.observe({"a": (10, 100)})
    ledger.observe({"a": (2, 20)})
    ledger.observe({"a": (11, 110)})
    assert ledger.unsent() == {"a": Counts(11, 110)}


steps = st.lists(
    st.tuples(
        st.sampled_from(["serve", "beat_ok", "beat_lost", "answer_lost"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 5),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_whatever_fails_the_fleet_sees_every_count_once(plan: list[tuple[str, str, int]]) -> None:
    ledger, fleet = CountLedger(), Fleet()
    served: dict[str, list[int]] = {}
    for what, title, n in plan:
        if what == "serve":
            c = served.setdefault(title, [0, 0])
            c[0] += n
            c[1] += n * 1000
            continue
        ledger.observe({t: (c[0], c[1]) for t, c in served.items()})
        batch = ledger.next_batch()
        if what in ("beat_ok", "answer_lost"):
            fleet.receive(batch.sequence, dict(batch.counts))
        if what == "beat_ok":
            ledger.acknowledge(batch.sequence)
    # The fleet answers again: the outstanding batch, then what piled up meanwhile.
    ledger.observe({t: (c[0], c[1]) for t, c in served.items()})
    for _ in range(2):
        batch = ledger.next_batch()
        fleet.receive(batch.sequence, dict(batch.counts))
        ledger.acknowledge(batch.sequence)
    assert not ledger.unsent()
    want = {t: Counts(c[0], c[1]) for t, c in served.items() if c[0]}
    assert {t: c for t, c in fleet.totals.items() if c.requests} == want


def figures(**kw: object) -> BeatFigures:
    base: dict[str, object] = dict(
        health="ok",
        reasons=(),
        capacity_bps=1e9,
        load_bps=2e6,
        connections=4,
        tiers={"hdd": (100, 40), "ssd": (10, 1)},
        titles=(HeldTitle("b", SHA, True, 500, "hdd"), HeldTitle("a", SHA, False, 9, "ssd")),
        plan_version=3,
        keys_version=2,
    )
    base.update(kw)
    return BeatFigures(**base)  # type: ignore[arg-type]


def test_beat_carries_the_figures_and_compressed_counts() -> None:
    ledger = CountLedger(sequence=1)
    ledger.observe({"b": (7, 7000)})
    batch = ledger.next_batch()
    req = build_beat(
        "h1", batch, figures(health="degraded", reasons=("disk d1 slow",)), "http://h1:8081"
    )
    assert (req.appliance, req.sequence, req.health) == ("h1", 2, fleet_pb2.HEALTH_DEGRADED)
    assert req.url == "http://h1:8081"
    assert req.health_detail == "disk d1 slow"
    assert [t.title_id for t in req.titles] == ["a", "b"] and not req.titles[0].complete
    assert [(t.tier, t.capacity_bytes, t.used_bytes) for t in req.tiers] == [
        ("hdd", 100, 40),
        ("ssd", 10, 1),
    ]
    assert (req.plan_version, req.keys_version, req.connections) == (3, 2, 4)
    assert unpack_counts(req.counts_zstd) == {"b": Counts(7, 7000)}


def test_the_titles_digest_moves_with_any_field_of_any_title_and_only_then() -> None:
    ledger = CountLedger(sequence=1)
    base = figures()
    digest = build_beat("h1", ledger.next_batch(), base).titles_digest
    assert len(digest) == 16
    assert build_beat("h1", ledger.next_batch(), figures(load_bps=9e9)).titles_digest == digest
    a, b = base.titles[1], base.titles[0]
    # Order as sent (sorted by id), not as held: the same set is the same digest.
    assert build_beat("h1", ledger.next_batch(), figures(titles=(a, b))).titles_digest == digest
    for changed in (
        HeldTitle("b", SHA, False, 500, "hdd"),
        HeldTitle("b", "f" * 64, True, 500, "hdd"),
        HeldTitle("b", SHA, True, 501, "hdd"),
        HeldTitle("b", SHA, True, 500, "ssd"),
        HeldTitle("c", SHA, True, 500, "hdd"),
    ):
        other = build_beat("h1", ledger.next_batch(), figures(titles=(a, changed)))
        assert other.titles_digest != digest, changed
    assert build_beat("h1", ledger.next_batch(), figures(titles=(a,))).titles_digest != digest


def test_load_is_a_rate_over_the_byte_total() -> None:
    assert load_bps(None, 10.0, 5000) == 0.0
    assert load_bps((10.0, 1000), 12.0, 3000) == pytest.approx(8000.0)
    assert load_bps((10.0, 1000), 12.0, 10) == 0.0  # counters reset: no negative load


def test_grace_clock() -> None:
    assert phase(False, None, 100.0, 5.0, 3600.0) == "unenrolled"
    assert phase(True, 100.0, 114.0, 5.0, 3600.0) == "connected"
    assert phase(True, 100.0, 116.0, 5.0, 3600.0) == "grace"
    assert phase(True, 100.0, 3700.0, 5.0, 3600.0) == "grace"
    assert phase(True, 100.0, 3700.5, 5.0, 3600.0) == "expired"


def test_health_degrades_only_after_the_grace_period() -> None:
    assert link_health("ok", (), "grace", 7200.0) == ("ok", ())
    state, reasons = link_health("ok", (), "expired", 3 * 86_400.0)
    assert state == "degraded" and "72.0 h" in reasons[-1]
    assert link_health("failing", ("x",), "expired", 1.0)[0] == "failing"


def key(kid: str, verify_until: float = 0.0) -> FleetKey:
    return FleetKey(kid, b"s" * 32, 0.0, 0.0, verify_until)


def test_keys_usable_until_their_verification_ends_and_none_after_grace_with_stop() -> None:
    keys = (key("k1", 50.0), key("k2"))
    assert usable_keys(keys, 10.0, "connected", "degrade") == {"k1": b"s" * 32, "k2": b"s" * 32}
    assert set(usable_keys(keys, 60.0, "grace", "degrade")) == {"k2"}
    assert set(usable_keys(keys, 60.0, "expired", "degrade")) == {"k2"}
    assert usable_keys(keys, 60.0, "expired", "stop") == {}


def test_peer_urls_are_signed_by_the_fleets_rule_after_its_clock_was_set_back() -> None:
    """Keys made while the fleet's clock ran ahead activate later than now: they sign anyway,
    as the fleet signs player URLs with them (fleet/keys.py signers), so peer sources are
    never left unsigned while a key exists."""
    ahead = FleetKey("k1", b"s" * 32, 7200.0, 0.0, 0.0)
    assert signing_key((ahead,), 0.0) == ahead
    # Replaced at once by a key on the right schedule: the old one signs until its retirement.
    retiring = FleetKey("k1", b"s" * 32, 7200.0, 60.0, 0.0)
    successor = FleetKey("k2", b"t" * 32, 60.0, 0.0, 0.0)
    assert signing_key((retiring, successor), 30.0) == retiring
    assert signing_key((retiring, successor), 60.0) == successor
    assert signing_key((), 0.0) is None


def test_a_key_set_is_checked_whole() -> None:
    check_keys((key("k1"), key("k2")))
    for bad in [(), (key("k1"), key("k1")), (key("k 1"),), (FleetKey("k", b"x", 0, 0, 0),)]:
        with pytest.raises(ValueError):
            check_keys(bad)
    ks = fleet_pb2.KeySet(version=4, keys=[fleet_pb2.Key(id="k1", secret=b"s" * 32)])
    got = keys_from_proto(ks)
    assert got.version == 4 and got.payload == (key("k1"),)


def test_how_long_a_key_is_sure_to_verify_comes_from_the_fleet() -> None:
    """Retired: its verify_until. Still signing: the fleet may retire it now, and it verifies
    `verify_for_s` after that. A key set from a fleet that does not say: None."""
    ks = fleet_pb2.KeySet(version=2, keys=[fleet_pb2.Key(id="k1", secret=b"s" * 32,
                                                         verify_for_s=14_460.0)])  # fmt: skip
    signing = keys_from_proto(ks).payload[0]
    assert signing.verify_for_s == 14_460.0
    assert verified_until(signing, 1000.0) == 15_460.0
    assert verified_until(FleetKey("k0", b"s" * 32, 0.0, 900.0, 2000.0, 1100.0), 1000.0) == 2000.0
    # During a rotation's lead it retires later than now: from then.
    assert verified_until(FleetKey("k", b"s" * 32, 0.0, 1060.0, 0.0, 100.0), 1000.0) == 1160.0
    assert verified_until(key("k1"), 1000.0) is None


def proto_plan(*sources: str) -> fleet_pb2.Plan:
    return fleet_pb2.Plan(
        version=7,
        site="home",
        fill_window="02:00-06:00",
        timezone="Europe/Berlin",
        titles=[
            fleet_pb2.PlannedTitle(title_id="film", digest=SHA, size_bytes=10, sources=sources),
            fleet_pb2.PlannedTitle(title_id="show", digest="", size_bytes=5, sources=sources),
        ],
    )


def test_a_fleet_plan_becomes_the_fill_plan_format() -> None:
    doc = plan_document(proto_plan("http://10.0.0.2:8081", "http://origin:8080"))
    check_plan(doc)
    plan = to_fill_plan(doc)
    assert plan.window == "02:00-06:00" and plan.timezone == "Europe/Berlin"
    assert plan.cap_bps is None and plan.prune
    assert plan.titles[0] == PlannedTitle(
        id="film", digest=SHA, sources=("http://10.0.0.2:8081", "http://origin:8080"), size=10
    )
    assert plan.titles[1].digest is None  # no usable digest: whatever the source has


def test_one_bad_part_rejects_the_whole_plan() -> None:
    with pytest.raises(ValueError):
        check_plan(plan_document(proto_plan("ftp://nope")))
    bad_window = plan_document(proto_plan("http://o:1"))
    bad_window["window"] = "25:00-26:00"
    with pytest.raises(ValueError):
        check_plan(bad_window)


def test_fill_progress_counts_titles_held_with_the_planned_digest() -> None:
    plan = FillPlan(
        titles=(
            PlannedTitle(id="a", digest=SHA, sources=("http://o:1",)),
            PlannedTitle(id="b", sources=("http://o:1",)),
            PlannedTitle(id="c", digest=SHA, sources=("http://o:1",)),
        )
    )
    held = {"a": SHA, "b": "x", "c": "b" * 64}
    assert fill_progress(plan, {"a": 10, "b": 20, "c": 40}, held) == (30, 70)
    assert fill_progress(None, {}, held) == (0, 0)


def test_a_batch_the_fleet_would_refuse_is_split_over_beats_most_watched_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a long outage the counts may list more titles than the fleet takes in one batch
    (codec.MAX_COUNT_ENTRIES): a whole batch was refused, and resent, forever."""
    import appliance.fleetlink_core as core

    monkeypatch.setattr(core, "MAX_COUNT_ENTRIES", 3)
    ledger = CountLedger()
    ledger.acknowledge(ledger.next_batch().sequence)
    ledger.observe({f"t{i}": (1, 1000 * i) for i in range(1, 6)})
    first = ledger.next_batch()
    assert set(first.counts) == {"t5", "t4", "t3"}
    unpack_counts(build_beat("h1", first, figures()).counts_zstd, max_entries=3)
    ledger.acknowledge(first.sequence)
    assert set(ledger.next_batch().counts) == {"t2", "t1"}

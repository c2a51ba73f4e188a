"""Plans an appliance can fill: its disks' other data, its high watermark and files.json
count against the room the planner fills, and a title it found no room for goes elsewhere.

Sizes are the reviewer's: a test title of 699,717 bytes (the origin's total_bytes) that takes
702,226 on an appliance once its files.json is stored too.
"""

from __future__ import annotations

from edgeflix.proto.gen import fleet_pb2
from fleet.grpc_api import beat_from_proto
from fleet.model import Appliance, HeldTitle, Site, TierSpace
from fleet.planner import plan
from fleet.plans import CatalogTitle, FillPlan, PlannerPolicy
from fleet.registry import ApplianceRecord, build_snapshot

SIZE, STORED = 699_717, 702_226  # catalog size; what the appliance stores (files.json too)
POLICY = PlannerPolicy()  # the defaults: fill_ratio 0.98


def catalog(n: int) -> dict[str, CatalogTitle]:
    return {f"t{i}": CatalogTitle(SIZE, digest=f"{i:064x}") for i in range(n)}


def titles(p: FillPlan, name: str) -> list[str]:
    part = p.for_appliance(name)
    assert part is not None
    return [t.title_id for t in part.titles]


def planned_bytes(p: FillPlan, name: str) -> int:
    part = p.for_appliance(name)
    assert part is not None
    return part.planned_bytes


def held(cat: dict[str, CatalogTitle], *ids: str, tier: str = "hdd") -> dict[str, HeldTitle]:
    return {t: HeldTitle(cat[t].digest, True, STORED, tier) for t in ids}


# -- 1: other data on the disk -------------------------------------------------------------


def test_other_data_on_the_disk_is_no_room_for_titles() -> None:
    # A 3 MB disk without max_bytes, half full of a foreign file, the appliance's only one.
    cat = catalog(4)
    disk = TierSpace("hdd", 3_000_000, used_bytes=1_500_000)
    box = Appliance("a1", "home", "http://a1", tiers=(disk,))
    p = plan((box,), dict.fromkeys(cat, 1.0), cat, policy=POLICY)
    # Was 4 titles (2.8 MB): only the 1.44 MB beside the foreign file is room.
    assert planned_bytes(p, "a1") <= 3_000_000 * 0.98 - 1_500_000
    assert titles(p, "a1") == ["t0", "t1"]


def test_the_used_bytes_a_beat_reports_reach_the_planner() -> None:
    # The same box as its heartbeat says it: used_bytes was read off the wire, then dropped.
    cat = catalog(4)
    req = fleet_pb2.HeartbeatRequest(
        appliance="a1",
        sequence=1,
        health=fleet_pb2.HEALTH_OK,
        capacity_bps=1e9,
        tiers=[fleet_pb2.TierSpace(tier="hdd", capacity_bytes=3_000_000, used_bytes=1_500_000)],
    )
    beat = beat_from_proto(req, now=100.0)
    record = ApplianceRecord("a1", "home", "http://a1", b"k" * 32, 0.0)
    snap = build_snapshot(
        (Site.build("home", ["10.0.0.0/8"]),), {"a1": record}, {"a1": beat}, 100.0, 5.0, 3, ""
    )
    p = plan(snap.appliances, dict.fromkeys(cat, 1.0), cat, policy=POLICY)
    assert len(titles(p, "a1")) == 2  # was 4: 2.8 MB on a disk with 1.5 MB free


def test_titles_it_holds_are_counted_once_not_evicted() -> None:
    # It holds t0 and t1 (in its used bytes, with 500 kB of other data): both stay, and the
    # room left beside them takes one more title, not none and not two.
    cat = catalog(4)
    used = 2 * STORED + 500_000
    disk = TierSpace("hdd", 3_000_000, used_bytes=used)
    box = Appliance("a1", "home", "http://a1", tiers=(disk,), titles=held(cat, "t0", "t1"))
    p = plan((box,), dict.fromkeys(cat, 1.0), cat, policy=POLICY)
    assert titles(p, "a1")[:2] == ["t0", "t1"]
    assert len(titles(p, "a1")) == 3  # 3 * 702,226 + 500,000 <= 2,940,000 < 4 * ...


def test_a_new_title_waits_for_the_prune_of_the_one_it_replaces() -> None:
    # A full box holding a cold title; a hot one arrives. The appliance deletes what its plan
    # drops only once the plan's titles are in: the hot title would not fit beside the cold
    # one, fail, and keep the cold one from ever going. So: drop now, fetch next round.
    cat = catalog(2)
    disk = TierSpace("hdd", 1_000_000, used_bytes=STORED + 50_000)
    box = Appliance("a1", "home", "http://a1", tiers=(disk,), titles=held(cat, "t0"))
    demand = {"t0": 1.0, "t1": 50.0}
    first = plan((box,), demand, cat, policy=POLICY)
    assert titles(first, "a1") == []  # t0 dropped, t1 not yet: it has no room
    again = plan((box,), demand, cat, first, POLICY)
    assert again.version == first.version  # stable until the appliance prunes
    pruned = Appliance("a1", "home", "http://a1", tiers=(TierSpace("hdd", 1_000_000, 50_000),))
    after = plan((pruned,), demand, cat, again, POLICY)
    assert titles(after, "a1") == ["t1"]


def test_an_appliance_that_reports_no_used_bytes_is_planned_as_before() -> None:
    cat = catalog(4)
    box = Appliance("a1", "home", "http://a1", tiers=(TierSpace("hdd", 3_000_000),))
    p = plan((box,), dict.fromkeys(cat, 1.0), cat, policy=POLICY)
    assert len(titles(p, "a1")) == 4


# -- 2: the appliance's high watermark and files.json --------------------------------------


def test_plans_stop_below_the_appliances_high_watermark() -> None:
    # max_bytes = 2,200,000 and the default high watermark 0.90: it takes 1,980,000 bytes.
    cat = catalog(3)
    disk = TierSpace("hdd", 2_200_000, used_bytes=0, fillable_bytes=1_980_000)
    box = Appliance("a1", "home", "http://a1", tiers=(disk,))
    p = plan((box,), dict.fromkeys(cat, 1.0), cat, policy=POLICY)
    # Was 3 titles (2,099,151 bytes: under 98% of 2.2 MB, over 90%): the third always failed.
    assert len(titles(p, "a1")) == 2
    assert planned_bytes(p, "a1") <= 1_980_000 * POLICY.fill_ratio


def test_a_title_is_planned_at_what_its_holders_store_files_json_included() -> None:
    # b1 has room for two titles at the catalog's size, not at the size they take stored,
    # which a1 (another site) reports for both.
    cat = catalog(2)
    a1 = Appliance(
        "a1", "away", "http://a1", tiers=(TierSpace("hdd", 10**9, 2 * STORED),),
        titles=held(cat, "t0", "t1"),
    )  # fmt: skip
    room = 2 * SIZE + 3_000  # 2 * 699,717 fits; 2 * 702,226 does not
    b1 = Appliance("b1", "home", "http://b1", tiers=(TierSpace("hdd", 10**9, 0, room),))
    p = plan((a1, b1), {"t0": 2.0, "t1": 1.0}, cat, policy=PlannerPolicy(fill_ratio=1.0))
    assert titles(p, "b1") == ["t0"]
    assert titles(p, "a1") == ["t0", "t1"]


# -- 3: a title the appliance found no room for ---------------------------------------------


def test_a_title_an_appliance_had_no_room_for_goes_to_another() -> None:
    cat = catalog(1)
    disks = (TierSpace("hdd", 10**9),)
    boxes = [Appliance(n, "home", f"http://{n}", tiers=disks) for n in ("a1", "a2")]
    policy = PlannerPolicy(replica_load_share=10.0)  # one copy of the title is enough
    first = plan(tuple(boxes), {"t0": 1.0}, cat, policy=policy)
    where = next(n for n in ("a1", "a2") if titles(first, n))
    other = "a2" if where == "a1" else "a1"
    full = [
        Appliance(b.name, b.site, b.url, tiers=disks, no_room=frozenset({"t0"}))
        if b.name == where
        else b
        for b in boxes
    ]
    second = plan(tuple(full), {"t0": 1.0}, cat, first, policy)
    assert titles(second, where) == [] and titles(second, other) == ["t0"]
    # Its next fill no longer tries it, so no longer fails it: the title stays where it is.
    third = plan(tuple(boxes), {"t0": 1.0}, cat, second, policy)
    assert titles(third, other) == ["t0"] and titles(third, where) == []


def test_a_title_it_holds_is_kept_whatever_its_last_fill_said() -> None:
    cat = catalog(1)
    box = Appliance(
        "a1", "home", "http://a1", tiers=(TierSpace("hdd", 10**9),),
        titles=held(cat, "t0"), no_room=frozenset({"t0"}),
    )  # fmt: skip
    assert titles(plan((box,), {"t0": 1.0}, cat, policy=POLICY), "a1") == ["t0"]


# -- a review of these changes ----------------------------------------------------------------

D = "{:064x}".format


def where(p: FillPlan, title: str) -> list[str]:
    return sorted(n for n, a in p.appliances.items() if any(t.title_id == title for t in a.titles))


def test_a_title_that_fits_only_after_a_prune_goes_to_a_peer_with_room_now() -> None:
    """`a` holds x (60 of 100): the hot y (50) would fit there only once x is pruned, and `b`
    has room now. Before, y was placed on `a`, then left out there, so it went nowhere and x
    was moved to `b`, fetched from the origin for nothing."""
    for other in "bcdefgh":  # whichever name the rendezvous favours
        cat = {"x": CatalogTitle(60, D(1)), "y": CatalogTitle(50, D(2))}
        demand = {"y": 1.0, "x": 0.5}
        for i in range(6):  # small titles, so y's share asks for one copy
            cat[f"z{i}"], demand[f"z{i}"] = CatalogTitle(1, D(10 + i)), 0.5
        a = Appliance("a", "s", "", tiers=(TierSpace("hdd", 100, 60, fillable_bytes=100),),
                      titles={"x": HeldTitle(D(1), True, 60, "hdd")})  # fmt: skip
        b = Appliance(other, "s", "", tiers=(TierSpace("hdd", 100, 1, fillable_bytes=100),))
        p = plan((a, b), demand, cat)
        assert where(p, "y") == [other] and where(p, "x") == ["a"], other


def test_a_swap_on_a_full_box_drops_first_then_fetches() -> None:
    """w (hot, 80) lost its disk; x (60) is held whole on the one left (100). w cannot be
    fetched beside x: this round x is dropped, the next w is planned; a refill of a partly
    lost title is charged whole (only what is left counts in used bytes)."""
    cat = {"x": CatalogTitle(60, D(1)), "w": CatalogTitle(80, D(2))}
    demand = {"w": 1.0, "x": 0.5}
    held_now = {"x": HeldTitle(D(1), True, 60, "hdd"), "w": HeldTitle(D(2), False, 80, "hdd")}
    box = Appliance("a", "s", "", tiers=(TierSpace("hdd", 100, 60, fillable_bytes=100),),
                    titles=held_now)  # fmt: skip
    assert titles(plan((box,), demand, cat), "a") == []  # x dropped, w not yet
    emptied = Appliance("a", "s", "", tiers=(TierSpace("hdd", 100, 0, fillable_bytes=100),),
                        titles={"w": held_now["w"]})  # fmt: skip
    assert titles(plan((emptied,), demand, cat), "a") == ["w"]


def test_one_appliances_odd_size_report_does_not_price_a_title_out_everywhere() -> None:
    size = 3_000_000_000
    cat = {"x": CatalogTitle(size, D(1))}
    odd = Appliance("odd", "s1", "", tiers=(TierSpace("hdd", 10**13),),
                    titles={"x": HeldTitle(D(1), True, 10**12, "hdd")})  # fmt: skip
    good = Appliance("good", "s2", "", tiers=(TierSpace("hdd", 3_200_000_000),),
                     titles={"x": HeldTitle(D(1), True, size, "hdd")})  # fmt: skip
    p = plan((odd, good), {"x": 1.0}, cat)
    assert where(p, "x") == ["good", "odd"]

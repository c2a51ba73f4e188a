"""FleetService over a real SQLite store with an injected clock: enrolment, liveness,
per-site planning, key rotation on schedule, and what survives a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeflix.proto import auth
from fleet.catalogue import OriginTitle
from fleet.config import FleetConfig, SiteConfig
from fleet.enrolment import JOIN_TOKEN_TTL_S
from fleet.errors import FleetInputError, UnknownNameError
from fleet.model import HeldTitle, TierSpace
from fleet.registry import REPLAY_WINDOW_S, Beat, beat_to_dict
from fleet.service import FleetService
from fleet.store import EnrolmentRefused, Store

GB = 10**9


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def config(tmp_path: Path) -> FleetConfig:
    return FleetConfig.model_validate(
        {
            "server": {"db": str(tmp_path / "fleet.sqlite")},
            "sites": [
                SiteConfig(name="home", prefixes=("192.168.1.0/24",)).model_dump(),
                SiteConfig(name="lab", prefixes=("10.1.0.0/16",)).model_dump(),
            ],
            "heartbeat": {"interval_s": 5.0, "missed_beats": 3},
        }
    )


def service(tmp_path: Path, clock: Clock) -> FleetService:
    counter = iter(range(1, 1000))
    cfg = config(tmp_path)
    entropy = lambda n: bytes([next(counter)]) * n  # noqa: E731
    # One test clock for both: the tests step it to make appliances fall silent.
    return FleetService(cfg, Store(cfg.server.db), clock, entropy, monotonic=clock)


def enrol(svc: FleetService, name: str, site: str) -> None:
    key = auth.public_key(auth.new_private_key())
    svc.enrol(svc.join_token(site), name, f"http://{name}:8081", key)


def beat(
    svc: FleetService,
    name: str,
    seq: int,
    counts: dict[str, int] | None = None,
    url: str = "",
    keys_version: int | None = None,
    boot: bytes = b"",
) -> str:
    b = Beat(
        at=svc.clock(),
        sequence=seq,
        capacity_bps=1e9,
        tiers=(TierSpace("hdd", 10 * GB),),
        titles={"a": HeldTitle("da", True, GB)},
        # Synced, as a real appliance is within a beat, unless the test says otherwise.
        keys_version=svc.keys.version if keys_version is None else keys_version,
        boot=boot,
    )
    return svc.heartbeat(name, b, counts or {}, url)


def test_tokens_are_one_time_site_bound_and_expire(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    tok = svc.join_token("lab")
    key = auth.public_key(auth.new_private_key())
    assert svc.enrol(tok, "l1", "http://l1", key).site == "lab"
    assert svc.enrol(tok, "l1", "http://l1", key).site == "lab"  # a retry: same key, same name
    with pytest.raises(EnrolmentRefused, match="already used"):
        svc.enrol(tok, "l2", "http://l2", auth.public_key(auth.new_private_key()))
    old = svc.join_token("home")
    clock.now += JOIN_TOKEN_TTL_S + 1
    with pytest.raises(EnrolmentRefused, match="expired"):
        svc.enrol(old, "h9", "http://h9", key)
    with pytest.raises(UnknownNameError, match="no site named 'mars'"):
        svc.join_token("mars")


def test_silence_makes_an_appliance_unreachable(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    beat(svc, "h1", 1)
    assert svc.steer("192.168.1.2", "a")[0].candidates[0].name == "h1"
    clock.now += 16  # more than 3 beats of 5 s
    decision, urls = svc.steer("192.168.1.2", "a")
    assert [c.name for c in decision.candidates] == ["origin"]
    assert urls.urls[0].endswith("/titles/a/master.m3u8")
    assert svc.outcomes["in_site"] == 1 and svc.outcomes["origin"] == 1


def test_a_beat_from_a_new_address_moves_steering_there(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    beat(svc, "h1", 1)
    assert svc.steer("192.168.1.2", "a")[1].urls[0].startswith("http://h1:8081/")
    beat(svc, "h1", 2, url="http://192.168.1.40:9000/")
    assert svc.steer("192.168.1.2", "a")[1].urls[0].startswith("http://192.168.1.40:9000/titles/")
    # A bad URL refuses the whole beat: the sequence is not taken, the address stays.
    with pytest.raises(FleetInputError, match="not http"):
        beat(svc, "h1", 3, url="ftp://elsewhere")
    assert svc.beats["h1"].sequence == 2
    # It lasts: a restarted fleet manager steers to the new address.
    again = FleetService(svc.config, Store(svc.config.server.db), clock, monotonic=clock)
    assert again.records["h1"].url == "http://192.168.1.40:9000"


def test_a_sequence_far_ahead_does_not_lock_the_appliance_out(tmp_path: Path) -> None:
    """One beat with sequence 2**62 (a bug, or a forger while it held the key) dropped
    every later real beat of the appliance, which kept beating from where it was."""
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    beat(svc, "h1", 7)
    beat(svc, "h1", 2**62, url="http://192.168.1.66:6666")
    seq, started = 8, clock.now
    while clock.now - started < REPLAY_WINDOW_S + 10:  # beats every 5 s, as h1 would
        clock.now += 5
        beat(svc, "h1", seq, url="http://h1:8081")
        seq += 1
        if svc.beats["h1"].sequence == seq - 1:
            break
    assert svc.beats["h1"].sequence == seq - 1, "the real beats never counted again"
    assert clock.now - started > REPLAY_WINDOW_S  # not before a copy could be replayed
    assert svc.records["h1"].url == "http://h1:8081"
    assert svc.steer("192.168.1.2", "a")[1].urls[0].startswith("http://h1:8081/")


def test_enrolment_refuses_a_url_players_cannot_use(tmp_path: Path) -> None:
    svc = service(tmp_path, Clock())
    key = auth.public_key(auth.new_private_key())
    for bad in ("h1:8081", "http://", "http://h1:99999", "http://h1/titles", "gopher://h1"):
        with pytest.raises(FleetInputError, match="not http"):
            svc.enrol(svc.join_token("home"), "h1", bad, key)
    assert "h1" not in svc.records


def test_a_wildcard_url_is_neither_enrolled_nor_taken_from_a_beat(tmp_path: Path) -> None:
    svc = service(tmp_path, Clock())
    key = auth.public_key(auth.new_private_key())
    with pytest.raises(FleetInputError, match="public_url"):
        svc.enrol(svc.join_token("home"), "h1", "http://0.0.0.0:8081", key)
    enrol(svc, "h1", "home")
    with pytest.raises(FleetInputError, match="public_url"):
        beat(svc, "h1", 1, url="http://[::]:8081")
    assert svc.records["h1"].url == "http://h1:8081" and "h1" not in svc.beats


def test_popularity_survives_a_restart_of_the_manager(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    svc.set_origin_titles([OriginTitle("home-hit", "dh", GB)])  # only known titles count
    beat(svc, "h1", 1, {"home-hit": 50 * GB})
    clock.now += 600
    svc.save_soft_state()
    again = FleetService(svc.config, Store(svc.config.server.db), clock, monotonic=clock)
    assert again.popularity.rates(clock.now, {}) == pytest.approx(
        svc.popularity.rates(clock.now, {})
    )
    assert again.site_popularity["home"].long.at(clock.now)["home-hit"] > 0
    # A damaged value costs the history, not the start.
    again.store.set_meta("popularity", "{not json")
    third = FleetService(svc.config, Store(svc.config.server.db), clock, monotonic=clock)
    assert third.popularity.rates(clock.now, {}) == {}


def test_plans_follow_each_sites_own_demand(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    enrol(svc, "l1", "lab")
    svc.set_origin_titles(
        [OriginTitle(t, "d" + t, 4 * GB) for t in ("a", "home-hit", "lab-hit", "cold")]
    )
    beat(svc, "h1", 1, {"home-hit": 50 * GB})
    beat(svc, "l1", 1, {"lab-hit": 50 * GB})
    p = svc.replan()
    home = [t.title_id for t in p.appliances["h1"].titles]
    lab = [t.title_id for t in p.appliances["l1"].titles]
    assert home[0] == "home-hit" and lab[0] == "lab-hit"
    assert len(home) == 2  # 10 GB at 98 %: two titles of 4 GB


def test_keys_rotate_on_schedule_and_everything_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    assert svc.maybe_rotate_keys() and not svc.maybe_rotate_keys()
    clock.now += 24 * 3600
    assert svc.maybe_rotate_keys()
    enrol(svc, "h1", "home")
    svc.set_drained("h1", True)
    svc.replan()
    again = service(tmp_path, clock)
    assert again.keys == svc.keys
    assert again.records["h1"].drained and again.records["h1"].site == "home"
    assert again.current_plan == svc.current_plan


def test_steering_signs_with_the_new_key_from_the_instant_it_activates(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    enrol(svc, "h1", "home")
    beat(svc, "h1", 1)
    first = svc.keys.keys[0].id

    def signer() -> str:
        return svc.steer("192.168.1.2", "a")[1].urls[0].split("/t/", 1)[1].split(".", 1)[0]

    assert signer() == first
    clock.now += 24 * 3600 - 60  # the next key is handed out 60 s (lead_s) before it signs
    assert svc.maybe_rotate_keys()
    beat(svc, "h1", 2)
    newest = svc.keys.keys[-1]
    assert newest.id != first and newest.activates == clock.now + 60
    assert signer() == first
    clock.now = newest.activates - 0.001
    beat(svc, "h1", 3)
    assert signer() == first
    clock.now = newest.activates
    assert signer() == newest.id


def test_sessions_no_appliance_serves_still_count_as_demand(tmp_path: Path) -> None:
    """Heartbeats only report what appliances hold; steering sees the rest."""
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    svc.set_origin_titles([OriginTitle(t, "d" + t, 4 * GB) for t in ("a", "held", "wanted")])
    beat(svc, "h1", 1, {"held": 2 * GB})
    for _ in range(10):  # ten sessions for a title h1 does not hold: they go to the origin
        assert svc.steer("192.168.1.2", "wanted")[0].outcome == "origin"
    assert svc.steer("10.9.9.9", "wanted")[0].outcome == "origin"  # in no site
    assert svc.steer("10.9.9.9", "a")[0].outcome == "no_site"  # h1 serves it: its beats count
    clock.now += 60
    fleet_wide, home = svc.popularity.long.at(clock.now), svc.site_popularity["home"]
    assert fleet_wide["wanted"] == pytest.approx(11 * 2 * GB, rel=1e-3)
    assert home.long.at(clock.now)["wanted"] == pytest.approx(10 * 2 * GB, rel=1e-3)
    assert "a" not in fleet_wide
    beat(svc, "h1", 2)  # still alive: planned afresh
    p = svc.replan()
    assert p.appliances["h1"].titles[0].title_id == "wanted"  # hottest first


def test_a_restarted_manager_steers_from_the_saved_beats_until_real_ones_come(
    tmp_path: Path,
) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    for name in ("h1", "h2"):
        enrol(svc, name, "home")
        beat(svc, name, 7, boot=b"A" * 16)
    svc.remove("h2")
    svc.save_soft_state()
    clock.now += 3600  # down for an hour
    again = FleetService(svc.config, Store(svc.config.server.db), clock, monotonic=clock)
    assert set(again.beats) == {"h1"}  # a removed appliance is not brought back
    # As received, an hour ago (`fleet ls` shows its age); liveness counts from the restart.
    assert again.beats["h1"] == svc.beats["h1"]
    decision, answer = again.steer("192.168.1.2", "a")
    assert decision.outcome == "in_site" and answer.urls[0].startswith("http://h1:8081/")
    # The usual grace (3 beats of 5 s) for the first real beat, then unreachable as ever.
    clock.now += 16
    assert {a.name: a.state for a in again.snapshot().appliances} == {"h1": "unreachable"}
    # A replay of the saved sequence of its boot is still dropped; a beat after it counts.
    assert beat(again, "h1", 7, {"a": 10}, boot=b"A" * 16) == "repeat"
    assert "a" not in again.popularity.rates(clock.now, {})
    # A lower one, an hour after the saved beat was received, was signed after it (a copy
    # that old fails its signature's time): it counts (registry.accept_beat).
    assert beat(again, "h1", 6, boot=b"A" * 16) == "taken"
    assert beat(again, "h1", 8, boot=b"A" * 16) == "taken"
    assert again.snapshot().appliances[0].state == "ok"


@pytest.mark.parametrize("boot", [b"A" * 16, b""])
def test_an_appliance_restarted_while_the_manager_was_down_is_heard_at_once(
    tmp_path: Path, boot: bytes
) -> None:
    """/tmp/rev_fleet/crash.sh: the manager restored a saved beat with sequence 121; the
    appliance had restarted meanwhile (sequence from 1), and its beats were dropped as
    late, and answered as taken, until its sequence passed 121: `unreachable`, out of
    steering, for up to the 240 s replay window while it said `connected`."""
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    for seq in range(1, 122):
        beat(svc, "h1", seq, boot=boot)
    svc.save_soft_state()
    clock.now += 30
    again = FleetService(svc.config, Store(svc.config.server.db), clock, monotonic=clock)
    new_boot = b"B" * 16 if boot else b""
    for seq in range(1, 6):  # a beat every 5 s from the restarted appliance
        verdict = beat(again, "h1", seq, {"a": 1000} if seq > 1 else None, boot=new_boot)
        assert verdict == "taken", seq
        clock.now += 5
        assert again.snapshot().appliances[0].state == "ok", seq
    assert again.popularity.rates(clock.now, {})["a"] > 0  # its counts were taken


def test_saved_beats_of_another_shape_are_skipped(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    svc.heartbeat("h1", Beat(at=clock.now, sequence=1), {})
    good = beat_to_dict(svc.beats["h1"])
    for raw in (
        '{"h1": {"health": "ok"}}',
        '{"h1": 5}',
        "[1]",
        "{not json",
        json.dumps({"h1": {**good, "titles": ["a"]}}),
        json.dumps({"h1": {**good, "tiers": [1]}}),
        json.dumps({"h1": {**good, "health": "great"}}),
    ):
        svc.store.set_meta("last_beats", raw)
        again = FleetService(svc.config, Store(svc.config.server.db), clock, monotonic=clock)
        assert again.beats == {}


def signed_with(svc: FleetService, client_ip: str = "192.168.1.2") -> list[str]:
    return [u.split("/t/", 1)[1].split(".", 1)[0] for u in svc.steer(client_ip, "a")[1].urls]


def test_an_appliance_without_the_current_key_gets_no_sessions(tmp_path: Path) -> None:
    """Just enrolled, it has not fetched the key set yet: its URLs would all be refused."""
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    enrol(svc, "h1", "home")
    beat(svc, "h1", 1, keys_version=0)
    decision, _ = svc.steer("192.168.1.2", "a")
    assert all(c.name != "h1" for c in decision.candidates)
    assert any(e.startswith("h1: no current URL key") for e in decision.excluded)
    beat(svc, "h1", 2)  # fetched the keys: reports their version
    assert svc.steer("192.168.1.2", "a")[0].candidates[0].name == "h1"


def test_after_an_immediate_rotation_each_appliance_gets_a_key_it_holds(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    for name in ("h1", "h2"):
        enrol(svc, name, "home")
        beat(svc, name, 1)
    old = svc.keys.keys[0]
    svc.rotate_keys(immediate=True)
    new = svc.keys.keys[-1]
    beat(svc, "h1", 2)  # h1 fetched the new set; h2 has not beaten since
    by_name = dict(
        zip(
            [c.name for c in svc.steer("192.168.1.2", "a")[0].candidates],
            signed_with(svc),
            strict=True,
        )
    )
    assert by_name == {"h1": new.id, "h2": old.id}
    # The old key signs for a laggard only within the skew of its retirement, so every
    # token it signs expires inside the old key's verification period; then h2 is left out.
    clock.now += svc.config.key_policy().skew_s
    beat(svc, "h1", 3)
    beat(svc, "h2", 2, keys_version=1)  # still on the old set (its fetch keeps failing)
    decision = svc.steer("192.168.1.2", "a")[0]
    assert [c.name for c in decision.candidates] == ["h1", "origin"]
    assert any(e.startswith("h2: no current URL key") for e in decision.excluded)


def test_a_title_the_origin_withdraws_is_planned_nowhere(tmp_path: Path) -> None:
    """Appliances' titles stand in for the catalogue only until the origin's has been
    read; after that a title it no longer lists (licence ended) leaves every plan."""
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    beat(svc, "h1", 1)  # holds "a"
    assert "a" in svc.catalog()  # origin never read: what appliances hold stands in
    svc.set_origin_titles([OriginTitle(t, "d" + t, GB) for t in ("a", "b")])
    assert [t.title_id for t in svc.replan().appliances["h1"].titles] == ["a", "b"]
    svc.set_origin_titles([OriginTitle("b", "db", GB)])  # "a" withdrawn
    assert [t.title_id for t in svc.replan().appliances["h1"].titles] == ["b"]
    # Nor steered, though h1 holds it until its next fill; nor a title the origin has not
    # listed (its origin URL would 404; one published since is, once the next read lists it).
    with pytest.raises(UnknownNameError, match="withdrawn"):
        svc.steer("192.168.1.2", "a")
    with pytest.raises(UnknownNameError, match="unknown title 'new'"):
        svc.steer("192.168.1.2", "new")
    svc.set_origin_titles([OriginTitle(t, "d" + t, GB) for t in ("b", "new")])
    assert svc.steer("192.168.1.2", "new")[0].candidates[-1].name == "origin"
    # An origin listing nothing (every title removed, or a wrong or fresh store): taken as
    # no withdrawal (appliances are not all pruned, nor every title refused, at once), but
    # what was withdrawn stays so.
    svc.set_origin_titles([])
    assert [t.title_id for t in svc.replan().appliances["h1"].titles] == ["a"]
    with pytest.raises(UnknownNameError, match="withdrawn"):
        svc.steer("192.168.1.2", "a")
    assert svc.steer("192.168.1.2", "b")
    # Published again: steered again.
    svc.set_origin_titles([OriginTitle(t, "d" + t, GB) for t in ("a", "b")])
    assert svc.steer("192.168.1.2", "a")[0].candidates[0].name == "h1"


def test_fill_now_leaves_out_unreachable_appliances(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    for name in ("h1", "h2"):
        enrol(svc, name, "home")
        beat(svc, name, 1)
    clock.now += 60  # both silent for 12 beats
    beat(svc, "h1", 2)
    assert svc.request_fill_now("home") == ["h1"]
    assert svc.take_fill_now("h1") and not svc.take_fill_now("h2")


def test_a_probe_of_steering_counts_neither_outcome_nor_demand(tmp_path: Path) -> None:
    """`fleet steer` asks as an operator: no session follows it."""
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    svc.set_origin_titles([OriginTitle("wanted", "dw", 4 * GB)])
    beat(svc, "h1", 1)
    for _ in range(5):
        assert svc.steer("192.168.1.2", "wanted", count=False)[0].outcome == "origin"
    assert sum(svc.outcomes.values()) == 0
    assert "wanted" not in svc.popularity.long.at(clock.now + 60)


def test_a_sites_new_fill_window_reaches_its_appliances_as_a_new_version(tmp_path: Path) -> None:
    """The window travels in the plan, and appliances only fetch a higher version: a window
    moved in fleet.toml (then a restart) must raise the version, though no title changed."""
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    enrol(svc, "l1", "lab")
    beat(svc, "h1", 1)  # planned once beating (an appliance not heard from is left out)
    beat(svc, "l1", 1)
    svc.set_origin_titles([OriginTitle("a", "da", 4 * GB)])
    first = svc.replan()
    assert svc.replan().version == first.version  # nothing changed: no new version
    moved = FleetConfig.model_validate(
        {**svc.config.model_dump(), "sites": [
            SiteConfig(name="home", prefixes=("192.168.1.0/24",),
                       fill_window="22:00-23:00").model_dump(),
            SiteConfig(name="lab", prefixes=("10.1.0.0/16",)).model_dump(),
        ]}
    )  # fmt: skip
    again = FleetService(moved, Store(moved.server.db), clock, monotonic=clock)
    again.set_origin_titles([OriginTitle("a", "da", 4 * GB)])
    plan = again.replan()
    assert plan.version == first.version + 1
    home = plan.for_appliance("h1")
    assert home is not None and "22:00-23:00" in home.schedule
    restarted = FleetService(moved, Store(moved.server.db), clock, monotonic=clock)
    restarted.set_origin_titles([OriginTitle("a", "da", 4 * GB)])
    assert restarted.replan().version == plan.version  # the stored plan knows its schedule


def test_the_snapshot_steering_reads_knows_each_titles_current_version(tmp_path: Path) -> None:
    svc = service(tmp_path, Clock())
    enrol(svc, "h1", "home")
    assert svc.snapshot().digests == {}
    svc.set_origin_titles([OriginTitle("a", "da", GB), OriginTitle("b", "db", GB)])
    assert svc.snapshot().digests == {"a": "da", "b": "db"}  # at once, not a second later

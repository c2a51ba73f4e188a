"""The fleet link's shell without a fleet: state kept on disk (key 0600, plan and keys written
whole), versions applied whole and never backwards, a restart restoring keys and plan, and
the grace period on an injected clock. Plans and keys go to recording sinks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.config import ApplianceConfig
from appliance.fill.plan import FillPlan
from appliance.fleetlink import FleetLink, LinkSinks
from appliance.fleetlink_figures import BoxHealth, Traffic
from appliance.fleetlink_files import Enrolment
from appliance.fleetlink_keys import (
    DEFAULT_VERIFY_FOR_S,
    FleetKey,
    sign_peer_sources,
    signing_key,
)
from appliance.fleetlink_state import LinkState, LinkStateError
from edgeflix import tokens
from edgeflix.versioning import Versioned

SHA = "c" * 64
ORIGIN = "http://127.0.0.1:8080"


class Sinks:
    def __init__(self) -> None:
        self.plans: list[FillPlan] = []
        self.keys: list[dict[str, bytes]] = []

    def build(self) -> LinkSinks:
        return LinkSinks(
            health=lambda: BoxHealth("ok", (), 1e9),
            traffic=lambda: Traffic({}, 0, 0),
            submit_plan=self.plans.append,
            set_keys=self.keys.append,
        )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(tmp: Path, **fleet: Any) -> ApplianceConfig:
    return ApplianceConfig.model_validate(
        {
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(tmp / "index.sqlite")},
            "fleet": {"url": "127.0.0.1:9", "grace_period_s": 3600.0, **fleet},
        }
    )


def link(
    tmp: Path, sinks: Sinks, clock: Clock, monotonic: Clock | None = None, **fleet: Any
) -> FleetLink:
    """`monotonic`: the clock silence is measured on; the wall clock's readings unless the
    test steps the two apart."""
    return FleetLink(
        config(tmp, **fleet),
        "http://127.0.0.1:8081",
        sinks.build(),
        clock=clock,
        monotonic=monotonic or clock,
    )


def doc(*titles: str, sources: tuple[str, ...] = (ORIGIN,)) -> dict[str, Any]:
    return {
        "titles": [{"id": t, "digest": SHA, "sources": list(sources)} for t in titles],
        "window": "02:00-06:00",
        "timezone": "UTC",
        "cap_bps": None,
        "prune": True,
    }


def keyset(version: int, *ids: str) -> Versioned[tuple[FleetKey, ...]]:
    return Versioned(
        "keys", version, tuple(FleetKey(i, i.encode() * 16, 0.0, 0.0, 0.0) for i in ids)
    )


def test_the_key_pair_is_made_once_and_kept_private(tmp_path: Path) -> None:
    state = LinkState(tmp_path / "fleet")
    key = state.private_key()
    assert len(key) == 32 and state.private_key() == key
    assert (tmp_path / "fleet" / "appliance.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "fleet" / "appliance.key").write_bytes(b"short")
    with pytest.raises(LinkStateError):
        state.private_key()


def test_plans_apply_whole_never_backwards_and_survive_a_restart(tmp_path: Path) -> None:
    sinks, clock = Sinks(), Clock(1000.0)
    first = link(tmp_path, sinks, clock)
    assert first.apply_plan(3, doc("film"), {"film": 10}) == "applied"
    assert first.apply_plan(2, doc("old"), {}) == "stale"
    bad = doc("film", "show")
    bad["titles"][1]["sources"] = ["ftp://nowhere"]
    assert first.apply_plan(4, bad, {}) == "rejected"
    assert [[t.id for t in p.titles] for p in sinks.plans] == [["film"]]
    assert first.state()["plan_version"] == 3
    assert first.apply_keys(keyset(2, "k1")) == "applied"
    assert first.apply_keys(keyset(1, "k0")) == "stale"
    assert sinks.keys[-1] == {"k1": b"k1" * 16}
    assert not list((tmp_path / "fleet").glob(".*.tmp"))  # written whole, nothing left over
    assert (tmp_path / "fleet" / "keys.json").stat().st_mode & 0o777 == 0o600

    again = Sinks()
    later = link(tmp_path, again, clock)
    later.restore()  # what start() does first, before any call to the fleet
    assert [t.id for t in again.plans[0].titles] == ["film"]
    assert again.keys == [{"k1": b"k1" * 16}]
    assert later.state()["plan_version"] == 3 and later.state()["keys_version"] == 2


def grace_link(
    tmp: Path, clock: Clock, monotonic: Clock | None = None, **fleet: Any
) -> tuple[FleetLink, Sinks]:
    sinks = Sinks()
    state = LinkState(tmp / "fleet")
    state.save_enrolment(Enrolment("appliance", "home", "127.0.0.1:9", "http://x:1", 500, 0.0))
    state.save_contact(clock.now)
    lk = link(tmp, sinks, clock, monotonic, **fleet)
    lk.restore()
    assert lk.apply_plan(1, doc("film"), {"film": 1}) == "applied"
    assert lk.apply_keys(keyset(1, "k1")) == "applied"
    return lk, sinks


def test_a_contact_saved_while_the_clock_was_ahead_counts_from_now(tmp_path: Path) -> None:
    """contact.json from a run whose clock was a month ahead (no RTC; NTP set it right
    since), and the fleet away: the grace period starts now and ends an hour on, not "connected"
    for the month until the clock reaches the saved contact."""
    clock = Clock(10_000.0)
    state = LinkState(tmp_path / "fleet")
    state.save_enrolment(Enrolment("appliance", "home", "127.0.0.1:9", "http://x:1", 500, 0.0))
    state.save_contact(10_000.0 + 30 * 86_400)
    assert state.last_contact(10_000.0) == 10_000.0
    sinks = Sinks()
    lk = link(tmp_path, sinks, clock)
    lk.restore()
    assert lk.state()["phase"] == "connected" and lk.state()["last_contact"] == 10_000.0
    clock.now += 60.0
    lk.check_grace()
    assert lk.state()["phase"] == "grace"
    clock.now += 3600.0
    lk.check_grace()
    assert lk.state()["phase"] == "expired"


def test_a_wall_clock_step_within_a_run_is_no_silence_and_no_contact(tmp_path: Path) -> None:
    """Silence is measured on the monotonic clock: the wall clock jumping a year ahead does
    not end the grace period at once, and stepped back it does not hold it off."""
    wall, steady = Clock(10_000.0), Clock(500.0)
    lk, _ = grace_link(tmp_path, wall, monotonic=steady)
    wall.now += 365 * 86_400.0
    lk.check_grace()
    assert lk.state()["phase"] == "connected"
    wall.now -= 2 * 365 * 86_400.0
    steady.now += 60.0
    lk.check_grace()
    assert lk.state()["phase"] == "grace"
    steady.now += 3600.0
    lk.check_grace()
    assert lk.state()["phase"] == "expired"


@pytest.mark.parametrize("after_grace", ["degrade", "stop"])
def test_the_grace_period_then_degrade_or_stop(tmp_path: Path, after_grace: str) -> None:
    clock = Clock(10_000.0)
    lk, sinks = grace_link(tmp_path, clock, after_grace=after_grace)
    assert lk.state()["phase"] == "connected"
    clock.now += 60.0
    lk.check_grace()
    assert lk.state()["phase"] == "grace" and sinks.keys[-1] == {"k1": b"k1" * 16}
    assert sinks.plans[-1].prune  # nothing changes inside the grace period
    clock.now += 3600.0
    lk.check_grace()
    assert lk.state()["phase"] == "expired"
    if after_grace == "stop":
        assert sinks.keys[-1] == {}
    else:
        assert sinks.keys[-1] == {"k1": b"k1" * 16}
        assert not sinks.plans[-1].prune  # a stale plan deletes nothing


def test_peer_sources_carry_a_token_the_peer_accepts_the_origin_none() -> None:
    keys = (FleetKey("k1", b"s" * 32, 0.0, 0.0, 0.0),)
    signed = sign_peer_sources(doc("film", sources=("http://peer:1", ORIGIN)), keys, 100.0, 60.0)
    peer, origin = signed["titles"][0]["sources"]
    assert origin == ORIGIN and peer.startswith("http://peer:1/t/")
    token = peer.split("/t/", 1)[1]
    claims = tokens.verify(
        token, title_id="film", client_ip=None, keys={"k1": b"s" * 32}, now=150.0
    )
    assert claims.key_id == "k1"
    with pytest.raises(tokens.TokenError):
        tokens.verify(token, title_id="film", client_ip=None, keys={"k1": b"s" * 32}, now=200.0)
    alone = sign_peer_sources(doc("film"), keys, 100.0, 60.0)
    assert alone["titles"][0]["sources"] == [ORIGIN]


def peer_key(plan: FillPlan) -> str:
    """The key id in the first title's peer URL (a token is `<key id>.<expiry>...`)."""
    return plan.titles[0].sources[0].split("/t/", 1)[1].split(".", 1)[0]


def test_peer_urls_are_signed_during_a_rotations_lead_and_again_once_it_signs(
    tmp_path: Path,
) -> None:
    clock = Clock(10_000.0)
    lk, sinks = grace_link(tmp_path, clock)
    # The daily rotation: k1 retires at 10_060, where k2 starts to sign (60 s of lead).
    rotating = Versioned(
        "keys",
        2,
        (
            FleetKey("k1", b"k1" * 16, 0.0, 10_060.0, 30_000.0),
            FleetKey("k2", b"k2" * 16, 10_060.0, 0.0, 0.0),
        ),
    )
    assert lk.apply_keys(rotating) == "applied"
    assert lk.apply_plan(2, doc("film", sources=("http://peer:1", ORIGIN)), {}) == "applied"
    assert peer_key(sinks.plans[-1]) == "k1"  # signed in the lead, not left bare
    submitted = len(sinks.plans)
    clock.now = 10_030.0
    lk.check_grace()
    assert len(sinks.plans) == submitted  # nothing changed: not handed over again
    clock.now = 10_060.0
    lk.check_grace()
    # k1's tokens verify only until 30_000: the plan is handed over signed with k2.
    assert len(sinks.plans) == submitted + 1 and peer_key(sinks.plans[-1]) == "k2"


def test_after_enrolling_again_the_fleets_versions_are_taken_as_they_are(
    tmp_path: Path,
) -> None:
    """A fleet whose database was reset starts its versions again: its key set 1 is not
    the cached key set 1, and must replace it. The old set's key is not the new fleet's
    to revoke: it verifies (never signs) as long as a key retired now would, so URLs
    signed before the reset work until they expire."""
    clock = Clock(10_000.0)
    lk, sinks = grace_link(tmp_path, clock)  # runs key set 1 ("k1") and plan 1
    assert lk.apply_keys(keyset(1, "k1-new")) == "rejected"  # same version, other content
    assert lk.apply_keys(keyset(1, "k1-new"), rebase=True) == "applied"
    assert sinks.keys[-1] == {"k1-new": b"k1-new" * 16, "k1": b"k1" * 16}
    held = LinkState(tmp_path / "fleet").keys()  # as `appliance sign` reads them
    assert held is not None and {k.id for k in held.payload} == {"k1-new", "k1"}
    signer = signing_key(held.payload, clock.now)
    assert signer is not None and signer.id == "k1-new"  # the old one signs nothing more
    clock.now += DEFAULT_VERIFY_FOR_S + 1
    lk.check_grace()
    assert sinks.keys[-1] == {"k1-new": b"k1-new" * 16}
    assert lk.apply_plan(1, doc("other"), {}, rebase=True) == "applied"
    assert [t.id for t in sinks.plans[-1].titles] == ["other"]

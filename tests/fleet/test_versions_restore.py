"""A fleet database restored from a backup must never hand out one version number twice with
different content (issue 6: "control-plane changes reach appliances whole and in order"),
and the URL-token keys must keep verifying for the longest TTL ever signed with them,
whatever the config says today. Reproduced against real processes in /tmp/rev_fleet
(restore.sh, ttl.sh); here over FleetService, a real SQLite store and an injected clock."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from edgeflix.versioning import Versioned, receive
from fleet.catalogue import OriginTitle
from fleet.config import FleetConfig
from fleet.keys import KeyPolicy, KeySet, rotate, verification_keys
from fleet.model import HeldTitle, TierSpace
from fleet.registry import Beat
from fleet.service import FleetService
from fleet.store import Store
from tests.fleet.test_service import GB, Clock, enrol, service


def restore(svc: FleetService, backup: Path, clock: Clock) -> FleetService:
    """A manager started on `backup` (what restore.sh does with `cp backup.sqlite`)."""
    server = svc.config.server.model_copy(update={"db": str(backup)})
    cfg = svc.config.model_copy(update={"server": server})
    return FleetService(cfg, Store(backup), clock, monotonic=clock)


def take_backup(svc: FleetService, tmp_path: Path) -> Path:
    backup = tmp_path / "backup" / "fleet.sqlite"
    backup.parent.mkdir()
    with sqlite3.connect(backup) as copy:
        svc.store.conn.backup(copy)
    return backup


def beat_of(svc: FleetService, seq: int, keys: tuple[int, bytes], plan: tuple[int, bytes]) -> Beat:
    """A beat of an appliance running key set `keys` and plan `plan` (version, digest)."""
    return Beat(
        at=svc.clock(),
        sequence=seq,
        capacity_bps=1e9,
        tiers=(TierSpace("hdd", 10 * GB),),
        titles={"a": HeldTitle("da", True, GB)},
        keys_version=keys[0],
        keys_digest=keys[1],
        plan_version=plan[0],
        plan_digest=plan[1],
    )


def test_a_rotation_after_a_restore_never_reuses_the_version_an_appliance_runs(
    tmp_path: Path,
) -> None:
    """restore.sh: backup at key version 13, the scheduled rotation makes 14 (applied by the
    appliance), the backup is restored and its overdue rotation makes another 14. The
    appliance reported 14 = 14, never fetched, and refused every URL signed with the new
    key until the next rotation (24 h)."""
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    enrol(svc, "h1", "home")
    backup = take_backup(svc, tmp_path)
    clock.now += svc.config.key_policy().rotate_every_s
    assert svc.maybe_rotate_keys()
    runs = (svc.keys.version, svc.keys_digest())  # what h1 fetched and applies
    applied = Versioned("keys", runs[0], tuple(k.id for k in svc.keys.keys))
    svc.heartbeat("h1", beat_of(svc, 1, runs, (0, b"")), {})

    clock.now += 60
    restored = restore(svc, backup, clock)
    assert restored.maybe_rotate_keys()  # overdue: at start-up, before any beat
    assert restored.keys.version == runs[0]  # the same number ...
    assert restored.keys_digest() != runs[1]  # ... for other keys
    # Until h1 reports the key set it runs, the saved beat stands: the shared old key.
    # Its first beat shows the conflict: the manager moves past the number h1 runs.
    restored.heartbeat("h1", beat_of(restored, 2, runs, (0, b"")), {})
    assert restored.keys.version > runs[0]
    # The content is the restored manager's (the key it signs with stays), re-stamped.
    # What h1 does with it: a higher version, applied whole (not refused as a conflict).
    incoming = Versioned("keys", restored.keys.version, tuple(k.id for k in restored.keys.keys))
    assert receive(applied, incoming, lambda _: None).action == "applied"
    # Meanwhile no URL is signed for h1 with a key it may not hold: it is left out.
    decision = restored.steer("192.168.1.2", "a")[0]
    assert "h1" not in [c.name for c in decision.candidates]
    # Once it reports the new set, it is steered to, with the key it now holds.
    now_runs = (restored.keys.version, restored.keys_digest())
    restored.heartbeat("h1", beat_of(restored, 3, now_runs, (0, b"")), {})
    assert restored.steer("192.168.1.2", "a")[0].candidates[0].name == "h1"
    # Kept: a restart of the restored manager does not fall back to the reused number.
    again = restore(restored, backup, clock)
    assert again.keys == restored.keys


def test_an_appliance_back_later_with_a_reused_version_is_moved_past_too(tmp_path: Path) -> None:
    """Learning the highest version at start-up would miss an appliance that was off
    during the restore; the digest of its first beat, however late, is compared."""
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    enrol(svc, "h1", "home")
    enrol(svc, "h2", "home")
    backup = take_backup(svc, tmp_path)
    svc.rotate_keys()
    runs = (svc.keys.version, svc.keys_digest())
    restored = restore(svc, backup, clock)
    for _ in range(5):  # h1 (synced) beats through a day of h2's absence
        restored.heartbeat(
            "h1",
            beat_of(restored, 1, (restored.keys.version, restored.keys_digest()), (0, b"")),
            {},
        )
        clock.now += 3600
    restored.rotate_keys()
    assert restored.keys.version == runs[0] and restored.keys_digest() != runs[1]
    restored.heartbeat("h2", beat_of(restored, 1, runs, (0, b"")), {})
    assert restored.keys.version == runs[0] + 1


def test_a_new_plan_after_a_restore_never_reuses_the_version_an_appliance_runs(
    tmp_path: Path,
) -> None:
    """The fill plan used the same catch-up: a restored database, then a new plan under the
    version the appliance already runs with other titles, which it never fetched."""
    clock = Clock()
    svc = service(tmp_path, clock)
    enrol(svc, "h1", "home")
    svc.set_origin_titles([OriginTitle("a", "da", GB)])
    svc.heartbeat("h1", beat_of(svc, 1, (0, b""), (0, b"")), {})
    first = svc.replan()
    svc.save_soft_state()  # the restored manager plans from h1's saved beat
    backup = take_backup(svc, tmp_path)
    svc.set_origin_titles([OriginTitle("a", "da", GB), OriginTitle("b", "db", GB)])
    second = svc.replan()
    assert second.version == first.version + 1
    runs = (second.version, svc.plan_digest())
    svc.heartbeat("h1", beat_of(svc, 2, (0, b""), runs), {})

    restored = restore(svc, backup, clock)
    restored.set_origin_titles([OriginTitle("a", "da", GB), OriginTitle("c", "dc", GB)])
    reused = restored.replan()
    assert reused.version == runs[0] and restored.plan_digest() != runs[1]
    restored.heartbeat("h1", beat_of(restored, 3, (0, b""), runs), {})
    # Not re-stamped and sent as it is (its titles are the backup's): the next round's
    # plan, made from h1's beat, goes out above the version h1 runs.
    assert restored.current_plan is reused and restored.replan_due
    assert restored.replan().version > runs[0]
    assert restored.current_plan is not None
    # Reporting the plan it now runs (the manager's, by digest) moves nothing.
    version = restored.current_plan.version
    restored.heartbeat("h1", beat_of(restored, 4, (0, b""), (version, restored.plan_digest())), {})
    assert restored.current_plan.version == version


def test_an_appliance_in_step_moves_no_version(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    enrol(svc, "h1", "home")
    for seq in range(1, 4):
        svc.heartbeat("h1", beat_of(svc, seq, (svc.keys.version, svc.keys_digest()), (0, b"")), {})
        # An appliance that sends no digest is taken at its word.
        svc.heartbeat("h1", beat_of(svc, seq + 10, (svc.keys.version, b""), (0, b"")), {})
    assert svc.keys.version == 1


# -- token TTL high-water marks (ttl.sh) ---------------------------------------------------

H = 3600.0


def test_a_retired_key_verifies_for_the_longest_ttl_it_signed_not_todays() -> None:
    long = KeyPolicy(rotate_every_s=24 * H, max_token_ttl_s=600.0, lead_s=60.0, skew_s=5.0)
    short = replace(long, max_token_ttl_s=10.0)
    keys = rotate(KeySet(), 0.0, long, bytes([1]) * 32, immediate=True)
    old = keys.keys[0].id
    keys = rotate(keys, 100.0, short, bytes([2]) * 32, immediate=True)  # TTL lowered
    assert old in verification_keys(keys, 100.0 + 599, short)
    assert old not in verification_keys(keys, 100.0 + 600 + 5, short)
    assert keys.keys[0].verify_until(short) == 100.0 + 600 + 5


def with_ttl(cfg: FleetConfig, ttl: int) -> FleetConfig:
    return cfg.model_copy(update={"steering": cfg.steering.model_copy(update={"token_ttl_s": ttl})})


def test_lowering_the_token_ttl_then_rotating_breaks_no_live_url(tmp_path: Path) -> None:
    """ttl.sh: a URL issued under token_ttl_s = 600, the manager restarted with 10 and the
    key rotated at once: the old key was dropped 15 s later, its URLs 403 for 10 minutes."""
    clock = Clock()
    svc = service(tmp_path, clock)
    cfg = with_ttl(svc.config, 600)
    svc = FleetService(cfg, Store(cfg.server.db), clock, monotonic=clock)
    svc.maybe_rotate_keys()
    signer = svc.keys.keys[-1].id
    svc = FleetService(with_ttl(cfg, 10), Store(cfg.server.db), clock, monotonic=clock)
    svc.rotate_keys(immediate=True)
    retired = clock.now
    for after in (15.0, 300.0, 599.0):
        clock.now = retired + after
        assert signer in svc.verification_keys(), after
    clock.now = retired + 600 + svc.config.key_policy().skew_s + 1
    assert signer not in svc.verification_keys()
    # Stored: a restart with the short TTL still knows how long the old key must verify.
    clock.now = retired + 300
    again = FleetService(with_ttl(cfg, 10), Store(cfg.server.db), clock, monotonic=clock)
    assert signer in again.verification_keys()


def test_raising_the_token_ttl_extends_the_signing_keys_under_a_new_version(
    tmp_path: Path,
) -> None:
    clock = Clock()
    cfg = with_ttl(service(tmp_path, clock).config, 10)
    svc = FleetService(cfg, Store(cfg.server.db), clock, monotonic=clock)
    svc.maybe_rotate_keys()
    version, signer = svc.keys.version, svc.keys.keys[-1].id
    svc = FleetService(with_ttl(cfg, 600), Store(cfg.server.db), clock, monotonic=clock)
    assert svc.keys.version == version + 1  # appliances learn the later verification end
    svc.rotate_keys(immediate=True)
    retired = clock.now
    clock.now = retired + 599
    assert signer in svc.verification_keys()
    # The same config again changes nothing.
    again = FleetService(with_ttl(cfg, 600), Store(cfg.server.db), clock, monotonic=clock)
    assert again.keys == svc.keys

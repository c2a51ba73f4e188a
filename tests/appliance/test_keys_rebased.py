"""A key set the fleet marks rebased (KeySet.rebased): re-stamped above the box's by a manager
restored from a backup. With nothing revoked between the backup and the restore the box
cannot tell that set from a revocation of the keys made after the backup; the mark tells it,
so those keys are carried (they verify until their end, never sign), not refused. A key the
box saw revoked stays refused.

The link on its own, then against a real `edgeflix fleet serve` on loopback whose database
is restored from a backup (tests/appliance/test_keys_restore.py's set-up).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest

from appliance.fleetlink_keys import FleetKey
from edgeflix.versioning import Versioned
from tests.appliance.test_keys_restore import (
    HOUR,
    NOW,
    Fleet,
    Sinks,
    fleet,  # noqa: F401 (a fixture)
    fleet_config,  # noqa: F401 (a fixture)
    fleet_keys,
    key,
    link,
    plays,
    said,
    sync,
)


def test_a_rebased_set_carries_the_keys_it_lacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    sinks, now = Sinks(), NOW
    lk = link(tmp_path, sinks, lambda: now)
    k1, k2, k3 = key("k1"), key("k2", NOW - 60, NOW + 5 * HOUR), key("k3")
    assert lk.apply_keys(Versioned("keys", 1, (k1,))) == "applied"
    assert lk.apply_keys(Versioned("keys", 2, (k1, k2, k3))) == "applied"
    # A restored manager's set, re-stamped above ours: it lacks k2 and k3, made after its
    # backup. Carried (verifying, never signing), not revoked.
    k9 = key("k9")
    assert lk.apply_keys(Versioned("keys", 3, (k1, k9)), rebased=True) == "applied"
    held = sinks.keys[-1]
    assert set(held) == {"k1", "k9", "k2", "k3"}
    assert plays(k2, held, now) and plays(k3, held, now)
    assert said(caplog, "fleet.keys_carried")[-1]["keys"] == "k2 k3"
    assert not said(caplog, "fleet.keys_revoked") and not lk.key_history.revoked
    # k2 until its own end; k3 (no end of its own) as a key retired now.
    carried = {k.id: k for k in lk.key_history.carried}
    assert carried["k2"].verify_until == NOW + 5 * HOUR
    assert carried["k3"].retires == NOW and carried["k3"].verify_until == NOW + HOUR
    # The next set, not rebased (the manager rotated or revoked): a key it drops is revoked.
    assert lk.apply_keys(Versioned("keys", 4, (k9, key("k10")))) == "applied"
    assert "k1" in lk.key_history.revoked and not plays(k1, sinks.keys[-1], now)
    assert plays(k2, sinks.keys[-1], now)  # still carried
    lk.stop()


def test_a_rebased_set_never_brings_back_a_key_revoked_before(tmp_path: Path) -> None:
    sinks, now = Sinks(), NOW
    lk = link(tmp_path, sinks, lambda: now)
    k0, k1 = key("k0"), key("k1")
    assert lk.apply_keys(Versioned("keys", 1, (k0, k1))) == "applied"
    assert lk.apply_keys(Versioned("keys", 2, (k1,))) == "applied"  # k0 revoked
    assert lk.apply_keys(Versioned("keys", 3, (k0, k1))) == "applied"  # a backup's: refused
    assert lk.apply_keys(Versioned("keys", 4, (k1, key("k9"))), rebased=True) == "applied"
    assert "k0" not in {k.id for k in lk.key_history.carried}
    assert not plays(k0, sinks.keys[-1], now) and "k0" in lk.key_history.revoked
    lk.stop()


def test_keys_made_after_the_backup_keep_playing_when_nothing_was_revoked(
    tmp_path: Path,
    fleet: Fleet,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The manager knows the box; backup at {k1}; two rotations (k2, k4), nothing revoked;
    the backup restored. URLs signed with k2 or k4 before the disaster play on."""
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    sinks = Sinks()
    token = fleet.cli("join-token", "--site", "home")["token"]
    lk = link(tmp_path / "a1", sinks, grpc=fleet.server.urls["grpc"], join_token=token)
    try:
        sync(lk, lambda: lk.state()["beats"] >= 2 and lk.keys is not None, "enrolled")
        (k1,) = fleet_keys(lk).values()
        fleet.server.stop()
        db = fleet.config.parent / "db"
        shutil.copytree(db, tmp_path / "backup")
        fleet.restart()
        fleet.cli("keys", "rotate", "--immediate")
        sync(lk, lambda: len(fleet_keys(lk)) == 2, "k2 synced")
        fleet.cli("keys", "rotate", "--immediate")
        sync(lk, lambda: len(fleet_keys(lk)) == 3, "k4 synced")
        k2, k4 = (k for i, k in sorted(fleet_keys(lk).items()) if i != k1.id)
        before = lk.state()["keys_version"]

        fleet.server.stop()
        shutil.rmtree(db)
        shutil.copytree(tmp_path / "backup", db)
        fleet.restart()
        sync(lk, lambda: lk.state()["keys_version"] > before, "the restored manager's keys")
        now = time.time()
        restored: dict[str, FleetKey] = fleet_keys(lk)
        assert k2.id not in restored and k4.id not in restored
        for k in (k1, k2, k4, *restored.values()):
            assert plays(k, sinks.keys[-1], now), k.id
        assert not [r for r in said(caplog, "fleet.keys_revoked") if k2.id in r["keys"]]
        assert said(caplog, "fleet.keys_carried")[-1]["keys"] == f"{k2.id} {k4.id}"

        # The manager's next rotation: a normal set again; the carried keys play on.
        fleet.cli("keys", "rotate", "--immediate")
        sync(lk, lambda: len(fleet_keys(lk)) == len(restored) + 1, "a rotation after")
        now = time.time()
        assert plays(k2, sinks.keys[-1], now) and plays(k4, sinks.keys[-1], now)
    finally:
        lk.stop()

"""Key rotation schedule: lead before signing, overlap after, URLs survive rotations."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from edgeflix.tokens import ExpiredToken, UnknownKey, sign, verify
from fleet.keys import (
    KeyPolicy,
    KeySet,
    key_for,
    revoke,
    rotate,
    rotation_due,
    signers,
    signing_key,
    verification_keys,
)
from fleet.store import Store

H = 3600.0
POLICY = KeyPolicy(rotate_every_s=24 * H, max_token_ttl_s=6 * H, lead_s=60.0, skew_s=60.0)


def secret(n: int) -> bytes:
    return bytes([n]) * 32


def key_id(keys: KeySet, since: int) -> str:
    """The id of the key that key set version `since` added (`k<since>-<tag>`)."""
    (key,) = [k for k in keys.keys if k.since == since]
    assert key.id.startswith(f"k{since}-")
    return key.id


def test_first_key_signs_at_once() -> None:
    keys = rotate(KeySet(), 0.0, POLICY, secret(1))
    assert signing_key(keys, 0.0).id == key_id(keys, 1)  # type: ignore[union-attr]
    assert keys.version == 1
    assert not rotation_due(keys, 23 * H, POLICY)
    assert rotation_due(keys, 24 * H - 60, POLICY)


def test_new_key_is_distributed_before_it_signs() -> None:
    keys = rotate(KeySet(), 0.0, POLICY, secret(1))
    keys = rotate(keys, 24 * H, POLICY, secret(2))
    k1, k2 = key_id(keys, 1), key_id(keys, 2)
    assert set(verification_keys(keys, 24 * H, POLICY)) == {k1, k2}
    assert signing_key(keys, 24 * H + 59).id == k1  # type: ignore[union-attr]
    assert signing_key(keys, 24 * H + 60).id == k2  # type: ignore[union-attr]


def test_urls_signed_before_a_rotation_verify_until_they_expire() -> None:
    keys = rotate(KeySet(), 0.0, POLICY, secret(1))
    issued_at = 24 * H + 59  # the old key's last second
    old = signing_key(keys := rotate(keys, 24 * H, POLICY, secret(2)), issued_at)
    assert old is not None
    token = sign("film", old, expires=int(issued_at + 6 * H))
    for now in (issued_at, issued_at + 3 * H, issued_at + 6 * H):
        verify(
            token,
            title_id="film",
            client_ip=None,
            keys=verification_keys(keys, now, POLICY),
            now=now,
        )
    with pytest.raises(ExpiredToken):
        verify(
            token,
            title_id="film",
            client_ip=None,
            keys=verification_keys(keys, issued_at + 6 * H + 1, POLICY),
            now=issued_at + 6 * H + 1,
        )
    # Once the overlap is over the old key is gone from what appliances get.
    later = 24 * H + 60 + 6 * H + 61
    assert set(verification_keys(keys, later, POLICY)) == {key_id(keys, 2)}
    again = rotate(keys, later, POLICY, secret(3))
    assert [k.id for k in again.keys] == [key_id(keys, 2), key_id(again, 3)]


def test_revoke_drops_a_key_at_once() -> None:
    keys = rotate(rotate(KeySet(), 0.0, POLICY, secret(1)), 24 * H, POLICY, secret(2))
    token = sign("film", signing_key(keys, 1.0), expires=int(5 * H))  # type: ignore[arg-type]
    revoked = revoke(keys, key_id(keys, 1))
    assert revoked.version == keys.version + 1
    with pytest.raises(UnknownKey):
        verify(
            token,
            title_id="film",
            client_ip=None,
            keys=verification_keys(revoked, 2.0, POLICY),
            now=2.0,
        )
    assert revoke(revoked, key_id(keys, 1)) is revoked


def test_immediate_rotation_and_short_secrets() -> None:
    keys = rotate(rotate(KeySet(), 0.0, POLICY, secret(1)), 5.0, POLICY, secret(2), immediate=True)
    assert signing_key(keys, 5.0).id == key_id(keys, 2)  # type: ignore[union-attr]
    with pytest.raises(Exception, match="at least 16 bytes"):
        rotate(keys, 10.0, POLICY, b"short")


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        KeyPolicy(rotate_every_s=10, lead_s=60)


def test_laggards_get_the_key_they_hold_until_the_old_one_retires_plus_skew() -> None:
    keys = rotate(rotate(KeySet(), 0.0, POLICY, secret(1)), 24 * H, POLICY, secret(2))
    k1, k2 = key_id(keys, 1), key_id(keys, 2)

    def ids(now: float, version: int) -> str | None:
        key = key_for(signers(keys, now, POLICY), version)
        return key.id if key else None

    assert [s.key.id for s in signers(keys, 24 * H + 30, POLICY)] == [k1]  # the lead
    assert ids(24 * H + 30, 2) == k1 and ids(24 * H + 30, 0) is None
    assert ids(24 * H + 60, 2) == k2 and ids(24 * H + 60, 1) == k1
    assert ids(24 * H + 60 + 59, 1) == k1
    assert ids(24 * H + 60 + 60, 1) is None and ids(24 * H + 60 + 60, 5) == k2


def test_key_ids_differ_between_fleet_databases() -> None:
    """A reset fleet starts again at version 1: its first key must not share the id of
    the first key an appliance still holds from before."""
    before = rotate(KeySet(), 0.0, POLICY, secret(1))
    after = rotate(KeySet(), 0.0, POLICY, secret(7))
    assert key_id(before, 1) != key_id(after, 1)


def test_a_database_from_before_key_since_gains_it_from_the_key_ids(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE keys (id TEXT PRIMARY KEY, secret BLOB NOT NULL, activates REAL NOT NULL,"
        " retires REAL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('keys_version', '4');"
    )
    conn.executemany(
        "INSERT INTO keys VALUES (?, ?, ?, ?)",
        [("k3", secret(3), 10.0, 20.0), ("k4", secret(4), 20.0, None)],
    )
    conn.commit()
    conn.close()
    store = Store(db)
    keys = store.keyset()
    assert keys.version == 4 and [(k.id, k.since) for k in keys.keys] == [("k3", 3), ("k4", 4)]
    store.close()


def test_two_processes_opening_an_old_database_at_once_both_succeed(tmp_path: Path) -> None:
    """The manager and a CLI command starting together after an upgrade: the WAL switch and
    the migration's lock upgrade fail at once with "database is locked" (SQLite skips its
    busy wait there to avoid a deadlock), so opening retries them for a bounded time."""
    for i in range(10):
        db = tmp_path / f"fleet{i}.sqlite"
        conn = sqlite3.connect(db)
        conn.executescript(
            "CREATE TABLE keys (id TEXT PRIMARY KEY, secret BLOB NOT NULL,"
            " activates REAL NOT NULL, retires REAL);"
            "INSERT INTO keys VALUES ('k1', x'00', 0, NULL);"
        )
        conn.close()
        start = threading.Barrier(2)
        errors: list[str] = []

        def open_it(
            path: Path = db, barrier: threading.Barrier = start, errors: list[str] = errors
        ) -> None:
            barrier.wait()
            try:
                Store(path).close()
            except Exception as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == [], errors
        store = Store(db)
        assert [(k.id, k.since) for k in store.keyset().keys] == [("k1", 1)]
        store.close()

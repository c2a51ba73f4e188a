"""Key rotation schedule: lead before signing, overlap after, URLs survive rotations."""

from __future__ import annotations

import pytest

from edgeflix.tokens import ExpiredToken, UnknownKey, sign, verify
from fleet.keys import (
    KeyPolicy,
    KeySet,
    revoke,
    rotate,
    rotation_due,
    signing_key,
    verification_keys,
)

H = 3600.0
POLICY = KeyPolicy(rotate_every_s=24 * H, max_token_ttl_s=6 * H, lead_s=60.0, skew_s=60.0)


def secret(n: int) -> bytes:
    return bytes([n]) * 32


def test_first_key_signs_at_once() -> None:
    keys = rotate(KeySet(), 0.0, POLICY, secret(1))
    assert signing_key(keys, 0.0) is not None and signing_key(keys, 0.0).id == "k1"  # type: ignore[union-attr]
    assert keys.version == 1
    assert not rotation_due(keys, 23 * H, POLICY)
    assert rotation_due(keys, 24 * H - 60, POLICY)


def test_new_key_is_distributed_before_it_signs() -> None:
    keys = rotate(KeySet(), 0.0, POLICY, secret(1))
    keys = rotate(keys, 24 * H, POLICY, secret(2))
    assert set(verification_keys(keys, 24 * H, POLICY)) == {"k1", "k2"}
    assert signing_key(keys, 24 * H + 59).id == "k1"  # type: ignore[union-attr]
    assert signing_key(keys, 24 * H + 60).id == "k2"  # type: ignore[union-attr]


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
    assert set(verification_keys(keys, later, POLICY)) == {"k2"}
    assert [k.id for k in rotate(keys, later, POLICY, secret(3)).keys] == ["k2", "k3"]


def test_revoke_drops_a_key_at_once() -> None:
    keys = rotate(rotate(KeySet(), 0.0, POLICY, secret(1)), 24 * H, POLICY, secret(2))
    token = sign("film", signing_key(keys, 1.0), expires=int(5 * H))  # type: ignore[arg-type]
    revoked = revoke(keys, "k1")
    assert revoked.version == keys.version + 1
    with pytest.raises(UnknownKey):
        verify(
            token,
            title_id="film",
            client_ip=None,
            keys=verification_keys(revoked, 2.0, POLICY),
            now=2.0,
        )
    assert revoke(revoked, "k1") is revoked


def test_immediate_rotation_and_short_secrets() -> None:
    keys = rotate(rotate(KeySet(), 0.0, POLICY, secret(1)), 5.0, POLICY, secret(2), immediate=True)
    assert signing_key(keys, 5.0).id == "k2"  # type: ignore[union-attr]
    with pytest.raises(Exception, match="at least 16 bytes"):
        rotate(keys, 10.0, POLICY, b"short")


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        KeyPolicy(rotate_every_s=10, lead_s=60)

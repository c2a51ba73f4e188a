"""URL-token keys made while the manager's clock was ahead, after it is set right: URLs
are still signed with a key appliances hold (never unsigned while keys exist), and a new
key is made at once rather than when the wrong clock's schedule says."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeflix.tokens import verify
from fleet.keys import KeyPolicy, KeySet, key_for, rotate, rotation_due, signers, signing_key
from tests.fleet.test_service import Clock, beat, enrol, service

H = 3600.0
POLICY = KeyPolicy(rotate_every_s=24 * H, max_token_ttl_s=6 * H, lead_s=60.0, skew_s=60.0)
T = 1.78e9


def secret(n: int) -> bytes:
    return bytes([n]) * 32


def test_a_first_key_made_two_hours_ahead_signs_once_the_clock_is_right() -> None:
    keys = rotate(KeySet(), T + 2 * H, POLICY, secret(1), immediate=True)
    (k1,) = keys.keys
    found = signers(keys, T, POLICY)
    assert [s.key.id for s in found] == [k1.id]
    assert key_for(found, keys.version) is not None
    assert signing_key(keys, T) is not None
    assert rotation_due(keys, T, POLICY)  # its schedule is two hours off: a new key now


def test_the_rotation_after_a_step_back_hands_over_without_a_gap() -> None:
    keys = rotate(KeySet(), T + 2 * H, POLICY, secret(1), immediate=True)
    keys = rotate(keys, T, POLICY, secret(2))
    old, new = keys.keys
    assert not rotation_due(keys, T, POLICY)  # one new key, not one every tick
    assert not rotation_due(keys, T + 23 * H, POLICY)
    assert rotation_due(keys, T + 24 * H, POLICY)
    # During the new key's lead, appliances that hold only the old key get it; after it,
    # the new key signs, and the old one for the skew, for appliances not synced yet.
    lead = signers(keys, T + 30, POLICY)
    assert key_for(lead, old.since).id == old.id  # type: ignore[union-attr]
    after = signers(keys, T + 61, POLICY)
    assert after[0].key.id == new.id
    assert key_for(after, old.since).id == old.id  # type: ignore[union-attr]
    assert [s.key.id for s in signers(keys, T + 200, POLICY)] == [new.id]


@given(
    st.lists(st.floats(-3 * 365 * 24 * H, 3 * 365 * 24 * H), min_size=1, max_size=8),
    st.floats(-3 * 365 * 24 * H, 3 * 365 * 24 * H),
)
def test_keys_exist_so_urls_are_signed_whatever_the_clock_did(
    made_at: list[float], read_at: float
) -> None:
    """Rotating on schedule at each of the clock readings (in any order), the URLs signed
    at any later reading carry a key the newest key set holds."""
    keys = KeySet()
    for i, at in enumerate(made_at):
        if rotation_due(keys, T + at, POLICY):
            keys = rotate(keys, T + at, POLICY, secret(i + 1), immediate=not keys.keys)
    found = signers(keys, T + read_at, POLICY)
    assert key_for(found, keys.version) is not None


def test_steering_signs_urls_after_the_clock_is_corrected(tmp_path: Path) -> None:
    """The reviewer's case through the service: first started 2 h ahead, NTP corrects it."""
    clock = Clock()
    real = clock.now
    clock.now = real + 2 * H
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    enrol(svc, "h1", "home")
    beat(svc, "h1", 1)
    clock.now = real
    beat(svc, "h1", 2)
    _, urls = svc.steer("192.168.1.7", "a")
    first = urls.urls[0]
    assert first.startswith("http://h1:8081/t/"), first
    token = first.split("/t/", 1)[1].split("/", 1)[0]
    verify(token, title_id="a", client_ip=None, keys=svc.verification_keys(), now=clock.now)
    assert svc.maybe_rotate_keys()
    assert not svc.maybe_rotate_keys()
    _, urls = svc.steer("192.168.1.7", "a")
    assert urls.urls[0].startswith("http://h1:8081/t/")


@pytest.mark.parametrize("step_h", [2.0, 24.0 * 365 * 3])
def test_a_key_made_ahead_is_replaced_at_once(tmp_path: Path, step_h: float) -> None:
    clock = Clock()
    real = clock.now
    clock.now = real + step_h * H
    svc = service(tmp_path, clock)
    svc.maybe_rotate_keys()
    clock.now = real
    assert svc.maybe_rotate_keys()
    newest = max(svc.keys.keys, key=lambda k: k.since)
    assert newest.activates == real + POLICY.lead_s

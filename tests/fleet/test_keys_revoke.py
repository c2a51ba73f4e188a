"""Revoking a leaked URL-token key (fleet/keys.py revoke_now, FleetService.revoke_key,
`POST /keys/{id}/revoke`): gone from the next key set at once, unlike a rotation; when it
signed, a new key signs from now; an unknown id is a 404 and one line on the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.errors import UnknownNameError
from fleet.keys import KeySet, is_key_id, revoke_now, rotate, signers, verification_keys
from tests.conftest import run_cli
from tests.fleet.test_http import get, service
from tests.fleet.test_keys import POLICY, H, key_id, secret


def two_keys() -> KeySet:
    """k1 signed for a day, k2 rotated in: signing after its lead (k1 still verifying)."""
    return rotate(rotate(KeySet(), 0.0, POLICY, secret(1)), 24 * H, POLICY, secret(2))


def test_revoking_the_signing_key_makes_a_new_one_sign_now() -> None:
    keys = two_keys()
    now = 25 * H  # k2 signs, k1 retired an hour ago and verifies its tokens until 6 h on
    k1, k2 = key_id(keys, 1), key_id(keys, 2)
    assert signers(keys, now, POLICY)[0].key.id == k2
    out = revoke_now(keys, k2, now, POLICY, secret(3))
    assert out is not None and out.version > keys.version
    assert k2 not in {k.id for k in out.keys} and k2 not in verification_keys(out, now, POLICY)
    best = signers(out, now, POLICY)[0]
    assert best.key.id not in (k1, k2) and best.since == out.version  # new, signing now
    assert k1 in verification_keys(out, now, POLICY)  # not leaked: its URLs still verify


def test_revoking_a_retired_key_keeps_the_signing_one() -> None:
    keys = two_keys()
    now = 25 * H
    out = revoke_now(keys, key_id(keys, 1), now, POLICY, secret(3))
    assert out is not None and out.version == keys.version + 1
    assert [k.id for k in out.keys] == [key_id(keys, 2)]


def test_revoking_the_signer_during_a_rotations_lead() -> None:
    """k2 is handed out but does not sign yet: k1 signs, and revoking it makes a key sign
    now rather than leaving k1's retired predecessor or nothing to sign."""
    keys = two_keys()
    now = 24 * H + 10  # inside k2's 60 s lead
    k1 = key_id(keys, 1)
    assert signers(keys, now, POLICY)[0].key.id == k1
    out = revoke_now(keys, k1, now, POLICY, secret(3))
    assert out is not None
    assert signers(out, now, POLICY)[0].key.id == key_id(out, out.version)


def test_revoking_the_only_key_and_an_unknown_one() -> None:
    keys = rotate(KeySet(), 0.0, POLICY, secret(1))
    out = revoke_now(keys, key_id(keys, 1), 5.0, POLICY, secret(2))
    assert out is not None and [k.id for k in out.keys] == [key_id(out, out.version)]
    assert revoke_now(keys, "k9-nothere", 5.0, POLICY, secret(2)) is None
    assert is_key_id(key_id(keys, 1)) and not is_key_id("a/b") and not is_key_id("x" * 33)


def test_the_service_and_its_route(tmp_path: Path) -> None:
    svc = service(tmp_path)
    first = svc.keys.keys[0].id
    status, _, body = get(svc, f"/keys/{first}/revoke", method="POST")
    out = json.loads(body)
    assert status == 200 and out["revoked"] == first and first not in out["keys"]
    assert out["version"] == svc.keys.version == svc.store.keyset().version  # stored
    # Appliances holding only the revoked key are left out until they fetch the new set.
    decision, urls = svc.steer("192.168.1.7", "film")
    assert [c.name for c in decision.candidates] == ["origin"]
    assert first not in "".join(urls.urls)
    status, _, body = get(svc, f"/keys/{first}/revoke", method="POST")
    assert status == 404 and f"no key '{first}'" in json.loads(body)["error"]
    with pytest.raises(UnknownNameError):
        svc.revoke_key("")
    # Admin-only, as every route but /steer and the probes.
    assert get(svc, f"/keys/{svc.keys.keys[0].id}/revoke", "POST", client="10.0.0.9")[0] == 401


def test_the_cli_says_an_unknown_or_invalid_id_in_one_line() -> None:
    # No manager needed to refuse an id no key can have; then one that is unreachable.
    proc = run_cli(["fleet", "keys", "revoke", "a/b", "--fleet", "http://127.0.0.1:9"])
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0
    assert "no key 'a/b' (not a valid key id)" in proc.stderr
    help_text = run_cli(["fleet", "keys", "rotate", "--help"], check=True).stdout
    assert "not revocation" in " ".join(help_text.split())

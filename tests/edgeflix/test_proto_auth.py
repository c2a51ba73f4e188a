"""Call signing (edgeflix/proto/auth.py): one name decides the key, the signature and the
caller; a repeated signing header is refused."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeflix.proto import auth

NOW = 1000.0


def _keys(**named: bytes) -> dict[str, bytes]:
    return {name: auth.public_key(private) for name, private in named.items()}


def test_a_signed_call_verifies_and_tampering_is_refused() -> None:
    key = auth.new_private_key()
    keys = _keys(h1=key)
    md = auth.sign_call("h1", key, "/x/Heartbeat", b"body", now=NOW)
    assert auth.verify_call(md, keys.get, "/x/Heartbeat", b"body", now=NOW + 10) == "h1"
    for method, body, now in (
        ("/x/Heartbeat", b"other", NOW),
        ("/x/GetKeys", b"body", NOW),
    ):
        with pytest.raises(auth.AuthError, match="does not match"):
            auth.verify_call(md, keys.get, method, body, now=now)
    with pytest.raises(auth.AuthError, match="too far"):
        auth.verify_call(md, keys.get, "/x/Heartbeat", b"body", now=NOW + 1000)
    with pytest.raises(auth.AuthError, match="does not match"):
        auth.verify_call(md, _keys(h1=auth.new_private_key()).get, "/x/Heartbeat", b"body", NOW)
    with pytest.raises(auth.AuthError, match="not signed"):
        auth.verify_call(md[:1], keys.get, "/x/Heartbeat", b"body", now=NOW)
    with pytest.raises(auth.AuthError, match="not enrolled"):
        auth.verify_call(md, {}.get, "/x/Heartbeat", b"body", now=NOW)


def test_a_call_signed_with_one_key_over_another_name_is_refused() -> None:
    """The reviewer's impersonation: `evil` sends the name header twice (its own first,
    the victim's last), signed with its own key over the victim's name."""
    evil, victim = auth.new_private_key(), auth.new_private_key()
    keys = _keys(evil=evil, a1=victim)
    signed = dict(auth.sign_call("a1", evil, "/x/Heartbeat", b"body", now=NOW))
    for names in (("evil", "a1"), ("a1", "evil"), ("a1", "a1")):
        md = [(auth.NAME, n) for n in names] + [
            (auth.TIME, signed[auth.TIME]),
            (auth.SIGNATURE, signed[auth.SIGNATURE]),
        ]
        with pytest.raises(auth.AuthError, match="more than once"):
            auth.verify_call(md, keys.get, "/x/Heartbeat", b"body", now=NOW)
    # One name header only: the victim's name is checked against the victim's key.
    single = [
        (auth.NAME, "a1"),
        (auth.TIME, signed[auth.TIME]),
        (auth.SIGNATURE, signed[auth.SIGNATURE]),
    ]
    with pytest.raises(auth.AuthError, match="does not match"):
        auth.verify_call(single, keys.get, "/x/Heartbeat", b"body", now=NOW)


@pytest.mark.parametrize("header", [auth.TIME, auth.SIGNATURE])
def test_any_repeated_signing_header_is_refused(header: str) -> None:
    key = auth.new_private_key()
    md = list(auth.sign_call("h1", key, "/x/GetPlan", b"", now=NOW))
    md.append((header, dict(md)[header]))  # even the same value twice
    with pytest.raises(auth.AuthError, match="more than once"):
        auth.verify_call(md, _keys(h1=key).get, "/x/GetPlan", b"", now=NOW)


@pytest.mark.parametrize("at", ["nan", "inf", "-inf"])
def test_a_time_that_is_no_instant_is_refused(at: str) -> None:
    """A NaN time compared with the skew is never "too far": signed once, valid for ever."""
    key = auth.new_private_key()
    raw = Ed25519PrivateKey.from_private_bytes(key).sign(auth._message("h1", "/x/K", at, b""))
    md = [(auth.NAME, "h1"), (auth.TIME, at), (auth.SIGNATURE, base64.b64encode(raw).decode())]
    with pytest.raises(auth.AuthError, match="too far"):
        auth.verify_call(md, _keys(h1=key).get, "/x/K", b"", now=NOW)


def test_the_appliance_tells_the_refusals_it_acts_on_apart() -> None:
    """The appliance beats on through a clock skew and enrols again only when not enrolled:
    it reads which from the details of the very errors verify_call raises."""
    key = auth.new_private_key()
    md = auth.sign_call("h1", key, "/x/Heartbeat", b"body", now=NOW)

    def refusal(keys: dict[str, bytes], now: float, body: bytes = b"body") -> str:
        with pytest.raises(auth.AuthError) as caught:
            auth.verify_call(md, keys.get, "/x/Heartbeat", body, now=now)
        return auth.refusal_of(str(caught.value))

    assert refusal(_keys(h1=key), NOW + 1000) == "clock_skew"
    assert refusal({}, NOW) == "unknown"
    assert refusal(_keys(h1=key), NOW, b"tampered") == "other"
    assert refusal(_keys(h1=auth.new_private_key()), NOW) == "other"

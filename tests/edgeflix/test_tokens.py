"""URL tokens: sign and verify are pure; every refusal has its own error."""

from __future__ import annotations

import pytest

from edgeflix import tokens

KEY = tokens.SigningKey("k1", b"0123456789abcdef0123")
KEYS = {"k1": KEY.secret, "k2": b"another-secret-of-20"}
NOW = 1_800_000_000


def check(token: str, title: str = "t1", ip: str | None = "10.0.0.1", now: float = NOW) -> object:
    return tokens.verify(token, title_id=title, client_ip=ip, keys=KEYS, now=now)


def test_round_trip() -> None:
    token = tokens.sign("t1", KEY, NOW + 60)
    claims = check(token)
    assert claims == tokens.TokenClaims("k1", NOW + 60, "t1", None)
    assert all(c.isalnum() or c in "-_." for c in token)


def test_ip_bound_round_trip_and_mapped_v6() -> None:
    token = tokens.sign("t1", KEY, NOW + 60, client_ip="10.0.0.1")
    assert check(token, ip="10.0.0.1")
    assert check(token, ip="::ffff:10.0.0.1")  # dual-stack sockets report this spelling


def test_ip_bound_link_local_ignores_the_zone() -> None:
    """A zone names an interface of one host: the fleet signs for `fe80::1` (or its own zone),
    the appliance's socket reports the peer as `fe80::1%eth0`."""
    token = tokens.sign("t1", KEY, NOW + 60, client_ip="fe80::1%wlan0")
    assert check(token, ip="fe80::1%eth0") and check(token, ip="FE80::1")
    assert tokens.normalise_ip("fe80::1%eth0") == "fe80::1"
    with pytest.raises(tokens.WrongClient):
        check(token, ip="fe80::2%eth0")


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda t: t + "x", tokens.WrongTitle),
        (lambda t: "k9" + t[2:], tokens.UnknownKey),
        (lambda t: t.replace(".any.", ".all."), tokens.MalformedToken),
        (lambda t: "garbage", tokens.MalformedToken),
        (lambda t: t.replace(str(NOW + 60), str(NOW + 6000)), tokens.WrongTitle),
        (lambda t: t.replace(".any.", ".ip.") + ".AAAA", tokens.WrongTitle),  # scope is signed
    ],
)
def test_tampering(mutate: object, error: type[tokens.TokenError]) -> None:
    token = tokens.sign("t1", KEY, NOW + 60)
    with pytest.raises(error):
        check(mutate(token))  # type: ignore[operator]


def test_expired() -> None:
    token = tokens.sign("t1", KEY, NOW + 60)
    assert check(token, now=NOW + 60)
    with pytest.raises(tokens.ExpiredToken):
        check(token, now=NOW + 61)


def test_wrong_title() -> None:
    with pytest.raises(tokens.WrongTitle):
        check(tokens.sign("t1", KEY, NOW + 60), title="t2")


def test_wrong_client() -> None:
    token = tokens.sign("t1", KEY, NOW + 60, client_ip="10.0.0.1")
    with pytest.raises(tokens.WrongClient):
        check(token, ip="10.0.0.2")
    with pytest.raises(tokens.WrongClient):
        check(token, ip=None)


def test_other_key_cannot_forge() -> None:
    forged = tokens.sign("t1", tokens.SigningKey("k1", KEYS["k2"]), NOW + 60)
    with pytest.raises(tokens.WrongTitle):
        check(forged)


def test_weak_keys_refused() -> None:
    with pytest.raises(tokens.TokenError):
        tokens.SigningKey("k1", b"short")
    with pytest.raises(tokens.TokenError):
        tokens.SigningKey("bad id", b"0123456789abcdef")


def test_signed_path() -> None:
    assert tokens.signed_path("TOK", "t1", "master.m3u8") == "/t/TOK/titles/t1/master.m3u8"


def test_title_id_rule_matches_titlefiles() -> None:
    from appliance.server import TITLE_ID_RE
    from edgeflix.titlefiles import TITLE_ID_RE as SHARED

    assert TITLE_ID_RE.pattern == SHARED.pattern


@pytest.mark.parametrize(
    "spell",
    [
        lambda e: "0" + e,  # int() reads it as the same expiry: a second text for one grant
        lambda e: "00" + e,
        lambda e: "+" + e,
        lambda e: e + "\n",
        lambda e: " " + e,
        lambda e: e[:-1] + "\u0661",  # ARABIC-INDIC DIGIT ONE: isdigit() and int() take it
        lambda e: e[:-1] + "\uff11",  # FULLWIDTH DIGIT ONE
        lambda e: "1_" + e,  # int() accepts underscores between digits
    ],
)
def test_one_grant_has_one_text(spell: object) -> None:
    """Only the signer's own spelling of the expiry verifies, not another that int() reads
    as the same number (the MAC covers the number, so each would verify otherwise)."""
    for ip in (None, "10.0.0.1"):
        token = tokens.sign("t1", KEY, NOW + 60, client_ip=ip)
        exp = str(NOW + 60)
        other = token.replace(f".{exp}.", f".{spell(exp)}.")  # type: ignore[operator]
        assert other != token
        with pytest.raises(tokens.MalformedToken):
            check(other, ip=ip)


def test_expiry_zero_is_canonical_and_expired() -> None:
    with pytest.raises(tokens.ExpiredToken):
        check(tokens.sign("t1", KEY, 0))


def test_expiry_past_any_signers_lifetime_is_refused() -> None:
    """Signers grant MAX_TTL_S at most (`appliance sign --ttl`, fleet's token_ttl_s); a later
    expiry, however well signed, is a leaked key's forever-URL, not a grant."""
    limit = NOW + tokens.MAX_TTL_S + tokens.EXPIRY_SKEW_S
    assert check(tokens.sign("t1", KEY, NOW + tokens.MAX_TTL_S))
    assert check(tokens.sign("t1", KEY, limit))  # a signer's clock a little ahead of ours
    for expires in (limit + 1, 253402300799, tokens.MAX_EXPIRES):
        with pytest.raises(tokens.ExpiryTooFar):
            check(tokens.sign("t1", KEY, expires))

"""URL tokens: `/t/<token>/titles/<id>/<path>`, signed by whoever hands out playback URLs
(`edgeflix appliance sign`, later fleet and playback) and checked locally by appliances.

Token text: `<key id>.<expiry>.<scope>.<mac>[.<client mac>]`, url-safe base64 MACs without
padding. `mac` is HMAC-SHA256 over (key id, expiry, scope, title prefix); when scope is `ip`,
`client mac` binds it to one client address too. Sign and verify are pure: keys and the clock
come in as arguments; comparisons are constant-time. Each grant has exactly one text: the
expiry is canonical decimal (no sign, no leading zero), the MACs compare as text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from edgeflix.errors import EdgeflixError

_VERSION = "edgeflix-token-v1"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
_B64 = re.compile(r"^[A-Za-z0-9_-]+\Z")
# Canonical decimal, ASCII digits, at most 12 of them: `0<exp>` would be a second text for
# one grant (int() takes it), and a 12-digit bound keeps int() cheap.
_EXPIRY = re.compile(r"^(?:0|[1-9][0-9]{0,11})\Z")
CLIENT_MAC_BYTES = 16
# verify() refuses an expiry of more than 12 digits, so no token may be signed past it.
MAX_EXPIRES = 10**12 - 1
# The longest lifetime a signer hands out (`appliance sign --ttl`, fleet's token_ttl_s): ten
# years, far inside MAX_EXPIRES, and bounded so a typo cannot mint a URL valid forever.
MAX_TTL_S = 10 * 365 * 24 * 3600
# How far a signer's clock may run ahead of the verifier's: verify() refuses an expiry later
# than now + MAX_TTL_S + this, which no signer hands out (a leaked key's forever-URL).
EXPIRY_SKEW_S = 24 * 3600


class TokenError(EdgeflixError):
    """A token we refuse (HTTP 403); `reason` is a short machine-readable word for metrics."""

    reason = "invalid"


class MalformedToken(TokenError):
    reason = "malformed"


class UnknownKey(TokenError):
    reason = "unknown_key"


class ExpiredToken(TokenError):
    reason = "expired"


class ExpiryTooFar(TokenError):
    reason = "expiry_too_far"


class WrongTitle(TokenError):
    reason = "wrong_title"


class WrongClient(TokenError):
    reason = "wrong_client"


@dataclass(frozen=True, slots=True)
class SigningKey:
    id: str
    secret: bytes

    def __post_init__(self) -> None:
        if not _KEY_ID.match(self.id):
            raise TokenError(f"key id {self.id!r}: use 1-32 letters, digits, '_' or '-'")
        if len(self.secret) < 16:
            raise TokenError(f"key {self.id}: secret must be at least 16 bytes")


@dataclass(frozen=True, slots=True)
class TokenClaims:
    key_id: str
    expires: int  # seconds since the epoch
    title_id: str
    client_ip: str | None


def title_prefix(title_id: str) -> str:
    return f"/titles/{title_id}/"


def normalise_ip(ip: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 (dual-stack sockets) becomes IPv4, and
    an IPv6 zone (`fe80::1%eth0`, as a socket reports a link-local peer) is dropped: it names
    an interface of the host that wrote it, so the signer's and the appliance's differ."""
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise TokenError(f"{ip!r} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if addr.scope_id is not None:
            return str(ipaddress.IPv6Address(addr.packed))
    return str(addr)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _mac(secret: bytes, key_id: str, expires: int, scope: str, title_id: str) -> bytes:
    msg = f"{_VERSION}\n{key_id}\n{expires}\n{scope}\n{title_prefix(title_id)}"
    return hmac.new(secret, msg.encode(), hashlib.sha256).digest()


def _client_mac(secret: bytes, mac: bytes, client_ip: str) -> bytes:
    return hmac.new(secret, mac + b"\n" + client_ip.encode(), hashlib.sha256).digest()[
        :CLIENT_MAC_BYTES
    ]


def sign(title_id: str, key: SigningKey, expires: int, client_ip: str | None = None) -> str:
    """A token for every file of `title_id` until `expires`, optionally for one client only."""
    if not 0 <= expires <= MAX_EXPIRES:
        raise TokenError(f"token expiry {expires} is out of range (0 to {MAX_EXPIRES})")
    scope = "ip" if client_ip is not None else "any"
    mac = _mac(key.secret, key.id, expires, scope, title_id)
    token = f"{key.id}.{expires}.{scope}.{_b64(mac)}"
    if client_ip is not None:
        token += "." + _b64(_client_mac(key.secret, mac, normalise_ip(client_ip)))
    return token


def signed_path(token: str, title_id: str, rel_path: str) -> str:
    return f"/t/{token}{title_prefix(title_id)}{rel_path}"


def verify(
    token: str,
    *,
    title_id: str,
    client_ip: str | None,
    keys: Mapping[str, bytes],
    now: float,
) -> TokenClaims:
    """The token's claims if it grants `title_id` to `client_ip` at `now`; else a TokenError.

    `now` is on the signer's clock, as the expiry is: an appliance in a fleet passes its
    clock plus the correction its fleet link learned (appliance/keyfile.py), as both the
    expiry and the bound on it (ExpiryTooFar) are the fleet manager's."""
    parts = token.split(".")
    if len(parts) not in (4, 5) or len(token) > 256:
        raise MalformedToken("token is malformed")
    key_id, exp_text, scope, mac_text = parts[:4]
    if (
        not _KEY_ID.match(key_id)
        or not _EXPIRY.match(exp_text)
        or scope not in ("any", "ip")
        or (scope == "ip") != (len(parts) == 5)
        or not all(_B64.match(p) for p in parts[3:])
    ):
        raise MalformedToken("token is malformed")
    secret = keys.get(key_id)
    if secret is None:
        raise UnknownKey(f"token names unknown key {key_id!r}")
    expires = int(exp_text)
    mac = _mac(secret, key_id, expires, scope, title_id)
    if not hmac.compare_digest(_b64(mac), mac_text):
        raise WrongTitle(f"token is not valid for title {title_id}")
    if now > expires:
        raise ExpiredToken("token has expired")
    if expires > now + MAX_TTL_S + EXPIRY_SKEW_S:
        raise ExpiryTooFar("token expires further ahead than any signer grants")
    bound: str | None = None
    if scope == "ip":
        if client_ip is None:
            raise WrongClient("token is bound to a client address")
        bound = normalise_ip(client_ip)
        if not hmac.compare_digest(_b64(_client_mac(secret, mac, bound)), parts[4]):
            raise WrongClient("token is bound to another client address")
    return TokenClaims(key_id, expires, title_id, bound)

"""Steering candidates → playback URLs, signed with the shared token format (edgeflix.tokens).

Appliance URLs carry the token in the path, `/t/<token>/titles/<id>/master.m3u8`, so the
relative URLs inside the manifests carry it to every segment. The origin is not a player
endpoint in normal operation and takes no token: `/titles/<id>/master.m3u8`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeflix.tokens import SigningKey, sign, signed_path, title_prefix
from fleet.steering import Candidate, SteeringDecision

MANIFEST = "master.m3u8"
Signer = Callable[[str, SigningKey, int, "str | None"], str]
# Enough for every title of a big catalogue in one second; bound-to-client tokens beyond it
# are signed without being remembered.
TOKEN_CACHE_ENTRIES = 50_000


@dataclass(frozen=True)
class SignedUrls:
    urls: tuple[str, ...]  # aligned with decision.candidates, best first
    expires: int


def playback_urls(
    decision: SteeringDecision,
    key_of: Callable[[Candidate], SigningKey | None],
    now: float,
    ttl_s: int,
    *,
    bind_client_ip: bool = False,
    manifest: str = MANIFEST,
    signer: Signer = sign,
) -> SignedUrls:
    """One URL per candidate, signed with the key `key_of` gives for its appliance; unsigned
    `/titles/…` URLs when tokens are off (no key)."""
    expires = int(now) + ttl_s
    client = decision.client_ip if bind_client_ip else None
    plain = f"{title_prefix(decision.title_id)}{manifest}"
    urls = []
    for c in decision.candidates:
        base = c.url.rstrip("/")
        key = key_of(c) if c.kind == "appliance" else None
        if key is not None:
            token = signer(decision.title_id, key, expires, client)
            urls.append(base + signed_path(token, decision.title_id, manifest))
        else:
            urls.append(base + plain)
    return SignedUrls(tuple(urls), expires)


class TokenCache:
    """`sign` remembered per key for the current expiry second: every answer for a title in
    the same second carries the same token, so it is signed (HMAC + base64) once, not per
    request. A new second starts afresh, so nothing stale is ever handed out. After a
    rotation one answer can carry two keys (appliances that have the new one, and those
    that have not fetched it yet): each keeps its own tokens."""

    def __init__(self, max_entries: int = TOKEN_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._expires: int | None = None
        self._tokens: dict[tuple[SigningKey, str, str | None], str] = {}

    def __call__(
        self, title_id: str, key: SigningKey, expires: int, client_ip: str | None = None
    ) -> str:
        if self._expires != expires:
            self._expires = expires
            self._tokens = {}
        token = self._tokens.get((key, title_id, client_ip))
        if token is None:
            token = sign(title_id, key, expires, client_ip)
            if len(self._tokens) < self.max_entries:
                self._tokens[key, title_id, client_ip] = token
        return token

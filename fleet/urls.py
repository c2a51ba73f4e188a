"""Steering candidates → playback URLs, signed with the shared token format (edgeflix.tokens).

Appliance URLs carry the token in the path, `/t/<token>/titles/<id>/master.m3u8`, so the
relative URLs inside the manifests carry it to every segment. The origin is not a player
endpoint in normal operation and takes no token: `/titles/<id>/master.m3u8`.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeflix.tokens import SigningKey, sign, signed_path, title_prefix
from fleet.steering import SteeringDecision

MANIFEST = "master.m3u8"


@dataclass(frozen=True)
class SignedUrls:
    urls: tuple[str, ...]  # aligned with decision.candidates, best first
    expires: int


def playback_urls(
    decision: SteeringDecision,
    key: SigningKey | None,
    now: float,
    ttl_s: int,
    *,
    bind_client_ip: bool = False,
    manifest: str = MANIFEST,
) -> SignedUrls:
    """One URL per candidate; unsigned `/titles/…` URLs when tokens are off (no key)."""
    expires = int(now) + ttl_s
    token: str | None = None
    if key is not None:
        client = decision.client_ip if bind_client_ip else None
        token = sign(decision.title_id, key, expires, client)
    plain = f"{title_prefix(decision.title_id)}{manifest}"
    urls = []
    for c in decision.candidates:
        base = c.url.rstrip("/")
        if c.kind == "appliance" and token is not None:
            urls.append(base + signed_path(token, decision.title_id, manifest))
        else:
            urls.append(base + plain)
    return SignedUrls(tuple(urls), expires)

"""URL-token key rotation as a pure schedule: which key signs now, which keys verify.

The server owns the clock, the randomness (`secrets.token_bytes`) and the storage; it calls
`rotation_due` / `rotate` and hands `verification_keys` to appliances over the authenticated
channel. A new key is handed out `lead_s` before it signs anything (appliances learn it on a
heartbeat first), and a retired key keeps verifying, after its last signature, for the
longest token lifetime ever signed with it (`KeyRecord.token_ttl_s`, kept with the key, not
read from today's config), so no URL issued before a rotation breaks before it expires.
A leaked key is revoked instead (`revoke_now`): gone from the next key set, at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from edgeflix.tokens import SigningKey, TokenError


@dataclass(frozen=True)
class KeyPolicy:
    rotate_every_s: float = 24 * 3600.0
    # Longest token lifetime the fleet issues: how long a retired key must still verify.
    max_token_ttl_s: float = 6 * 3600.0
    # How long a new key is distributed before it signs (several heartbeats).
    lead_s: float = 60.0
    # Clock differences between the fleet and appliances, added to every verification end.
    skew_s: float = 60.0

    def __post_init__(self) -> None:
        if self.rotate_every_s <= self.lead_s or self.max_token_ttl_s <= 0 or self.lead_s < 0:
            raise ValueError("need rotate_every_s > lead_s >= 0 and max_token_ttl_s > 0")


@dataclass(frozen=True)
class KeyRecord:
    id: str
    secret: bytes
    activates: float  # signs from here ...
    retires: float | None = None  # ... until here (None: until the next rotation)
    # The key set version that first carried it: an appliance that reports running this
    # version or a later one holds it.
    since: int = 0
    # The longest token lifetime signed with it, a high-water mark kept in the database:
    # how long it verifies after retiring. Not the config's current TTL: lowered (600 s to
    # 10 s) before a rotation, that broke every URL issued under the old one long before
    # it expired. 0: unknown (a database from before the mark); the policy's stands in.
    token_ttl_s: float = 0.0

    def ttl_s(self, policy: KeyPolicy) -> float:
        return self.token_ttl_s or policy.max_token_ttl_s

    def verify_until(self, policy: KeyPolicy) -> float | None:
        """When its last token expires (None: it still signs)."""
        if self.retires is None:
            return None
        return self.retires + self.ttl_s(policy) + policy.skew_s

    def signs_at(self, now: float) -> bool:
        return self.activates <= now and (self.retires is None or now < self.retires)

    def verifies_at(self, now: float, policy: KeyPolicy) -> bool:
        """Known to appliances from creation (before it signs) until its tokens expire."""
        until = self.verify_until(policy)
        return until is None or now < until


@dataclass(frozen=True)
class KeySet:
    """All keys the fleet remembers; `version` rises on every change, like plans."""

    version: int = 0
    keys: tuple[KeyRecord, ...] = ()


def _newest(keys: KeySet) -> KeyRecord:
    # By the key set version that brought it, not `activates`: a key made while the clock
    # was ahead activates later than the ones made after the clock was set right.
    return max(keys.keys, key=lambda k: (k.since, k.activates))


def rotation_due(keys: KeySet, now: float, policy: KeyPolicy) -> bool:
    """True when the newest key has signed for `rotate_every_s` (less the lead), or when it
    activates further ahead than a rotation would put it (by more than the skew): it was
    made while the clock was ahead, and waiting for its schedule would keep one key for as
    long as the clock was wrong (years, after an RTC reset to a date in the future)."""
    if not keys.keys:
        return True
    newest = _newest(keys)
    if newest.activates > now + policy.lead_s + policy.skew_s:
        return True
    return now >= newest.activates + policy.rotate_every_s - policy.lead_s


def rotate(
    keys: KeySet, now: float, policy: KeyPolicy, secret: bytes, *, immediate: bool = False
) -> KeySet:
    """Add a key that signs from `now + lead_s` (or `now` if `immediate`, e.g. the very first
    key); every key still open-ended retires at that moment; expired keys are dropped."""
    starts = now if immediate or not keys.keys else now + policy.lead_s
    version = keys.version + 1
    # The tag keeps ids unique across fleet databases: after a reset an appliance still
    # holding the old `k1` must not take the new one for it (it would refuse every URL).
    tag = hashlib.blake2b(secret, digest_size=4, person=b"edgeflix-keyid").hexdigest()
    new = KeyRecord(
        id=f"k{version}-{tag}",
        secret=secret,
        activates=starts,
        since=version,
        token_ttl_s=policy.max_token_ttl_s,
    )
    SigningKey(new.id, secret)  # refuse a short secret here, not at the first signature
    kept = tuple(
        replace(k, retires=starts) if k.retires is None or k.retires > starts else k
        for k in keys.keys
        if k.verifies_at(now, policy)
    )
    return KeySet(version=version, keys=(*kept, new))


def rebase(keys: KeySet, above: int, now: float, policy: KeyPolicy, secret: bytes) -> KeySet:
    """`keys` moved past a key set this fleet did not issue (appliances run version `above`,
    or this version with other content: the database was restored from a backup), under a
    version above both, with a key made of `secret` signing from `now`. Not re-stamped as
    it is: the backup's signing key may have been revoked after the backup, a revocation
    this database lost and appliances remember (they refuse that key's URLs)."""
    return rotate(replace(keys, version=max(above, keys.version)), now, policy, secret,
                  immediate=True)  # fmt: skip


def cover_token_ttl(keys: KeySet, now: float, policy: KeyPolicy) -> KeySet:
    """`keys` with every key that may still sign (see `signers`) marked as signing tokens
    of `policy.max_token_ttl_s`, under a new version when a mark rose (appliances must learn
    the later end of its verification); the same object when none did. A mark never falls:
    a lowered TTL leaves every key verifying as long as its longest-lived token needs."""
    changed = False
    out = []
    for k in keys.keys:
        may_sign = k.retires is None or now < k.retires + policy.skew_s
        if may_sign and k.token_ttl_s < policy.max_token_ttl_s:
            k = replace(k, token_ttl_s=policy.max_token_ttl_s)
            changed = True
        out.append(k)
    return KeySet(keys.version + 1, tuple(out)) if changed else keys


def digest(keys: KeySet) -> bytes:
    """Identifies a key set's content at its version: appliances report it back beside the
    version, so one version number issued twice with other content (a database restored
    from a backup, then a rotation) is seen and moved past (fleet/catchup.py)."""
    h = hashlib.blake2b(digest_size=16, person=b"edgeflix-keyset")
    h.update(str(keys.version).encode())
    for k in sorted(keys.keys, key=lambda k: k.id):
        h.update(repr((k.id, k.activates, k.retires, k.since, k.token_ttl_s)).encode())
        h.update(k.secret)
    return h.digest()


def revoke(keys: KeySet, key_id: str) -> KeySet:
    """Forget a (compromised) key at once: its URLs stop working everywhere on next sync."""
    kept = tuple(k for k in keys.keys if k.id != key_id)
    return keys if len(kept) == len(keys.keys) else KeySet(keys.version + 1, kept)


def revoke_now(
    keys: KeySet, key_id: str, now: float, policy: KeyPolicy, secret: bytes
) -> KeySet | None:
    """`keys` without `key_id` (None when no key has that id), under a new version. When it
    was the key URLs are signed with (or no key is left to sign), a key made of `secret`
    signs from `now`, not after the lead: no URL is signed with the revoked key again, and
    until an appliance fetches the new set steering leaves it out (it holds no usable key)
    rather than hand out URLs it would refuse. Unlike `rotate`, nothing keeps verifying the
    revoked key for the lifetime of its tokens: appliances drop it on their next sync."""
    kept = revoke(keys, key_id)
    if kept is keys:
        return None
    best = signers(keys, now, policy)[:1]
    if (best and best[0].key.id == key_id) or not signers(kept, now, policy):
        return rotate(kept, now, policy, secret, immediate=True)
    return kept


def is_key_id(text: str) -> bool:
    """Whether `text` can name a key at all (the token format's rule, edgeflix.tokens)."""
    try:
        SigningKey(text, bytes(16))
    except TokenError:
        return False
    return True


def signing_key(keys: KeySet, now: float) -> SigningKey | None:
    """The key that signs at `now`: the latest-activated one inside its signing period;
    when the clock reads before every key's activation, the newest unretired key (see
    `signers`)."""
    live = [k for k in keys.keys if k.signs_at(now)]
    if live:
        best = max(live, key=lambda k: k.activates)
    else:
        early = [k for k in keys.keys if k.retires is None or now < k.retires]
        if not early:
            return None
        best = max(early, key=lambda k: (k.since, k.activates))
    return SigningKey(best.id, best.secret)


@dataclass(frozen=True)
class Signer:
    key: SigningKey
    since: int  # the key set version an appliance must run to hold it


def signers(
    keys: KeySet, now: float, policy: KeyPolicy, *, newest_only: bool = False
) -> tuple[Signer, ...]:
    """The keys a URL may be signed with at `now`, best first: the signing key, then, for
    appliances that have not fetched the key set carrying it yet (for a heartbeat or two
    after a rotation, longer for one that cannot reach the fleet), the keys it replaced,
    within `skew_s` of their retirement, so a token signed with one still expires inside
    that key's verification period.

    When the clock reads before a key's activation because the key was made while the
    clock was ahead (and it was set right since), that key signs anyway: while no key has
    activated, the newest one; once a later key has replaced it (rotation_due makes one at
    once), until its retirement plus the skew, like any retired key. `activates` only
    orders the schedule, giving appliances a lead to fetch a key before URLs carry it.
    Appliances verify a token with any key they hold until its `verify_until`
    (appliance/fleetlink_keys.py usable_keys) and never look at `activates`, so such a URL
    is accepted by every appliance holding the key (`since`, see key_for), while an
    unsigned one is refused by each with tokens required. Best first is by key set
    version: after a clock step back, the newest key is not the one activating last.

    `newest_only`: the set was rebased (see `rebase`): its older keys are a backup's, which
    appliances may have revoked since; an appliance that has not fetched the newest key is
    left out (for a beat) rather than handed a URL signed with one of them."""
    alive = [k for k in keys.keys if k.retires is None or now < k.retires + policy.skew_s]
    usable = [k for k in alive if k.activates <= now or k.retires is not None] or alive
    if newest_only and keys.keys:
        # (Or all of them, when the newest waits out its lead: a rotation's, not a rebase's.)
        usable = [k for k in usable if k.since >= _newest(keys).since] or usable
    usable.sort(key=lambda k: (k.since, k.activates), reverse=True)
    return tuple(Signer(SigningKey(k.id, k.secret), k.since) for k in usable)


def key_for(signers: tuple[Signer, ...], keys_version: int) -> SigningKey | None:
    """The best key an appliance running key set `keys_version` holds; None if it holds
    none of them (new, or not synced since a rotation): its URLs would be refused."""
    return next((s.key for s in signers if s.since <= keys_version), None)


def verification_keys(keys: KeySet, now: float, policy: KeyPolicy) -> dict[str, bytes]:
    """What appliances must accept at `now`: key id → secret."""
    return {k.id: k.secret for k in keys.keys if k.verifies_at(now, policy)}

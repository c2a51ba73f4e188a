"""The URL-signing key set this manager runs (fleet/keys.py decides each change): stored on
every change, rotated on schedule, revoked on demand, replaced by a catch-up after a restore
(fleet/catchup.py); and what the hot paths ask of it on every call, its digest (each
heartbeat answer) and the keys that sign now (each /steer), kept until they can change.
FleetService (fleet/service.py) rebuilds its snapshot after each change made here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from edgeflix.log import event
from fleet.config import FleetConfig
from fleet.errors import UnknownNameError
from fleet.keys import (
    KeyPolicy,
    KeySet,
    Signer,
    cover_token_ttl,
    digest,
    rebase,
    revoke_now,
    rotate,
    rotation_due,
    signers,
    verification_keys,
)
from fleet.store import Store

log = logging.getLogger("fleet")


@dataclass(frozen=True)
class KeyRow:
    """One key as `edgeflix fleet keys` shows it: never its secret."""

    id: str
    since: int  # the key set version that brought it
    activates: float
    retires: float | None  # None: signs until the next rotation
    verify_until: float | None  # None: still signs
    signing: bool  # the key URLs are signed with now


@dataclass(frozen=True)
class Rebased:
    """The key set is the one a catch-up made after a restore from backup (fleet/catchup.py),
    no rotation or revocation since: the backup's keys sign no more, and appliances keep
    the keys made after the backup (which this database never saw) for verifying only."""

    at: float  # when: its newest key, made by the catch-up, signs from then
    carried_until: float  # about when those keys stop verifying on appliances
    note: str


@dataclass(frozen=True)
class KeyListing:
    version: int
    keys: tuple[KeyRow, ...]
    rebased: Rebased | None


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def rebased_state(keys: KeySet, policy: KeyPolicy) -> Rebased:
    """What a rebased `keys` means for an operator. An appliance keeps a key its set lacks
    for as long as a key retired when it fetched the set verifies (appliance/fleetlink_keys.py
    _carry): from the catch-up, the token lifetime and the skew, later for one that fetches
    it later (it was off)."""
    at = max(keys.keys, key=lambda k: (k.since, k.activates)).activates
    until = at + policy.max_token_ttl_s + policy.skew_s
    note = (
        f"re-stamped after a restore from backup at {_utc(at)}; keys made after the backup "
        f"kept for verifying until about {_utc(until)} (later on an appliance that fetches "
        "this key set later)"
    )
    return Rebased(at, until, note)


def key_listing(keys: KeySet, policy: KeyPolicy, signing: str | None, rebased: bool) -> KeyListing:
    rows = tuple(
        KeyRow(k.id, k.since, k.activates, k.retires, k.verify_until(policy), k.id == signing)
        for k in sorted(keys.keys, key=lambda k: (k.since, k.activates))
    )
    state = rebased_state(keys, policy) if rebased and keys.keys else None
    return KeyListing(keys.version, rows, state)


class Keyring:
    """The key set as stored, from `now` on. `rebased(keys)`: whether `keys` is a set a
    catch-up made, which signs with its newest key only (see fleet/keys.py signers)."""

    def __init__(
        self,
        config: FleetConfig,
        store: Store,
        clock: Callable[[], float],
        entropy: Callable[[int], bytes],
        rebased: Callable[[KeySet], bool],
        now: float,
    ) -> None:
        self.config, self.store, self.clock, self.entropy = config, store, clock, entropy
        self.rebased = rebased
        self.keys = store.keyset()
        # Every key that may sign from now on is marked with this config's token TTL (its
        # verification after retiring lasts that long), raised, never lowered.
        covered = cover_token_ttl(self.keys, now, config.key_policy())
        if covered is not self.keys:
            store.save_keyset(covered)
            self.keys = covered
        self._digest: tuple[KeySet, bytes] | None = None
        self._signing: tuple[KeySet, float, float, tuple[Signer, ...]] | None = None

    def digest(self) -> bytes:
        """KeySet.digest of the current key set (appliances report it back)."""
        cached = self._digest
        if cached is None or cached[0] is not self.keys:
            cached = self._digest = (self.keys, digest(self.keys))
        return cached[1]

    def signers(self, now: float) -> tuple[Signer, ...]:
        """signers(), recomputed only when the key set changes or `now` crosses an instant
        where its answer can change (an activation, a retirement plus the skew)."""
        cached = self._signing
        if cached is not None and cached[0] is self.keys and cached[1] <= now < cached[2]:
            return cached[3]
        skew = self.config.key_policy().skew_s
        edges = [k.activates for k in self.keys.keys] + [
            k.retires + skew for k in self.keys.keys if k.retires is not None
        ]
        since = max((t for t in edges if t <= now), default=float("-inf"))
        until = min((t for t in edges if t > now), default=float("inf"))
        policy = self.config.key_policy()
        found = signers(self.keys, now, policy, newest_only=self.rebased(self.keys))
        self._signing = (self.keys, since, until, found)
        return found

    def listing(self) -> KeyListing:
        """The key set as `edgeflix fleet keys` shows it, with its rebased state."""
        found = self.signers(self.clock())
        signing = found[0].key.id if found else None
        policy = self.config.key_policy()
        return key_listing(self.keys, policy, signing, self.rebased(self.keys))

    def signing_id(self) -> str:
        """The id of the key that signs now (what a log line names)."""
        return self.signers(self.clock())[0].key.id

    def rotation_due(self) -> bool:
        return rotation_due(self.keys, self.clock(), self.config.key_policy())

    def rotate(self, immediate: bool = False) -> None:
        keys = rotate(
            self.keys, self.clock(), self.config.key_policy(), self.entropy(32), immediate=immediate
        )
        self.store.save_keyset(keys)
        self.keys = keys
        event(log, "fleet.keys_rotated", version=keys.version, newest=keys.keys[-1].id)

    def revoke(self, key_id: str) -> None:
        """Take a (leaked) key out of the key set now: appliances drop it on their next
        sync (the new version's number is in every heartbeat answer) and refuse its URLs,
        unexpired or not; if it signed, a new key signs from now (fleet/keys.py)."""
        policy = self.config.key_policy()
        keys = revoke_now(self.keys, key_id, self.clock(), policy, self.entropy(32))
        if keys is None:
            known = ", ".join(k.id for k in self.keys.keys) or "none"
            raise UnknownNameError(f"no key '{key_id}' in the key set (keys: {known})")
        self.store.save_keyset(keys)
        self.keys = keys
        event(log, "fleet.key_revoked", logging.WARNING, key=key_id, version=keys.version,
              signing=self.signing_id())  # fmt: skip

    def rebased_above(self, reported: int, new_key: bool) -> KeySet:
        """Our key set under a version above `reported` (a set this fleet did not issue:
        see fleet/catchup.py), not stored yet; with a new key signing at once if `new_key`."""
        keys = self.keys
        if new_key:
            policy = self.config.key_policy()
            return rebase(keys, reported, self.clock(), policy, self.entropy(32))
        return replace(keys, version=max(reported, keys.version) + 1)

    def save(self, keys: KeySet) -> None:
        """Store `keys` and run them as the store reads them back."""
        self.store.save_keyset(keys)
        self.keys = self.store.keyset()

    def verification_keys(self) -> dict[str, bytes]:
        return verification_keys(self.keys, self.clock(), self.config.key_policy())

"""Which keys this box checks URL tokens with, and signs peer fill URLs with, without I/O:
a key set is checked whole before it applies (edgeflix/versioning.py); a key the fleet drops
before its end stays refused (revoked), even when a later set carries it again; the keys of
a set that a restored manager's set lacks verify until their end (carried); and the key the
fleet signs with now is the one peer fill sources are signed with.

appliance/fleetlink_received.py applies the fleet's key sets by these rules and hands the
usable keys to the workers; fleetlink_state.py keeps a set and its history on disk.
tests/appliance/test_fleetlink_core.py and test_keys_restore.py drive them directly.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.fleetlink_core import Phase
from edgeflix.proto.gen import fleet_pb2
from edgeflix.versioning import Versioned

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
MIN_SECRET_BYTES = 16


# -- a key set, checked whole ---------------------------------------------------------------


@dataclass(frozen=True)
class FleetKey:
    id: str
    secret: bytes
    activates: float
    retires: float  # 0: still signing
    verify_until: float  # 0: open-ended
    # After `retires`, how long it verifies (Key.verify_for_s); 0: the fleet did not say.
    verify_for_s: float = 0.0


def keys_from_proto(keyset: fleet_pb2.KeySet) -> Versioned[tuple[FleetKey, ...]]:
    keys = tuple(
        FleetKey(k.id, bytes(k.secret), k.activates, k.retires, k.verify_until, k.verify_for_s)
        for k in keyset.keys
    )
    return Versioned("keys", keyset.version, keys)


def check_keys(keys: tuple[FleetKey, ...]) -> None:
    if not keys:
        raise ValueError("an empty key set")
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise ValueError("a key id is listed twice")
    for k in keys:
        if not _KEY_ID.match(k.id):
            raise ValueError(f"key id {k.id!r} is not valid")
        if len(k.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"key {k.id} is shorter than {MIN_SECRET_BYTES} bytes")


def usable_keys(
    keys: tuple[FleetKey, ...], now: float, phase: Phase, after_grace: str
) -> dict[str, bytes]:
    """Keys the workers verify tokens with: those whose verification period has not ended;
    none once the grace period is over under `after_grace = "stop"`."""
    if phase == "expired" and after_grace == "stop":
        return {}
    return {k.id: k.secret for k in keys if k.verify_until == 0 or k.verify_until > now}


# -- revoked and carried keys: key sets of a manager restored from a backup ---------------

# A key the fleet drops this close to its end (or after it) retired; earlier, it was revoked
# (fleet/keys.py: `rotate` drops a key once its last token expired, `revoke` at once). Judged
# at the fleet's time (the shell passes its clock plus the learned correction); the margin
# allows for a clock the fleet takes uncorrected (auth.MAX_SKEW_S) and a beat's lag.
RETIRE_MARGIN_S = 600.0
# How long a revoked key stays refused, at least, once the fleet's sets no longer carry it:
# a backup older than the revocation, restored later, brings it back, often as a key that
# still signs (no end at all). Backups are kept for weeks; an id and a time cost bytes.
REVOKED_KEPT_S = 30 * 86_400.0
# So that a fleet dropping hundreds of keys a set cannot grow the file for a month.
MAX_REVOKED = 256
# How long a carried key with no end of its own verifies: the fleet's default longest token
# lifetime plus its clock allowance (fleet/keys.py KeyPolicy), for a fleet from before
# `verify_for_s`.
DEFAULT_VERIFY_FOR_S = 6 * 3600.0 + 60.0


@dataclass(frozen=True)
class KeyHistory:
    """What the appliance remembers beside the key set the fleet sent last."""

    # Key id → until when it stays refused: the fleet dropped it before its end (revoked).
    revoked: Mapping[str, float] = field(default_factory=dict)
    # Keys of an earlier set that a restored (or another) manager's set lacks: they verify,
    # never sign, until their end, so URLs issued before the restore work until they expire.
    carried: tuple[FleetKey, ...] = ()


@dataclass(frozen=True)
class KeyUpdate:
    history: KeyHistory
    returned: tuple[str, ...] = ()  # revoked ids the new set carries again: still refused
    revoked: tuple[str, ...] = ()  # ids the new set revoked
    carried: tuple[str, ...] = ()  # ids carried over from the set it replaces


def _ended(key: FleetKey, now: float) -> bool:
    return key.verify_until != 0 and key.verify_until <= now + RETIRE_MARGIN_S


def _carry(key: FleetKey, now: float) -> FleetKey:
    """`key` kept past its key set: retired by now (the fleet it came from signs with it no
    more), verifying until its end, or for as long as a key retired now does."""
    retires = key.retires if 0 < key.retires <= now else now
    until = key.verify_until or now + (key.verify_for_s or DEFAULT_VERIFY_FOR_S)
    return dataclasses.replace(key, retires=retires, verify_until=until)


def next_key_history(
    running: tuple[FleetKey, ...],
    history: KeyHistory,
    incoming: tuple[FleetKey, ...],
    now: float,
    *,
    other_lineage: bool = False,
) -> KeyUpdate:
    """The history once `incoming` replaces `running` (the fleet's previous set).

    A key of `running` that `incoming` lacks before its end was revoked: it stays refused
    until then (REVOKED_KEPT_S at least, and while a set carries it), even when a later set
    carries it again. Only a manager restored from a backup older than the revocation does
    that, and its set is no successor of `running`: the keys of `running` it lacks were made
    after the backup, not revoked, so they are carried until their end instead.
    `other_lineage` says the same without a returning key: a set fetched on enrolling again
    under a version not above ours (versions only rise within one fleet database), or one
    the fleet marks rebased (KeySet.rebased: re-stamped above ours by a manager restored
    from a backup, which cannot tell a revocation from a key made after its backup). A key
    revoked before stays revoked, never carried."""
    ids = {k.id for k in incoming}
    revoked = {i: u for i, u in history.revoked.items() if u > now or i in ids}
    returned = tuple(sorted(ids & revoked.keys()))
    restored = bool(returned) or other_lineage
    carried = {k.id: k for k in history.carried if k.verify_until > now and k.id not in ids}
    newly_revoked: list[str] = []
    newly_carried: list[str] = []
    for k in running:
        if k.id in ids or _ended(k, now):
            continue
        if not restored:
            revoked[k.id] = max(revoked.get(k.id, 0.0), k.verify_until, now + REVOKED_KEPT_S)
            newly_revoked.append(k.id)
        elif k.id not in revoked:
            carried[k.id] = _carry(k, now)
            newly_carried.append(k.id)
    if len(revoked) > MAX_REVOKED:  # those a set still carries, then the latest to end
        kept = sorted(revoked, key=lambda i: (i in ids, revoked[i]), reverse=True)
        revoked = {i: revoked[i] for i in kept[:MAX_REVOKED]}
    history = KeyHistory(revoked, tuple(carried.values()))
    return KeyUpdate(history, returned, tuple(newly_revoked), tuple(newly_carried))


def effective_keys(fleet: tuple[FleetKey, ...], history: KeyHistory) -> tuple[FleetKey, ...]:
    """The keys this box verifies (and signs peer URLs) with: the fleet's set but its
    revoked keys, and the carried keys it lacks."""
    ids = {k.id for k in fleet}
    kept = tuple(k for k in fleet if k.id not in history.revoked)
    return kept + tuple(k for k in history.carried if k.id not in ids)


# -- peer fill through token-checking peers -------------------------------------------------


def signing_key(keys: tuple[FleetKey, ...], now: float) -> FleetKey | None:
    """The key the fleet signs with now, by the fleet's own rule (fleet/keys.py signers): the
    latest-activated key inside its signing period. A key due to retire still signs until
    then: during a rotation's lead its successor is known but not yet active. A key made
    while the fleet's clock was ahead (and set right since) has not activated yet, and signs
    anyway: alone, or until its retirement once a successor replaced it. Peers verify any
    key they hold, and never look at `activates`."""
    alive = [k for k in keys if k.retires == 0 or now < k.retires]
    usable = [k for k in alive if k.activates <= now or k.retires != 0] or alive
    return max(usable, key=lambda k: k.activates, default=None)


def verified_until(key: FleetKey, now: float) -> float | None:
    """Until when every appliance is sure to verify a token of `key` signed at `now`: its
    `verify_until` once the fleet has retired it; for a key still signing, `now` plus
    `verify_for_s` (the fleet may retire it at once, and it verifies that long after). None
    when the key set does not say (a fleet from before `verify_for_s`)."""
    if key.verify_until:
        return key.verify_until
    if not key.verify_for_s:
        return None
    return max(key.retires, now) + key.verify_for_s


def sign_peer_sources(
    document: Mapping[str, Any], keys: tuple[FleetKey, ...], now: float, ttl_s: float
) -> dict[str, Any]:
    """Peers check URL tokens like players do, and share the fleet's keys: every source but
    the last (the origin, fleet/publish.py puts it last) becomes `PEER/t/<token>`, so the
    fill client's `SOURCE/titles/<id>/<path>` is a signed appliance URL.

    Signed when the plan is handed to the fill (a new plan, `fill --now`, a new signing key:
    daily), not at each run: the scheduler runs the plan at every window opening, and a run
    the window's close paused goes on at the next. So `ttl_s` spans from any hour to the end
    of the next window and beyond. The token plays the title anywhere until then: the fill
    sends it in requests and shows it nowhere (appliance/fill/redact.py)."""
    from edgeflix import tokens

    key = signing_key(keys, now)
    if key is None:
        return dict(document)
    signer = tokens.SigningKey(key.id, key.secret)
    titles = []
    for t in document["titles"]:
        sources = list(t["sources"])
        if len(sources) > 1:
            token = tokens.sign(t["id"], signer, int(now + ttl_s))
            sources = [f"{s.rstrip('/')}/t/{token}" for s in sources[:-1]] + sources[-1:]
        titles.append({**t, "sources": sources})
    return {**document, "titles": titles}

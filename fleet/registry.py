"""Registry rules as pure functions: enrolment records + last heartbeats → appliance states
and the `FleetSnapshot` that steering and planning read.

fleet/store.py persists records and join tokens; fleet/service.py keeps the last beat of
every appliance in memory (saved now and then, `beat_to_dict`, so a restarted manager steers
from it until the first real beats) and calls `build_snapshot` whenever one arrives or time
passes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edgeflix.proto import auth
from fleet.errors import FleetInputError
from fleet.model import Appliance, ApplianceState, FleetSnapshot, HeldTitle, Site, TierSpace

Health = Literal["ok", "degraded", "failing"]
# An appliance's storage tiers, as its beats name them (edgeflix/proto/fleet.proto; the
# appliance's own list is appliance/disks.py TIERS: components share only the wire).
TIERS: tuple[str, ...] = ("ssd", "hdd")
# Every tier name a beat carries becomes one of these objects: each read of a proto string
# is a new one, and 100 k held titles kept 100 k copies of "hdd" (or of anything sent).
# "": a held title whose tier is not said (the proto's unset value), as HeldTitle's default.
_TIER_NAMES: dict[str, str] = {t: t for t in ("", *TIERS)}
_TIERS_SAID = " or ".join(TIERS)
# A title's digest: the SHA-256 of its files.json in lowercase hex (edgeflix/titlefiles.py
# digest_bytes), all an appliance ever reports.
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ApplianceRecord:
    """What enrolment created and the operator changes (drain); persisted."""

    name: str
    site: str
    url: str
    public_key: bytes
    enrolled_at: float
    drained: bool = False


@dataclass(frozen=True)
class FillFailure:
    """A title the appliance's last fill run could not fill (FillProgress.failures)."""

    title_id: str
    reason: str = ""  # "": not said (an older appliance sends the ids only)
    no_room: bool = False  # below its disks' high watermarks there was no room for it


@dataclass(frozen=True)
class Beat:
    """The latest heartbeat of one appliance (in memory; a copy is saved every few minutes)."""

    at: float  # wall time of receipt: for people, popularity and the replay window
    sequence: int
    health: Health = "ok"
    health_detail: str = ""
    capacity_bps: float = 0.0
    load_bps: float = 0.0
    connections: int = 0
    tiers: tuple[TierSpace, ...] = ()
    titles: Mapping[str, HeldTitle] = field(default_factory=dict)
    plan_version: int = 0
    keys_version: int = 0
    fill_done: int = 0
    fill_total: int = 0
    fill_failures: tuple[FillFailure, ...] = ()
    # The appliance's identifier of `titles` (HeartbeatRequest.titles_digest); b"": none.
    titles_digest: bytes = b""
    # Monotonic reading at receipt (the service stamps it), what silence is measured on: on
    # the wall clock, a step back kept a dead appliance "ok" and steered to for the size of
    # the step, and a step forward over 3 beats made every appliance unreachable at once.
    # None: measured on `at` (a caller with one clock).
    seen: float | None = None
    # Chosen by the appliance at each start (HeartbeatRequest.boot): sequences compare
    # within one boot only. b"": an appliance that sends none.
    boot: bytes = b""
    # What the appliance runs, beside the versions (KeySet.digest, PlanResponse.digest).
    keys_digest: bytes = b""
    plan_digest: bytes = b""


def known_tier(tier: str, where: str) -> str:
    """The shared object for `tier` (one of TIERS); FleetInputError naming `where` if it is
    not one."""
    shared = _TIER_NAMES.get(tier)
    if not tier or shared is None:
        raise FleetInputError(f"heartbeat: {where}: tier {tier[:40]!r} is not {_TIERS_SAID}")
    return shared


def held_title(title_id: str, digest: str, complete: bool, size_bytes: int, tier: str) -> HeldTitle:
    """A held title as a beat reports it; FleetInputError naming it when its digest is not a
    SHA-256 in lowercase hex or its tier is none of TIERS (nor unsaid). The manager keeps
    each one and sends them all to the planner: one beat of 100 k titles with 60-character
    digests and tiers took it from 97 to 194 MB, none of it anything an appliance sends."""
    if len(digest) != 64 or not _SHA256_HEX.fullmatch(digest):
        raise FleetInputError(
            f"heartbeat: title {title_id[:80]!r}: digest {digest[:80]!r} is not the SHA-256"
            " of its files.json in lowercase hex"
        )
    shared = _TIER_NAMES.get(tier)
    if shared is None:
        raise FleetInputError(
            f"heartbeat: title {title_id[:80]!r}: tier {tier[:40]!r} is not {_TIERS_SAID}"
        )
    return HeldTitle(digest, complete, size_bytes, shared)


def state_of(
    record: ApplianceRecord, beat: Beat | None, now: float, interval_s: float, missed: int
) -> ApplianceState:
    """Drained wins (operator intent); then silence (`missed` beats late); then health.
    `now` is on the clock of `beat.seen` (monotonic), or of `beat.at` when it has none."""
    if record.drained:
        return "drained"
    if beat is None:
        return "unreachable"
    received = beat.seen if beat.seen is not None else beat.at
    if now - received > missed * interval_s:
        return "unreachable"
    return beat.health


def build_snapshot(
    sites: tuple[Site, ...],
    records: Mapping[str, ApplianceRecord],
    beats: Mapping[str, Beat],
    now: float,
    interval_s: float,
    missed: int,
    origin_url: str,
    min_keys_version: int = 0,
    digests: Mapping[str, str] | None = None,
    withdrawn: frozenset[str] = frozenset(),
) -> FleetSnapshot:
    appliances = []
    for name in sorted(records):
        rec, beat = records[name], beats.get(name)
        appliances.append(
            Appliance(
                name=name,
                site=rec.site,
                url=rec.url,
                state=state_of(rec, beat, now, interval_s, missed),
                capacity_bps=beat.capacity_bps if beat else 0.0,
                load_bps=beat.load_bps if beat else 0.0,
                connections=beat.connections if beat else 0,
                titles=beat.titles if beat else {},
                tiers=beat.tiers if beat else (),
                keys_version=beat.keys_version if beat else 0,
                no_room=no_room(beat),
            )
        )
    return FleetSnapshot(
        sites, tuple(appliances), origin_url, min_keys_version, digests or {}, withdrawn
    )


def no_room(beat: Beat | None) -> frozenset[str]:
    """The titles the appliance's last fill run found no room for."""
    if beat is None or not beat.fill_failures:
        return frozenset()
    return frozenset(f.title_id for f in beat.fill_failures if f.no_room)


def beat_to_dict(beat: Beat) -> dict[str, Any]:
    """A beat as JSON-ready data (the soft state a restarted manager starts from)."""
    return {
        "sequence": beat.sequence,
        "boot": beat.boot.hex(),
        "health": beat.health,
        "health_detail": beat.health_detail,
        "capacity_bps": beat.capacity_bps,
        "load_bps": beat.load_bps,
        "connections": beat.connections,
        "tiers": [[t.tier, t.capacity_bytes, t.used_bytes, t.fillable_bytes] for t in beat.tiers],
        "titles": {k: [v.digest, v.complete, v.size_bytes, v.tier] for k, v in beat.titles.items()},
        "plan_version": beat.plan_version,
        "keys_version": beat.keys_version,
        "fill_done": beat.fill_done,
        "fill_total": beat.fill_total,
        "fill_failures": [[f.title_id, f.reason, f.no_room] for f in beat.fill_failures],
    }


def beat_from_dict(doc: Mapping[str, Any], at: float, seen: float | None = None) -> Beat:
    """The saved beat, as if it had just arrived at `at` (`seen` on the monotonic clock),
    so the appliance has the usual missed-beats grace to send a real one. Raises KeyError,
    TypeError or ValueError on a document of another shape (AttributeError where a mapping
    is a list).

    Its sequence is a floor for later beats only when it names its boot: without one, a
    beat of the appliance restarted while this manager was down (sequence from 1 again)
    would be dropped as late until its sequence passed the saved one."""
    health = doc["health"]
    boot = bytes.fromhex(str(doc.get("boot", "")))
    if health not in ("ok", "degraded", "failing"):
        raise ValueError(f"health {health!r}")
    return Beat(
        at=at,
        seen=seen,
        sequence=int(doc["sequence"]) if boot else 0,
        boot=boot,
        health=health,
        health_detail=str(doc["health_detail"]),
        capacity_bps=float(doc["capacity_bps"]),
        load_bps=float(doc["load_bps"]),
        connections=int(doc["connections"]),
        tiers=tuple(_tier_space(*t) for t in doc["tiers"]),
        titles={
            str(k): HeldTitle(str(d), bool(c), int(n), _shared_tier(t))
            for k, (d, c, n, t) in doc["titles"].items()
        },
        plan_version=int(doc["plan_version"]),
        keys_version=int(doc["keys_version"]),
        fill_done=int(doc["fill_done"]),
        fill_total=int(doc["fill_total"]),
        # Saved before failures were kept: none.
        fill_failures=tuple(
            FillFailure(str(t), str(why), bool(full))
            for t, why, full in doc.get("fill_failures", ())
        ),
    )


def _tier_space(tier: Any, capacity: Any, used: Any = 0, fillable: Any = 0) -> TierSpace:
    """A saved tier space; one saved before used and fillable bytes were kept has neither."""
    return TierSpace(_shared_tier(tier), int(capacity), int(used), int(fillable))


def _shared_tier(value: Any) -> str:
    """A saved tier name, as the shared object when it is one of TIERS (JSON makes a new
    string per occurrence)."""
    tier = str(value)
    return _TIER_NAMES.get(tier, tier)


# A signed call is accepted only within auth.MAX_SKEW_S of our clock either way, so a
# copy of a beat can reach us at most this long after the beat itself was accepted.
REPLAY_WINDOW_S = 2 * auth.MAX_SKEW_S


BeatVerdict = Literal["taken", "repeat", "stale"]


def accept_beat(
    previous: Beat | None, incoming: Beat, replay_window_s: float = REPLAY_WINDOW_S
) -> BeatVerdict:
    """A beat counts once. "taken": it counts. "repeat": the same sequence as the last one
    of its boot, a resend whose answer was lost; its counts were taken with the first copy.
    "stale": a sequence below the last one of its boot, a late or replayed copy; its counts
    are not taken, and the appliance is told so (HeartbeatResponse.stale) and keeps them.

    A beat of another boot than the last one is a restart: it counts whatever its sequence
    (sequences restart at 1 with each boot). Appliances that send no boot: sequence 1
    after a higher one is a restart (their beat 1 carries no counts). The last sequence is
    a floor for `replay_window_s` only: a beat below it arriving later than that after the
    last accepted one was signed after it, so it is neither a late beat nor a replayed
    one, and it counts. Otherwise one sequence far ahead (a bug, or whoever held the key
    once) would drop every real beat for ever.
    """
    if previous is None or incoming.sequence > previous.sequence:
        return "taken"
    if incoming.boot != previous.boot and incoming.boot:
        return "taken"
    if not incoming.boot and incoming.sequence == 1 and previous.sequence != 1:
        return "taken"
    if incoming.sequence == previous.sequence:
        return "repeat"
    return "taken" if incoming.at - previous.at > replay_window_s else "stale"


def token_hash(token: str) -> str:
    """Join tokens are stored hashed: a leaked database grants no enrolment."""
    return hashlib.sha256(token.encode()).hexdigest()

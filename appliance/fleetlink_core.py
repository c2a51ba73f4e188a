"""The fleet link's decisions, without I/O: per-title counts kept until the fleet acknowledges
them, the heartbeat a set of figures becomes, plans checked whole before they apply
(edgeflix/versioning.py), and where the control plane stands against the grace period. Key
sets have rules of their own (fleetlink_keys.py), and so do this box's clock against the
fleet's (fleetlink_clock.py) and the failures the link explains (fleetlink_diagnosis.py).

appliance/fleetlink.py is the shell that gathers the figures, calls the fleet and persists
what these functions decide; tests/appliance/test_fleetlink_core.py drives them directly.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.fill.plan import FillPlan, PlanError, parse_plan
from edgeflix.proto.codec import MAX_COUNT_ENTRIES, MAX_COUNTS_BYTES, Counts, pack_counts
from edgeflix.proto.gen import fleet_pb2

Phase = Literal["unenrolled", "connected", "grace", "expired"]
HealthState = Literal["ok", "degraded", "failing"]
_HEALTH = {
    "ok": fleet_pb2.HEALTH_OK,
    "degraded": fleet_pb2.HEALTH_DEGRADED,
    "failing": fleet_pb2.HEALTH_FAILING,
}
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


# -- counts: exactly once across failed beats ----------------------------------------------


@dataclass(frozen=True)
class CountBatch:
    sequence: int
    counts: Mapping[str, Counts]


def batch_titles(pending: Mapping[str, Counts]) -> list[str]:
    """The titles one beat carries: all of them, unless more than the fleet takes in one
    batch (codec.MAX_COUNT_ENTRIES entries, MAX_COUNTS_BYTES once unpacked; after a long
    outage, say). Then the most watched go first and the rest wait for the next beats,
    rather than a batch the fleet refuses being resent forever."""
    # An entry serialised: the id, its field tags and lengths, two varints (at most 10 each).
    size = {t: len(t.encode()) + 28 for t in pending}
    if len(pending) <= MAX_COUNT_ENTRIES and sum(size.values()) <= MAX_COUNTS_BYTES:
        return list(pending)
    taken: list[str] = []
    total = 0
    for title in sorted(pending, key=lambda t: pending[t].bytes, reverse=True):
        if len(taken) == MAX_COUNT_ENTRIES or total + size[title] > MAX_COUNTS_BYTES:
            break
        taken.append(title)
        total += size[title]
    return taken


@dataclass
class CountLedger:
    """Per-title (requests, bytes) between beats.

    The workers' counters only rise (the supervisor keeps a replaced worker's totals), so
    each beat takes what a total rose by over the highest seen before (see observe). A
    batch stays outstanding, resent unchanged under the same sequence, until a beat
    carrying it is answered: the fleet drops a sequence it already has (the answer was
    lost, not the beat), so counts are neither lost nor added twice. Sequence 1 (a restart,
    which the fleet always accepts) carries no counts for the same reason.
    """

    sequence: int = 0
    # Chosen at each start (HeartbeatRequest.boot): the fleet compares sequences within
    # one boot only, so a restart is never taken for a late beat.
    boot: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    # Per title, the highest (requests, bytes) observed, kept while a title is missing from
    # a reading (at most as many titles as the totals themselves hold).
    highest: dict[str, tuple[int, int]] = field(default_factory=dict)
    pending: dict[str, Counts] = field(default_factory=dict)
    outstanding: CountBatch | None = None

    def observe(self, totals: Mapping[str, tuple[int, int]]) -> None:
        """Add to `pending` what each total rose by over its highest; a total at or below
        its highest adds nothing.

        No total of this ledger is ever reset: ledger and supervisor both live as long as
        the daemon (a restart makes a new ledger, under a new boot), and the supervisor
        keeps a replaced worker's counts. So a total that falls is a reading that missed a
        worker's counts (its file unreadable or deleted under it), which come back in a
        later one. Taking the fall for a reset and adding the whole new total sent the
        title's lifetime demand to the fleet again (1000, 1010, 1005 made 2015 pending);
        counting nothing until the total passes its old high counts each request once. A
        true reset, if one ever came, would be under-counted by the old high: less harm
        than phantom demand steering fill and replication."""
        for title, (requests, nbytes) in totals.items():
            r0, b0 = self.highest.get(title, (0, 0))
            dr, db = max(requests - r0, 0), max(nbytes - b0, 0)
            if dr or db:
                prev = self.pending.get(title, Counts(0, 0))
                self.pending[title] = Counts(prev.requests + dr, prev.bytes + db)
                self.highest[title] = (max(requests, r0), max(nbytes, b0))

    def next_batch(self) -> CountBatch:
        if self.outstanding is not None:
            return self.outstanding
        self.sequence += 1
        if self.sequence == 1:
            self.outstanding = CountBatch(1, {})
        else:
            taken = batch_titles(self.pending)
            self.outstanding = CountBatch(self.sequence, {t: self.pending.pop(t) for t in taken})
        return self.outstanding

    def acknowledge(self, sequence: int) -> None:
        if self.outstanding is not None and self.outstanding.sequence == sequence:
            self.outstanding = None

    def requeue(self, sequence: int) -> None:
        """The fleet answered the beat but did not take its counts (HeartbeatResponse.stale):
        they go back with what came since, under the next sequence."""
        batch = self.outstanding
        if batch is None or batch.sequence != sequence:
            return
        self.outstanding = None
        for title, c in batch.counts.items():
            prev = self.pending.get(title, Counts(0, 0))
            self.pending[title] = Counts(prev.requests + c.requests, prev.bytes + c.bytes)

    def unsent(self) -> dict[str, Counts]:
        """Everything not yet acknowledged (for /status)."""
        out = dict(self.pending)
        for title, c in (self.outstanding.counts if self.outstanding else {}).items():
            prev = out.get(title, Counts(0, 0))
            out[title] = Counts(prev.requests + c.requests, prev.bytes + c.bytes)
        return out


# -- the heartbeat --------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldTitle:
    id: str
    digest: str
    complete: bool
    size_bytes: int
    tier: str


@dataclass(frozen=True)
class BeatFigures:
    """What the appliance says about itself on one beat (gathered by the shell)."""

    health: HealthState
    reasons: tuple[str, ...]
    capacity_bps: float
    load_bps: float
    connections: int
    tiers: Mapping[str, tuple[int, int]]  # tier → (capacity bytes, used bytes)
    titles: tuple[HeldTitle, ...]
    plan_version: int
    keys_version: int
    fill_done: int = 0
    fill_total: int = 0
    fill_failed: tuple[str, ...] = ()
    # KeySet.digest / PlanResponse.digest of what it runs (b"": unknown).
    keys_digest: bytes = b""
    plan_digest: bytes = b""
    # Tier → the used bytes at which it takes no more titles (its disks' high watermarks).
    fillable: Mapping[str, int] = field(default_factory=dict)
    # Failed title → the fill's message (those of `fill_failed` it has one for).
    fill_reasons: Mapping[str, str] = field(default_factory=dict)


# What the fill says of a title there was no room for: the store's CapacityError ("title T
# does not fit on the hdd tier: …", appliance/capacity.py) or a disk full under its download.
_NO_ROOM = ("does not fit on the", os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
# A reason as the fleet keeps it (fleet/grpc_api.py MAX_FAILURE_REASON).
MAX_REASON = 300
# Failures a beat details (the others go as ids in `failed_titles` only): every beat carries
# them, and a run that failed everything (the origin down) failed thousands of titles.
MAX_DETAILED_FAILURES = 256


def no_room(reason: str) -> bool:
    """Whether a failed title's message says it found no room on this appliance."""
    return any(marker in reason for marker in _NO_ROOM)


def fill_failures(failed: Iterable[str], reasons: Mapping[str, str]) -> list[fleet_pb2.FillFailure]:
    """The first MAX_DETAILED_FAILURES failed titles with their reasons, shortened."""
    return [
        fleet_pb2.FillFailure(
            title_id=t,
            reason=reasons.get(t, "")[:MAX_REASON],
            no_room=no_room(reasons.get(t, "")),
        )
        for t in list(failed)[:MAX_DETAILED_FAILURES]
    ]


def link_health(
    state: HealthState, reasons: tuple[str, ...], phase: Phase, lost_for_s: float
) -> tuple[HealthState, tuple[str, ...]]:
    """The box's own health, lowered to degraded once the grace period is over."""
    if phase != "expired":
        return state, reasons
    why = f"fleet manager unreachable for {lost_for_s / 3600:.1f} h (grace period over)"
    return ("failing" if state == "failing" else "degraded"), (*reasons, why)


def titles_digest(titles: Iterable[HeldTitle]) -> bytes:
    """What the held titles are, in 16 bytes: every field of every title, in order (the
    manager keeps the list it read last while this stays the same)."""
    h = hashlib.blake2b(digest_size=16)
    for t in titles:
        h.update(f"{t.id}\0{t.digest}\0{t.complete:d}\0{t.size_bytes}\0{t.tier}\n".encode())
    return h.digest()


def build_beat(
    name: str,
    batch: CountBatch,
    f: BeatFigures,
    url: str = "",
    boot: bytes = b"",
    fleet_titles: bytes = b"",
) -> fleet_pb2.HeartbeatRequest:
    """`url`: where the box serves now, so the fleet follows a change since enrolment.
    `fleet_titles`: the digest of the held list the fleet said it keeps; while ours is the
    same, the list itself is left out (megabytes for tens of thousands of titles)."""
    held = sorted(f.titles, key=lambda t: t.id)
    digest = titles_digest(held)
    omit = bool(fleet_titles) and fleet_titles == digest
    return fleet_pb2.HeartbeatRequest(
        appliance=name,
        url=url,
        sequence=batch.sequence,
        health=_HEALTH[f.health],
        health_detail="; ".join(f.reasons)[:200],
        capacity_bps=max(f.capacity_bps, 0.0),
        load_bps=max(f.load_bps, 0.0),
        connections=max(f.connections, 0),
        tiers=[
            fleet_pb2.TierSpace(
                tier=t, capacity_bytes=cap, used_bytes=used, fillable_bytes=f.fillable.get(t, 0)
            )
            for t, (cap, used) in sorted(f.tiers.items())
        ],
        titles=[
            fleet_pb2.HeldTitle(
                title_id=t.id,
                digest=t.digest,
                complete=t.complete,
                size_bytes=t.size_bytes,
                tier=t.tier,
            )
            for t in ([] if omit else held)
        ],
        titles_digest=digest,
        titles_omitted=omit,
        counts_zstd=pack_counts(batch.counts),
        plan_version=f.plan_version,
        keys_version=f.keys_version,
        keys_digest=f.keys_digest,
        plan_digest=f.plan_digest,
        boot=boot,
        fill=fleet_pb2.FillProgress(
            plan_version=f.plan_version,
            bytes_done=f.fill_done,
            bytes_total=f.fill_total,
            failed_titles=list(f.fill_failed),
            failures=fill_failures(f.fill_failed, f.fill_reasons),
        ),
    )


def load_bps(prev: tuple[float, int] | None, now: float, total_bytes: int) -> float:
    """Bits/s served between two readings of the byte total (0 on the first reading)."""
    if prev is None or now <= prev[0] or total_bytes < prev[1]:
        return 0.0
    return (total_bytes - prev[1]) * 8 / (now - prev[0])


def fill_progress(
    plan: FillPlan | None, sizes: Mapping[str, int], held: Mapping[str, str]
) -> tuple[int, int]:
    """(bytes held, bytes wanted) of the plan's titles; `held` maps title → digest."""
    if plan is None:
        return 0, 0
    done = total = 0
    for t in plan.titles:
        size = sizes.get(t.id, 0)
        total += size
        if t.id in held and (t.digest is None or held[t.id] == t.digest):
            done += size
    return done, total


# -- plans, checked whole ------------------------------------------------------------------


def plan_document(plan: fleet_pb2.Plan) -> dict[str, Any]:
    """A fleet Plan → the appliance's fill-plan JSON (appliance/fill/plan.py), the format
    fleet/publish.py writes and `[fill] plan` files use."""
    return {
        "titles": [
            {
                "id": t.title_id,
                "digest": t.digest if _SHA256.match(t.digest) else None,
                "sources": list(t.sources),
                "size": t.size_bytes or None,
            }
            for t in plan.titles
        ],
        "window": plan.fill_window or None,
        "timezone": plan.timezone or "UTC",
        "cap_bps": plan.cap_bps or None,
        "prune": True,
    }


def plan_sizes(plan: fleet_pb2.Plan) -> dict[str, int]:
    return {t.title_id: t.size_bytes for t in plan.titles}


def check_plan(document: Mapping[str, Any]) -> None:
    """ValueError unless every part of the plan is usable (then none of it applies)."""
    to_fill_plan(document)


def to_fill_plan(document: Mapping[str, Any]) -> FillPlan:
    """The fill plan of a document the fleet built: fields this version does not know (a
    later one saved it, before a rollback) are dropped, not refused (parse_plan)."""
    import json

    try:
        return parse_plan(json.dumps(document).encode(), "fleet plan", ignore_unknown=True)
    except PlanError as exc:
        raise ValueError(str(exc)) from None


# -- the control plane against the grace period --------------------------------------------


# Silent for this many beats, the fleet is lost (phase).
MISSED_BEATS = 3
# A connected link saves the fleet's last answer this often (and when it loses the fleet):
# `appliance status`, reading the saved files, allows for that lag (status.saved_phase).
CONTACT_SAVE_S = 60.0


def phase(
    enrolled: bool,
    last_contact: float | None,
    now: float,
    interval_s: float,
    grace_s: float,
    missed: int = MISSED_BEATS,
) -> Phase:
    """connected: the fleet answered within `missed` beats; grace: silent for longer, cached
    keys and plan in force; expired: silent for longer than the grace period. A contact
    after `now` (kept while the clock was ahead) counts as now: silence is never negative.
    The shell passes monotonic readings within a run, so a wall clock stepped back neither
    reads as "connected" while the fleet is away nor stretches the grace period."""
    if not enrolled:
        return "unenrolled"
    if last_contact is None:
        return "expired"
    silent = now - min(last_contact, now)
    if silent <= missed * interval_s:
        return "connected"
    return "grace" if silent <= grace_s else "expired"

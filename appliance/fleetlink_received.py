"""The plan and the key set the fleet sent, as this box runs them (I/O shell): each fetched
when newer, checked whole and never taken backwards (edgeflix/versioning.py; but see
`rebase`), persisted (fleetlink_state.py) before it is handed over: the plan to the fill
scheduler, its peer sources signed with the key the fleet signs with now, and the keys
usable now to the serving workers, with the clock correction they check tokens at. The key
rules (revoked, carried, which key signs) are fleetlink_keys.py's.

FleetLink (fleetlink.py) says when: it runs everything here on its thread, and /status reads
`plan` and `keys` under the link's lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from appliance.fill.plan import FillPlan
from appliance.fleetlink_core import Phase, check_plan, plan_document, plan_sizes, to_fill_plan
from appliance.fleetlink_files import SavedKeys, StoredPlan
from appliance.fleetlink_keys import (
    FleetKey,
    KeyHistory,
    KeyUpdate,
    check_keys,
    effective_keys,
    keys_from_proto,
    next_key_history,
    sign_peer_sources,
    signing_key,
    usable_keys,
)
from appliance.fleetlink_rpc import FleetRpc
from appliance.fleetlink_state import LinkState
from edgeflix import wallclock
from edgeflix.log import event
from edgeflix.proto.codec import CodecError, unpack_plan
from edgeflix.proto.gen import fleet_pb2
from edgeflix.versioning import Versioned, receive

log = logging.getLogger("appliance.fleet")
# Fill requests to site peers carry a token this long-lived; a plan whose window opens later
# than that falls back to the origin for those titles.
PEER_TOKEN_TTL_S = 2 * 86_400.0


class Handover(Protocol):
    """Where the plan and keys go (fleetlink.LinkSinks: the daemon's fill scheduler and
    serving workers)."""

    @property
    def submit_plan(self) -> Callable[[FillPlan], None]: ...
    @property
    def set_keys(self) -> Callable[[dict[str, bytes]], None]: ...
    @property
    def fill_state(self) -> Callable[[], dict[str, Any]]: ...
    @property
    def set_clock_correction(self) -> Callable[[float], None]: ...


class Received:
    """`call`: the link's signed call (None: it failed, and the link noted why); `grace`:
    the link's phase and `[fleet] after_grace` now, which the keys usable and a plan's
    pruning follow."""

    def __init__(
        self,
        name: str,
        store: LinkState,
        sinks: Handover,
        rpc: FleetRpc,
        call: Callable[[str, Any], Any | None],
        grace: Callable[[], tuple[Phase, str]],
        lock: threading.Lock,
    ) -> None:
        self.name = name
        self.store = store
        self.sinks = sinks
        self.rpc = rpc
        self._call = call
        self._grace = grace
        self._lock = lock
        self.plan: StoredPlan | None = None
        self.keys: Versioned[tuple[FleetKey, ...]] | None = None
        self.keys_digest = b""  # KeySet.digest of `keys`, reported in every beat
        # Keys revoked (refused even when a set carries them again) and carried past their
        # set (a restored manager's lacks them): fleetlink_keys.next_key_history.
        self.key_history = KeyHistory()
        self._published_keys: dict[str, bytes] | None = None
        self._published_correction = 0.0  # the workers start with none
        self._fill_now_runs: int | None = None
        self._fill_now_pending = False
        self._peer_key: str | None = None  # the key the submitted plan's peer URLs carry

    def restore(self, plan: StoredPlan | None, saved: SavedKeys | None) -> None:
        """What the last run kept, as LinkState reads it: held, not yet handed over
        (FleetLink.restore does that once it knows its phase)."""
        self.plan = plan
        if saved is not None:
            self.keys, self.keys_digest = saved.keys, saved.digest
            self.key_history = history = saved.history
            # Said again at each start while the fleet's set still carries a revoked key.
            back = {k.id for k in saved.keys.payload} & history.revoked.keys()
            self._say_keys(KeyUpdate(history, tuple(sorted(back))))

    # -- plans -----------------------------------------------------------------------------

    def fetch_plan(self, rebase: bool = False) -> bool:
        """Fetch and apply the fleet's plan if newer; False when the fleet did not answer."""
        have = self.plan.version if self.plan and not rebase else 0
        req = fleet_pb2.GetPlanRequest(appliance=self.name, have_version=have)
        resp = self._call("GetPlan", req)
        if resp is None:
            return False
        if resp.unchanged or resp.version == 0:
            return True
        try:
            proto = unpack_plan(resp.plan_zstd)
        except CodecError as exc:
            event(log, "fleet.plan_rejected", logging.ERROR, version=resp.version, reason=str(exc))
            return True
        self.apply_plan(
            resp.version, plan_document(proto), plan_sizes(proto), rebase=rebase, digest=resp.digest
        )
        return True

    def apply_plan(
        self,
        version: int,
        document: dict[str, Any],
        sizes: dict[str, int],
        *,
        rebase: bool = False,
        digest: bytes = b"",
    ) -> str:
        """Whole or not at all, never backwards (but see FleetLink._rebase); persisted before
        the scheduler sees it. `digest` (PlanResponse.digest) goes back to the fleet in
        beats."""
        running = Versioned("plan", self.plan.version, self.plan.document) if self.plan else None
        if rebase:
            running = None
        result = receive(running, Versioned("plan", version, document), check_plan)
        if result.action != "applied":
            level = logging.ERROR if result.action == "rejected" else logging.INFO
            event(log, f"fleet.plan_{result.action}", level, version=version, reason=result.reason)
            return result.action
        stored = StoredPlan(version, document, sizes, digest)
        self.store.save_plan(stored)
        with self._lock:
            self.plan = stored
        self.submit(stored)
        event(log, "fleet.plan_applied", version=version, titles=len(document["titles"]))
        return "applied"

    def submit(self, stored: StoredPlan, *, window: bool = True) -> None:
        keys = self.verifying_keys()
        now = self.rpc.fleet_time()  # peers check the tokens at the fleet's time too
        doc = sign_peer_sources(stored.document, keys, now, PEER_TOKEN_TTL_S)
        key = signing_key(keys, now)
        self._peer_key = key.id if key else None
        phase, after_grace = self._grace()
        if phase == "expired" and after_grace == "degrade":
            # A plan the fleet may have replaced long ago deletes nothing.
            doc["prune"] = False
        if not window:
            doc["window"] = None
        self.sinks.submit_plan(to_fill_plan(doc))

    def fill_now(self, asked: bool) -> None:
        """`edgeflix fleet fill --now` (`asked` by the beat's answer): one run outside the
        window, then the window again; kept until there is a plan to run."""
        if asked:
            self._fill_now_pending = True
        if not self._fill_now_pending or self.plan is None:
            return
        self._fill_now_pending = False
        self._fill_now_runs = int(self.sinks.fill_state().get("runs", 0))
        self.submit(self.plan, window=False)
        event(log, "fleet.fill_now", plan=self.plan.version)

    def follow_fill_now(self) -> None:
        if self._fill_now_runs is None or self.plan is None:
            return
        st = self.sinks.fill_state()
        if int(st.get("runs", 0)) > self._fill_now_runs and not st.get("running"):
            self._fill_now_runs = None
            self.submit(self.plan)

    def resign_peer_sources(self) -> None:
        """Peer fill URLs are signed when the plan is handed to the fill; a key the fleet
        has retired verifies only for hours, so the plan is handed over again, signed anew,
        once the fleet signs with another key (daily): else tomorrow night's fill from a
        peer would be refused, and fall back to the origin."""
        if self.plan is None or self._fill_now_runs is not None:
            return
        key = signing_key(self.verifying_keys(), self.rpc.fleet_time())
        if (key.id if key else None) != self._peer_key:
            self.submit(self.plan)

    # -- keys ------------------------------------------------------------------------------

    def fetch_keys(self, rebase: bool = False) -> bool:
        """Fetch and apply the fleet's key set if newer; False when the fleet did not answer."""
        have = self.keys.version if self.keys and not rebase else 0
        req = fleet_pb2.GetKeysRequest(appliance=self.name, have_version=have)
        resp = self._call("GetKeys", req)
        if resp is None:
            return False
        if not resp.unchanged:
            incoming = keys_from_proto(resp.keys)
            self.apply_keys(incoming, rebase=rebase, digest=resp.keys.digest,
                            rebased=resp.keys.rebased)  # fmt: skip
        return True

    def apply_keys(
        self,
        incoming: Versioned[tuple[FleetKey, ...]],
        *,
        rebase: bool = False,
        digest: bytes = b"",
        rebased: bool = False,
    ) -> str:
        """`rebased`: the fleet marked the set re-stamped after a restore (KeySet.rebased)."""
        result = receive(None if rebase else self.keys, incoming, check_keys)
        if result.action != "applied":
            level = logging.ERROR if result.action == "rejected" else logging.INFO
            event(
                log,
                f"fleet.keys_{result.action}",
                level,
                version=incoming.version,
                reason=result.reason,
            )
            return result.action
        running = self.keys
        # Enrolling again, a version not above ours is another database's (restored, new);
        # so is a set the fleet marks rebased: it restored a backup and moved past our set.
        other = rebased or (rebase and running is not None and incoming.version <= running.version)
        held = running.payload if running is not None else ()
        # At the fleet's time, as it retires keys: a box behind it would take a key dropped
        # at its end for one revoked before it, and refuse it after a restore.
        update = next_key_history(
            held, self.key_history, incoming.payload, self.rpc.fleet_time(), other_lineage=other
        )
        self.store.save_keys(incoming, digest, update.history)
        with self._lock:
            self.keys = incoming
            self.keys_digest = digest
            self.key_history = update.history
        self._say_keys(update)
        self.publish_keys()
        event(log, "fleet.keys_applied", version=incoming.version, keys=len(incoming.payload))
        return "applied"

    def _say_keys(self, update: KeyUpdate) -> None:
        for key_id in update.returned:
            until = update.history.revoked[key_id]
            event(
                log,
                "fleet.revoked_key_returned",
                logging.ERROR,
                key=key_id,
                reason=f"the fleet's key set carries key {key_id} again, which it revoked "
                f"before: refused here (until {wallclock.iso(until)} at least)",
                action="the fleet manager was restored from a backup older than the "
                f"revocation: revoke it again there (edgeflix fleet keys revoke {key_id})",
            )
        if update.revoked:
            event(log, "fleet.keys_revoked", keys=" ".join(update.revoked))
        if update.carried:
            carried = [k for k in update.history.carried if k.id in update.carried]
            until = max(k.verify_until for k in carried)
            event(
                log,
                "fleet.keys_carried",
                logging.WARNING,
                keys=" ".join(update.carried),
                until=wallclock.iso(until),
                reason="the fleet's key set lacks keys this box verified with, and is not "
                "their successor (a fleet manager restored from a backup, or a new one)",
                action="URLs signed with them before keep working until they expire; "
                "nothing is signed with them any more",
            )

    def verifying_keys(self) -> tuple[FleetKey, ...]:
        """The keys tokens are checked (and peer URLs signed) with: fleetlink_keys."""
        return effective_keys(self.keys.payload if self.keys else (), self.key_history)

    def publish_keys(self) -> None:
        """Hand the workers the keys usable now, when that set changed (a key's verification
        period ended, a new set arrived, the grace period ran out), and the clock correction
        they check tokens with, when it changed."""
        keys = self.verifying_keys()
        phase, after_grace = self._grace()
        usable = usable_keys(keys, self.rpc.fleet_time(), phase, after_grace)
        if usable != self._published_keys:
            self.sinks.set_keys(usable)
            self._published_keys = usable
        correction = self.rpc.correction
        if correction != self._published_correction:
            self.sinks.set_clock_correction(correction)
            self._published_correction = correction

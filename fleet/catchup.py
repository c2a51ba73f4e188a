"""Catching up with versions this manager did not issue. Its database restored from a backup
(or replaced), it numbers key sets and plans on from the backup's, while an appliance may run
a higher version, or the same version with other content (the backup's next rotation made
another key under the number the appliance already runs). Appliances fetch only a version
above their own and never apply one version twice with other content; so ours moves above
theirs, which they then fetch and apply whole. FleetService (fleet/service.py) hands each
beat it takes here, and asks which keys sign and whom a plan leaves out.

Why this rules the race out rather than narrowing it: a version number may be reused, but
never silently. Every beat carries the digest of what the appliance runs; the only case where
an appliance would not fetch ours, its version equal to ours, is exactly the case compared
here, so whenever an appliance reports (its first beat to a restored manager, or days later,
back from an outage), a conflict is seen and moved past. Learning the highest version before
issuing one could not do that: an appliance that is off during the restore reports only later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from edgeflix.log import event
from fleet.keyring import Keyring
from fleet.keys import KeySet
from fleet.planning import PlanJob
from fleet.plans import FillPlan
from fleet.registry import Beat
from fleet.store import Store

log = logging.getLogger("fleet")
# A version reported above ours by more than this is an appliance's bug, not a restored
# backup: it is not followed (a version near 2**64 would not fit the wire or the table).
MAX_VERSION_JUMP = 1_000_000
# The key ids of the set a catch-up made (see CatchUp.keys_after): while the key set holds
# exactly these (no rotation or revocation since), it goes out marked `rebased`.
KEYS_REBASED_META = "keys_rebased"
RESTORED_ACTION = (
    "key revocations and rotations made after the backup are lost here: revoke again any key "
    "revoked since (edgeflix fleet keys revoke ID); appliances keep refusing the ones they saw "
    "revoked"
)


def foreign_keys(keyring: Keyring, beat: Beat) -> bool:
    """The beat reports a key set this fleet did not issue: a version above ours, or ours
    with other content (by digest; appliances that send none are taken at their word)."""
    ours = keyring.keys.version
    if beat.keys_version > ours:
        return True
    return (
        beat.keys_version == ours
        and bool(beat.keys_digest)
        and beat.keys_digest != keyring.digest()
    )


class CatchUp:
    """What this start of the manager caught up with, and what follows from it until the
    next start."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rebased_ids = _key_ids(store.meta(KEYS_REBASED_META))
        # A catch-up rotates once per start (a restore is a restart): an appliance reporting
        # a higher version beat after beat must not make a key each time.
        self.rotated = False
        # Set by a catch-up of the plan (see plan_after): the plan a round must go above, and
        # from then on the plans adopted leave out appliances not heard since this start
        # (their beats are the backup's); the round in flight with whom it leaves out.
        self.plan_floor = 0
        self.plan_restored = False
        self.job_left_out: tuple[PlanJob, frozenset[str]] | None = None
        self.heard: set[str] = set()  # appliances with a beat taken since this start

    # -- keys ----------------------------------------------------------------------------

    def keys_rebased(self, keys: KeySet) -> bool:
        """Whether `keys` is the set a catch-up made (no rotation or revocation since)."""
        return bool(keys.keys) and self.rebased_ids == {k.id for k in keys.keys}

    def keys_after(self, name: str, beat: Beat, keyring: Keyring) -> bool:
        """Whether `keyring`'s set moved above the one `name`'s beat reports: this fleet did
        not issue that one."""
        ours = keyring.keys.version
        if foreign_keys(keyring, beat) and beat.keys_version <= ours + MAX_VERSION_JUMP:
            self._rebase_keys(name, beat.keys_version, keyring)
            return True
        return False

    def _rebase_keys(self, name: str, reported: int, keyring: Keyring) -> None:
        """Our key set above the version `name` reports, marked rebased (KeySet.rebased):
        the keys it holds that ours lacks were made after the backup, not revoked. With a
        new key signing at once: the backup's signing key may have been revoked since, and
        appliances refuse it (they remember revocations), so every URL signed with it until
        the next scheduled rotation (up to a day) would fail."""
        keys, rotated = keyring.keys, not self.rotated
        # No new key once rotated at this start already: that key is this manager's own.
        new = keyring.rebased_above(reported, new_key=rotated)
        ids = sorted(k.id for k in new.keys)
        # The mark first: alone (the key set's write failing) it names ids no key set holds.
        self.store.set_meta(KEYS_REBASED_META, json.dumps(ids))
        self.rebased_ids = frozenset(ids)
        keyring.save(new)
        self.rotated = True
        event(log, "fleet.keys_version_caught_up", logging.WARNING, appliance=name,
              reported=reported, version=keyring.keys.version)  # fmt: skip
        if rotated:
            event(
                log,
                "fleet.restored_from_backup",
                logging.ERROR,
                appliance=name,
                reported=reported,
                version=keyring.keys.version,
                signing=keyring.signing_id(),
                reason=f"appliance {name} runs key set {reported}, which this manager did not "
                f"issue (it had {keys.version}): its database was restored from a backup, or "
                "replaced; a new key signs from now",
                action=RESTORED_ACTION,
            )

    # -- plans ---------------------------------------------------------------------------

    def plan_after(
        self, name: str, beat: Beat, current: FillPlan | None, plan_digest: Callable[[], bytes]
    ) -> bool:
        """Whether the plan `name` runs is not ours (`current`, of digest `plan_digest()`):
        then the next round's plan goes out above it. Ours is not re-stamped and sent as it
        is: it is the backup's, and an appliance applying it deletes the titles planned since
        (a plan moments later fetches them again). A round planned before this beat is not
        adopted, and the rounds from now leave out appliances not heard from since this start
        (their beats, like the plan, are the backup's): they keep what they run until they
        beat."""
        ours = current.version if current is not None else 0
        reported = beat.plan_version
        if not (
            ours < reported <= ours + MAX_VERSION_JUMP
            or (
                current is not None
                and reported == ours
                and beat.plan_digest
                and beat.plan_digest != plan_digest()
            )
        ):
            return False
        if reported > self.plan_floor:
            event(
                log,
                "fleet.plan_version_caught_up",
                logging.WARNING,
                appliance=name,
                reported=reported,
                version=ours,
                action="the next plan, made from what appliances report holding, goes out "
                "above it; appliances not heard from since this start keep their plans until "
                "they beat",
            )
        self.plan_floor = max(self.plan_floor, reported)
        self.plan_restored = True
        self.job_left_out = None
        return True

    def hear(self, name: str) -> bool:
        """A beat of `name` taken. Whether it is to be planned from now: its first since
        this start, after a catch-up left it out of the plans until it beat."""
        if name in self.heard:
            return False
        self.heard.add(name)
        return self.plan_restored

    def forget(self, name: str) -> None:
        self.heard.discard(name)

    def planning(self, job: PlanJob) -> None:
        """A round planned from `job`: after a catch-up, its plan is to leave out who is not
        heard from since this start."""
        if self.plan_restored:
            unheard = frozenset(a.name for a in job.appliances if a.name not in self.heard)
            self.job_left_out = (job, unheard)

    def left_out_of(self, job: PlanJob) -> frozenset[str] | None:
        """Who `job`'s plan leaves out; None: it is not to be adopted, planned before a
        catch-up."""
        if not self.plan_restored:
            return frozenset()
        made = self.job_left_out
        return made[1] if made is not None and made[0] is job else None


def _key_ids(raw: str | None) -> frozenset[str] | None:
    """The ids KEYS_REBASED_META keeps (None: none, or not readable)."""
    try:
        ids = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return None
    return frozenset(ids)

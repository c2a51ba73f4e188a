"""URL-token keys handed from the supervisor to its serving workers through a small JSON file,
so a SIGHUP reload reaches every worker without restarting it or closing a connection. The
fleet link's clock correction goes with them: the fleet signs token expiries on its clock,
so a box whose clock is off checks them at its clock plus that correction.

The supervisor (supervisor.py) writes the file atomically with a rising generation; each worker
(worker.py) checks it with its storage view, forgetting the routes it remembered when the
grants changed, and reports the generation it applied in its counters, which is how the
supervisor knows the reload is complete. Stdlib only: workers import this and stay small.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# A correction further than this is no clock a box was left at (edgeflix.proto.auth
# MAX_CORRECTION_S, repeated: workers import the standard library only; a test keeps them
# equal).
MAX_CLOCK_CORRECTION_S = 30 * 86_400.0


@dataclass(frozen=True)
class KeySet:
    generation: int
    tokens_required: bool
    keys: Mapping[str, bytes]
    # Seconds added to this box's clock to check token expiries at the fleet manager's time
    # (appliance/fleetlink_rpc.py learns it); 0.0 without a fleet or with the clock right.
    clock_correction: float = 0.0


def checked_correction(value: object) -> float:
    """`value` as a correction; ValueError unless a finite number within the bound."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"clock correction {value!r} is not a number")
    if not abs(value) <= MAX_CLOCK_CORRECTION_S:  # NaN too
        raise ValueError(f"clock correction {value!r} is out of range")
    return float(value)


class KeyedSite(Protocol):
    """What a KeyFile updates (appliance.server.ApplianceSite)."""

    required: bool
    keys: dict[str, bytes]
    keys_generation: int
    clock_correction: float


def write_keys(path: Path, keys: KeySet) -> None:
    body = {
        "generation": keys.generation,
        "tokens_required": keys.tokens_required,
        "keys": {kid: base64.b64encode(secret).decode() for kid, secret in keys.keys.items()},
        "clock_correction": checked_correction(keys.clock_correction),
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(body))
        fh.flush()
        os.fchmod(fh.fileno(), 0o600)  # secrets: readable by the daemon's user only
    os.replace(tmp, path)


def read_keys(path: Path) -> KeySet:
    body = json.loads(path.read_text())
    keys = {str(k): base64.b64decode(v) for k, v in body["keys"].items()}
    # Absent in a file from before the correction: none.
    correction = checked_correction(body.get("clock_correction", 0.0))
    return KeySet(int(body["generation"]), bool(body["tokens_required"]), keys, correction)


class KeyFile:
    """A worker's view of the key file: `refresh(site)` re-reads it only when it changed
    (a new inode after each atomic replace), so each check costs one stat()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None

    def refresh(self, site: KeyedSite) -> bool:
        """Apply the file if it was replaced; True when that changed what a URL grants
        (tokens turned on or off, a key added, dropped or changed): any routing decision
        taken before is void then, such as a route remembered while tokens were off."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == self._seen:
            return False
        try:
            keys = read_keys(self.path)
        except (OSError, ValueError, KeyError):
            return False  # half-visible or damaged: keep the keys we have, retry next check
        self._seen = stamp
        changed = site.required != keys.tokens_required or site.keys != keys.keys
        site.keys = dict(keys.keys)
        site.required = keys.tokens_required
        site.keys_generation = keys.generation
        # Not a change of grants: tokens are checked per request, no route is remembered.
        site.clock_correction = keys.clock_correction
        return changed

"""URL-token keys handed from the supervisor to its serving workers through a small JSON file,
so a SIGHUP reload reaches every worker without restarting it or closing a connection.

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


@dataclass(frozen=True)
class KeySet:
    generation: int
    tokens_required: bool
    keys: Mapping[str, bytes]


class KeyedSite(Protocol):
    """What a KeyFile updates (appliance.server.ApplianceSite)."""

    required: bool
    keys: dict[str, bytes]
    keys_generation: int


def write_keys(path: Path, keys: KeySet) -> None:
    body = {
        "generation": keys.generation,
        "tokens_required": keys.tokens_required,
        "keys": {kid: base64.b64encode(secret).decode() for kid, secret in keys.keys.items()},
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
    return KeySet(int(body["generation"]), bool(body["tokens_required"]), keys)


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
        return changed

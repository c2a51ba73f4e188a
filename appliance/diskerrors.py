"""The disks' failed I/O remembered across restarts: diskwatch.DiskWatch counts it in memory
to decide a disk takes no writes or goes out (WriteLimits), and a restart forgot it, so a
dying disk was trusted again after each one. Here it is kept in one small file beside the
index (`errors_file`), rewritten whole at each change, and read at the watch's start.

What the file remembers follows the in-memory rules: errors age out of the window, a disk
whose probe fails or whose re-verify passes has its errors forgotten (the watch drops them,
and the next write says so), and so has a disk replaced meanwhile (another marker,
diskclaim.identity). Times are kept on the wall clock and turned back into the watch's own.
Pure cores: `parse`, `render`, `recalled`, `remembered`. Shell: `ErrorMemory`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import diskclaim
from edgeflix import atomicfile
from edgeflix.log import event

log = logging.getLogger("appliance.health")

FORMAT = 1
# The verdict needs the last few (WriteLimits.take_out_after); a bound on a disk that fails
# for a day without being taken out.
KEEP_PER_DISK = 256
# The file's size bound: a damaged or foreign file is not read whole.
_MAX_BYTES = 4 << 20

Errors = list[tuple[float, str]]  # (time, what failed), oldest first


@dataclass(frozen=True)
class Remembered:
    """One disk's failed I/O on the wall clock, and the disk's identity when recorded
    (None: it had no readable marker then, so any disk there is taken for it)."""

    identity: str | None
    errors: tuple[tuple[float, str], ...]


def errors_file(index: Path) -> Path:
    """Beside the index and named after it, as its daemon lock is: the index's daemon is its
    only writer (daemon.single_instance)."""
    return index.with_name(f"{index.name}.disk-errors.json")


def render(records: Mapping[str, Remembered]) -> bytes:
    disks = {
        disk: {
            "identity": r.identity,
            "errors": [{"at": at, "what": what} for at, what in r.errors],
        }
        for disk, r in sorted(records.items())
    }
    return json.dumps({"format": FORMAT, "disks": disks}, indent=1).encode() + b"\n"


def parse(raw: bytes) -> dict[str, Remembered] | None:
    """The file's records; None when it is damaged or of a newer format (read as no errors
    remembered). Unknown keys are ignored; an entry of the wrong shape is left out."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    disks = doc.get("disks")
    if not isinstance(disks, dict):
        return None
    records = {}
    for disk, body in disks.items():
        record = _record(body)
        if record is not None:
            records[disk] = record
    return records


def _record(body: Any) -> Remembered | None:
    if not isinstance(body, dict) or not isinstance(body.get("errors"), list):
        return None
    identity = body.get("identity")
    if identity is not None and not isinstance(identity, str):
        return None
    errors = []
    for e in body["errors"]:
        at = e.get("at") if isinstance(e, dict) else None
        what = e.get("what", "") if isinstance(e, dict) else None
        if isinstance(at, (int, float)) and not isinstance(at, bool) and isinstance(what, str):
            errors.append((float(at), what))
    return Remembered(identity, tuple(sorted(errors)[-KEEP_PER_DISK:]))


Identity = str | None | OSError  # OSError: the disk's marker could not be looked at


def same_disk(recorded: str | None, now: Identity) -> bool:
    """The disk mounted now is the one the errors were recorded on. When either side cannot
    tell (no marker then, unreadable now), it is taken to be: trusting a dying disk again is
    the worse mistake. A disk without a marker where one had one is another disk (or none
    is mounted: its probe says so, and its errors go then anyway)."""
    if recorded is None or isinstance(now, OSError):
        return True
    return recorded == now


def recalled(
    records: Mapping[str, Remembered],
    identities: Mapping[str, Identity],
    *,
    wall_now: float,
    clock_now: float,
    window_s: float,
) -> tuple[dict[str, Errors], list[str]]:
    """The errors to count again, on the watch's clock (disk → errors), for the disks in
    `identities` (the watched ones, with who is mounted there now), and the disks whose
    errors are forgotten because another disk is in their place. Errors older than the
    window are dropped; one dated after now (the wall clock set back) counts as now."""
    counted: dict[str, Errors] = {}
    replaced = []
    for disk, record in records.items():
        if disk not in identities:
            continue  # no longer a configured disk
        if not same_disk(record.identity, identities[disk]):
            replaced.append(disk)
            continue
        kept = [
            (clock_now - max(wall_now - at, 0.0), what)
            for at, what in record.errors
            if wall_now - at < window_s
        ]
        if kept:
            counted[disk] = kept
    return counted, replaced


def remembered(
    errors: Mapping[str, Sequence[tuple[float, str]]],
    identities: Mapping[str, str | None],
    *,
    wall_now: float,
    clock_now: float,
    window_s: float,
) -> dict[str, Remembered]:
    """The records to keep for the watch's errors (on its clock) at `clock_now`: those
    within the window, at most KEEP_PER_DISK a disk, on the wall clock."""
    records = {}
    for disk, found in errors.items():
        recent = [
            (wall_now - (clock_now - t), what) for t, what in found if clock_now - t < window_s
        ]
        if recent:
            records[disk] = Remembered(identities.get(disk), tuple(recent[-KEEP_PER_DISK:]))
    return records


class ErrorMemory:
    """The file's reader at the watch's start and its writer at each change (one writer at a
    time: DiskWatch serialises its calls). A file that cannot be written is said once per
    failure and the errors stay counted in memory."""

    def __init__(
        self,
        path: Path,
        identity: Callable[[Path], str | None] = diskclaim.identity,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._identity, self._wall = identity, wall
        # Who was mounted when a disk's errors were first kept; dropped with its errors, so
        # a disk swapped while the daemon runs is looked at afresh.
        self._identities: dict[str, str | None] = {}

    def recall(
        self, disks: Collection[str], clock_now: float, window_s: float
    ) -> dict[str, Errors]:
        records = self._read()
        if not records:
            return {}
        identities = {d: self._look(d) for d in disks if d in records}
        counted, replaced = recalled(
            records, identities, wall_now=self._wall(), clock_now=clock_now, window_s=window_s
        )
        for disk in replaced:
            event(log, "disk.errors_forgotten", disk=disk, reason="another disk is mounted there")
        for disk, errors in counted.items():
            now = identities[disk]
            self._identities[disk] = records[disk].identity if isinstance(now, OSError) else now
            event(log, "disk.errors_remembered", logging.WARNING, disk=disk, errors=len(errors),
                  last=errors[-1][1])  # fmt: skip
        if replaced or len(counted) != len(records):
            self.keep(counted, clock_now, window_s)
        return counted

    def keep(
        self, errors: Mapping[str, Sequence[tuple[float, str]]], clock_now: float, window_s: float
    ) -> None:
        for disk in set(self._identities) - set(errors):
            del self._identities[disk]
        for disk in errors:
            if disk not in self._identities:
                looked = self._look(disk)
                self._identities[disk] = None if isinstance(looked, OSError) else looked
        records = remembered(
            errors, self._identities, wall_now=self._wall(), clock_now=clock_now, window_s=window_s
        )
        try:
            if records or self.path.exists():
                atomicfile.write_atomic(self.path, render(records), 0o644)
        except OSError as exc:
            event(log, "disk.errors_unsaved", logging.WARNING, file=str(self.path),
                  error=exc.strerror or str(exc))  # fmt: skip

    def _look(self, disk: str) -> Identity:
        try:
            return self._identity(Path(disk))
        except OSError as exc:
            return exc

    def _read(self) -> dict[str, Remembered]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            event(log, "disk.errors_unreadable", logging.WARNING, file=str(self.path),
                  error=exc.strerror or str(exc))  # fmt: skip
            return {}
        records = parse(raw) if len(raw) <= _MAX_BYTES else None
        if records is None:
            event(log, "disk.errors_unreadable", logging.WARNING, file=str(self.path),
                  error="damaged, or of a newer Edgeflix: read as no errors")  # fmt: skip
            return {}
        return records

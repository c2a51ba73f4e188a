"""Counters one server process keeps: requests and bytes by status and title, connections,
sendfile errors. Plain ints updated on the hot path; `snapshot()` is what a supervisor merges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NO_TITLE = "-"  # requests that reached no file (404s, 400s): one label, not one per junk path
# Files whose read failed, remembered so each counts once (a bound on a worker's memory).
_FAILED_FILES_MAX = 4096
FAILED_PATHS_MAX = 256


@dataclass
class ServerStats:
    requests: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    open_connections: int = 0
    connections_total: int = 0
    rejected_connections: int = 0  # over serve.max_connections
    evicted_connections: int = 0  # idle ones closed at the cap to let a newcomer in
    header_timeouts: int = 0  # dropped while still sending request headers (slowloris)
    accept_errors: int = 0  # accept() failed: out of file descriptors (EMFILE/ENFILE)
    sendfile_errors: int = 0
    # Read-ins of uncached bytes (residency.py) that took >= 2 s, or failed (EIO): a disk
    # dying under the files it serves.
    slow_reads: int = 0
    read_errors: int = 0
    # The same by the file system they happened on (st_dev → [slow reads, read errors]), for
    # a caller that knows which disk that is (the appliance's health).
    disk_faults: dict[int, list[int]] = field(default_factory=dict)
    # Paths of the files whose read failed, first failure each, the newest FAILED_PATHS_MAX:
    # for the appliance to drop them (filled again) rather than answer 500 for them on.
    failed_paths: list[str] = field(default_factory=list)
    _failed_files: set[tuple[int, int]] = field(default_factory=set, repr=False)
    # Responses cut after their head by a failure on our side (the disk's EIO, a file
    # truncated under us), by title: not in `requests`, whose status the client never got whole.
    aborted: dict[str, int] = field(default_factory=dict)

    def record(self, status: int, title: str, nbytes: int) -> None:
        counts = self.requests.get((status, title))
        if counts is None:
            self.requests[(status, title)] = [1, nbytes]
        else:
            counts[0] += 1
            counts[1] += nbytes

    def disk_fault(self, dev: int, ino: int, slow: bool, failed: bool, path: str = "") -> None:
        """A read-in that was slow or failed. A file's failures count once: every player
        asking for one bad segment would otherwise add up to a disk's take-out in seconds
        (as Traffic Server, which drops an object on its read error, counts it once)."""
        if failed:
            if (dev, ino) in self._failed_files:
                failed = False
            else:
                if len(self._failed_files) < _FAILED_FILES_MAX:
                    self._failed_files.add((dev, ino))
                if path:
                    self.failed_paths = [*self.failed_paths, path][-FAILED_PATHS_MAX:]
        faults = self.disk_faults.setdefault(dev, [0, 0])
        faults[0] += slow
        faults[1] += failed
        self.slow_reads += slow
        self.read_errors += failed

    def counter(self, status: int, title: str) -> list[int]:
        """The [requests, bytes] list kept for (status, title), for a caller that adds to it
        directly (an armed fast route: no tuple key and dict lookup per response)."""
        counts = self.requests.get((status, title))
        if counts is None:
            counts = self.requests[(status, title)] = [0, 0]
        return counts

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": [[s, t, c[0], c[1]] for (s, t), c in sorted(self.requests.items())],
            "open_connections": self.open_connections,
            "connections_total": self.connections_total,
            "rejected_connections": self.rejected_connections,
            "evicted_connections": self.evicted_connections,
            "header_timeouts": self.header_timeouts,
            "accept_errors": self.accept_errors,
            "sendfile_errors": self.sendfile_errors,
            "slow_reads": self.slow_reads,
            "read_errors": self.read_errors,
            "disk_faults": {str(dev): f for dev, f in sorted(self.disk_faults.items())},
            "failed_paths": self.failed_paths,
            "aborted": dict(sorted(self.aborted.items())),
        }


def merge(snapshots: Iterable[Mapping[str, Any]]) -> ServerStats:
    """Sum the snapshots of several worker processes into one ServerStats."""
    total = ServerStats()
    for snap in snapshots:
        for status, title, count, nbytes in snap.get("requests", ()):
            counts = total.requests.setdefault((int(status), str(title)), [0, 0])
            counts[0] += int(count)
            counts[1] += int(nbytes)
        total.open_connections += int(snap.get("open_connections", 0))
        total.connections_total += int(snap.get("connections_total", 0))
        total.rejected_connections += int(snap.get("rejected_connections", 0))
        total.evicted_connections += int(snap.get("evicted_connections", 0))
        total.header_timeouts += int(snap.get("header_timeouts", 0))
        total.accept_errors += int(snap.get("accept_errors", 0))
        total.sendfile_errors += int(snap.get("sendfile_errors", 0))
        total.slow_reads += int(snap.get("slow_reads", 0))
        total.read_errors += int(snap.get("read_errors", 0))
        for path in snap.get("failed_paths", ()):
            if path not in total.failed_paths:
                total.failed_paths.append(str(path))
        for dev, (slow, failed) in snap.get("disk_faults", {}).items():
            faults = total.disk_faults.setdefault(int(dev), [0, 0])
            faults[0] += int(slow)
            faults[1] += int(failed)
        for title, n in snap.get("aborted", {}).items():
            total.aborted[str(title)] = total.aborted.get(str(title), 0) + int(n)
    return total


def title_traffic(stats: ServerStats) -> dict[str, tuple[int, int]]:
    """Served (2xx/304) requests and bytes per title: what tiering and telemetry consume."""
    out: dict[str, tuple[int, int]] = {}
    for (status, title), (count, nbytes) in stats.requests.items():
        if title == NO_TITLE or not (200 <= status < 300 or status == 304):
            continue
        c, b = out.get(title, (0, 0))
        out[title] = (c + count, b + nbytes)
    return out

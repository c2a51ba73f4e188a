"""Which disks serve (I/O shell with pure cores): each probed by a stat and a canary read and
write in a thread with a timeout, so a dead disk never hangs the caller; and the I/O errors
the fill, the tier mover and serving report against a disk, which can pass a 64-byte canary
and fail its data.

Pure cores: `decide_disks` (probe outcomes → disk states and actions) and `write_verdict`
(I/O errors → no new writes, or out). Shell: `DiskWatch`. The daemon wires its actions to
the storage index (monitor.py); health.py grades the box from what it reports; the daemon's
watch keeps its I/O error counts across restarts (diskerrors.py).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from appliance.disks import TITLES_DIR, titles_read_only

if TYPE_CHECKING:
    from appliance.diskerrors import ErrorMemory

ProbeOutcome = Literal[
    "ok", "missing", "unreadable", "read_only", "full", "write_errors", "io_error", "timeout"
]
# read_only: its files keep serving, but nothing new is written there (ext4 remounted itself
# read-only on errors, or an operator did): loads, fills and moves go to the other disks.
# full: the canary write found no space (ENOSPC, EDQUOT): the disk reads and deletes fine, so
# it is kept serving like a read-only one, and takes writes again once it has room.
# write_errors: the canary passes but the fill's or a move's data writes failed (WriteLimits).
WRITE_ONLY_FAILURES: frozenset[ProbeOutcome] = frozenset({"read_only", "full", "write_errors"})
WriteVerdict = Literal["ok", "no_writes", "out"]
DiskState = Literal["serving", "read_only", "out", "rescanning"]
CANARY = ".edgeflix-probe"


@dataclass(frozen=True)
class DiskProbe:
    path: str
    outcome: ProbeOutcome
    detail: str = ""


@dataclass(frozen=True)
class DiskStatus:
    path: str
    state: DiskState = "serving"
    reason: str | None = None
    ok_streak: int = 0
    errors: int = 0  # failed probes and data writes since the last report
    slow_streak: int = 0  # timed-out probes in a row


@dataclass(frozen=True)
class TakeOut:
    """Stop serving this disk now: mark its files missing so requests 404 and players fail over."""

    path: str
    reason: str


@dataclass(frozen=True)
class Rescan:
    """The disk answers again: re-scan and re-verify it before it serves (`DiskWatch.rescanned`)."""

    path: str


DiskAction = TakeOut | Rescan


def decide_disks(
    statuses: Mapping[str, DiskStatus],
    probes: Sequence[DiskProbe],
    recover_after: int = 3,
    timeouts_to_fail: int = 2,
) -> tuple[dict[str, DiskStatus], list[DiskAction]]:
    """A definite failure (gone, unreadable, read-only, I/O error) takes a disk out at once;
    a slow answer only after `timeouts_to_fail` in a row, so a box whose CPU is saturated does
    not throw away its own healthy disks. `recover_after` good probes in a row bring a disk
    to re-scan, never straight back to serving."""
    new = dict(statuses)
    actions: list[DiskAction] = []
    for p in probes:
        cur = new.get(p.path, DiskStatus(p.path))
        if p.outcome == "timeout" and cur.state != "out":
            cur = replace(cur, slow_streak=cur.slow_streak + 1)
            if cur.slow_streak < timeouts_to_fail:
                new[p.path] = replace(cur, errors=cur.errors + 1)
                continue
        elif p.outcome == "ok" or p.outcome in WRITE_ONLY_FAILURES:
            cur = replace(cur, slow_streak=0)
        if p.outcome in WRITE_ONLY_FAILURES and cur.state in ("serving", "read_only"):
            # Reads still work: keep serving its files, only writes must go elsewhere.
            reason = f"{p.outcome}: {p.detail}" if p.detail else p.outcome
            new[p.path] = replace(cur, state="read_only", reason=reason, ok_streak=0)
            continue
        if p.outcome in WRITE_ONLY_FAILURES:
            # An out disk that comes back read-only (or full) is re-verified like any other;
            # it then serves without writes (the next probe after the re-scan says so).
            p = replace(p, outcome="ok")
        if p.outcome != "ok":
            reason = f"{p.outcome}: {p.detail}" if p.detail else p.outcome
            if cur.state != "out":
                actions.append(TakeOut(p.path, reason))
            new[p.path] = replace(
                cur, state="out", reason=reason, ok_streak=0, errors=cur.errors + 1
            )
        elif cur.state == "out":
            streak = cur.ok_streak + 1
            if streak >= recover_after:
                actions.append(Rescan(p.path))
                new[p.path] = replace(cur, state="rescanning", ok_streak=streak)
            else:
                new[p.path] = replace(cur, ok_streak=streak)
        else:
            cur = replace(cur, ok_streak=cur.ok_streak + 1)
            if cur.state == "read_only":
                # Remounted read-write, or room made: it serves on (its files never stopped)
                # and takes writes.
                cur = replace(cur, state="serving", reason=None)
            new[p.path] = cur
    return new, actions


@dataclass(frozen=True)
class WriteLimits:
    """When failed data writes (the fill's staging, tier moves' copies) stop new writes to a
    disk and when they take it out. Apache Traffic Server calls a cache disk failing from its
    first I/O error and takes it offline past proxy.config.cache.max_disk_errors (default 5):
    the same 5 take ours out. New writes stop at the second already: ATS loses a cached
    object to a bad write, we lose a title a night's fill brought, and the other disks have
    room. One error only shows (io_errors, write_errors): one bad sector must not cut the
    box's advertised capacity for a day. Counted within a window, since a box runs for
    months and rare, unrelated errors must not add up to a take-out."""

    no_writes_after: int = 2
    take_out_after: int = 5
    window_s: float = 24 * 3600.0
    # A disk without writes is tried again this long after its last error (nothing can fail
    # while nothing is written): each write that fails then counts on towards the take-out.
    # One taken out is re-verified then (every file hashed, the bad ones dropped and filled
    # again); passed, it serves with its errors forgotten, so one bad file cannot keep a
    # disk out for a day.
    rest_s: float = 3600.0


def write_verdict(errors: Sequence[float], now: float, limits: WriteLimits) -> WriteVerdict:
    """What failed writes at times `errors` (the watch's clock) say of a disk at `now`."""
    recent = [t for t in errors if now - t < limits.window_s]
    if not recent or now - max(recent) >= limits.rest_s:
        return "ok"
    if len(recent) >= limits.take_out_after:
        return "out"
    if len(recent) >= limits.no_writes_after:
        return "no_writes"
    return "ok"


def fault_increase(
    prev: Mapping[int, Sequence[int]], cur: Mapping[int, Sequence[int]]
) -> dict[int, int]:
    """Serving's read errors per file system (st_dev → [slow reads, read errors], the merged
    worker counters of edgeflix/http/stats.py) since `prev`. A worker replaced meanwhile
    starts its counts from 0 again, so a count that fell counts from there."""
    grown = {}
    for dev, counts in cur.items():
        before = prev.get(dev, (0, 0))[1]
        now = counts[1]
        if now != before:
            grown[dev] = now - before if now > before else now
    return {dev: n for dev, n in grown.items() if n > 0}


def with_write_errors(
    probes: Sequence[DiskProbe], verdicts: Mapping[str, tuple[WriteVerdict, str]]
) -> list[DiskProbe]:
    """The canary's probes as failed data writes amend them (disk → verdict, detail): a disk
    that passes its canary is taken out (an I/O error) or written no more all the same. A
    probe that found worse (gone, unreadable, read-only, slow) stands."""
    amended = []
    for p in probes:
        verdict, detail = verdicts.get(p.path, ("ok", ""))
        if verdict == "out" and (p.outcome == "ok" or p.outcome in WRITE_ONLY_FAILURES):
            p = DiskProbe(p.path, "io_error", detail)
        elif verdict == "no_writes" and p.outcome == "ok":
            p = DiskProbe(p.path, "write_errors", detail)
        amended.append(p)
    return amended


def probe_disks(disks: Sequence[Path], index: Path) -> list[DiskProbe]:
    """Probe every disk once, as a one-off command or a background round does before it
    opens the store: a disk the index places files on but without its titles folder is
    missing (not mounted), not empty."""
    from appliance.index import disks_with_files

    return DiskWatch([d.resolve() for d in disks], held=disks_with_files(index)).probe_all()


def unusable(probes: Sequence[DiskProbe]) -> dict[str, str]:
    """Disks a one-off command (`appliance ls`, `load`, `verify`) must leave alone, with the
    reason: every failed probe but read-only or full (such a disk is read, just not written,
    and a title's files on it can be deleted)."""
    return {
        p.path: f"{p.outcome}: {p.detail}" if p.detail else p.outcome
        for p in probes
        if p.outcome != "ok" and p.outcome not in WRITE_ONLY_FAILURES
    }


def _probe_once(path: Path, held_titles: bool = False) -> DiskProbe:
    """`held_titles`: the disk had its titles folder when last seen; without it now, the
    mount point is there but the disk is not (unmounted, or mounted elsewhere)."""
    where = str(path)
    try:
        if not path.is_dir():
            return DiskProbe(where, "missing", "directory is gone")
        if held_titles and not (path / TITLES_DIR).is_dir():
            return DiskProbe(
                where,
                "missing",
                f"no {TITLES_DIR} folder (is the disk mounted? a new, empty disk in its place: "
                f"create {path / TITLES_DIR})",
            )
        os.listdir(path)
        # Inside the try: an I/O error here must be a probe outcome, not the end of the
        # probing thread (probe_all would then have no result for this disk).
        read_only = titles_read_only(path)
    except PermissionError as exc:
        return DiskProbe(where, "unreadable", exc.strerror or "permission denied")
    except FileNotFoundError:
        return DiskProbe(where, "missing", "directory is gone")
    except OSError as exc:
        return DiskProbe(where, "io_error", exc.strerror or str(exc))
    if read_only:
        return DiskProbe(where, "read_only", read_only)
    payload = os.urandom(64)
    try:
        if _canary(path, payload) != payload:
            return DiskProbe(where, "io_error", "canary read back differently")
    except PermissionError as exc:
        return DiskProbe(where, "unreadable", exc.strerror or "permission denied")
    except OSError as exc:
        return DiskProbe(where, _write_failure(exc.errno), exc.strerror or str(exc))
    return DiskProbe(where, "ok")


def _write_failure(code: int | None) -> ProbeOutcome:
    """What a failed canary write says of the disk: a full disk (or quota) still reads and
    deletes, as does a read-only one; any other error is the disk failing."""
    if code == errno.EROFS:
        return "read_only"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "full"
    return "io_error"


def _canary(path: Path, payload: bytes) -> bytes:
    """Write `payload` to a file on the disk and read it back. An unnamed file (O_TMPFILE)
    where the filesystem has them: a process killed mid-probe leaves nothing on the disk.
    Else a named one per process (the daemon and an `appliance status` may probe at once)."""
    try:
        fd = os.open(path, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        canary = path / f"{CANARY}.{os.getpid()}"
        try:
            canary.write_bytes(payload)
            return canary.read_bytes()
        finally:
            canary.unlink(missing_ok=True)
    try:
        os.write(fd, payload)
        return os.pread(fd, len(payload), 0)
    finally:
        os.close(fd)


class DiskWatch:
    """Probes every storage directory in its own daemon thread with a deadline; a probe still
    stuck from last time counts as a timeout and is not stacked with another."""

    def __init__(
        self,
        paths: Sequence[Path],
        timeout_s: float = 2.0,
        recover_after: int = 3,
        probe: Callable[[Path, bool], DiskProbe] | None = None,
        held: Collection[str] = (),
        write_limits: WriteLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        memory: ErrorMemory | None = None,
    ):
        """`held`: disks the index places files on (index.disks_with_files). Without their
        titles folder they are missing from the first probe on, so a command or a daemon
        started while a disk is not mounted leaves its empty mount point alone: no titles
        folder made there, no fill onto the root filesystem, no files dropped as lost.
        `write_limits` and `clock`: how failed data writes (`write_failed`) count. `memory`:
        where they are kept across restarts (the daemon's watch): read here, written at
        each change."""
        self.paths = [Path(p) for p in paths]
        self._probe = probe or _probe_once  # tests stand in a probe the kernel blocks
        self.timeout_s = timeout_s
        self.recover_after = recover_after
        self._statuses: dict[str, DiskStatus] = {str(p): DiskStatus(str(p)) for p in self.paths}
        self._stuck: dict[str, threading.Thread] = {}
        # Disks seen with their titles folder (or known to the index to hold files).
        self._held_titles: set[str] = {str(p) for p in self.paths} & set(held)
        self.write_limits = write_limits or WriteLimits()
        self._clock = clock
        # Failed data writes per disk, within the window: (clock time, what failed).
        self._write_errors: dict[str, list[tuple[float, str]]] = {}
        self._lock = threading.Lock()
        self._memory = memory
        self._memory_lock = threading.Lock()  # one write of the file at a time, the last last
        if memory is not None:
            watched = [str(p) for p in self.paths]
            self._write_errors = memory.recall(watched, clock(), self.write_limits.window_s)

    def statuses(self) -> dict[str, DiskStatus]:
        with self._lock:
            return dict(self._statuses)

    def probe_all(self) -> list[DiskProbe]:
        results: dict[str, DiskProbe] = {}
        threads: dict[str, threading.Thread] = {}
        for path in self.paths:
            key = str(path)
            if key in self._stuck and self._stuck[key].is_alive():
                results[key] = DiskProbe(key, "timeout", "previous probe still blocked")
                continue

            def run(p: Path = path, k: str = key, held: bool = key in self._held_titles) -> None:
                results[k] = self._probe(p, held)
                outcome = results[k].outcome
                served = outcome == "ok" or outcome in WRITE_ONLY_FAILURES
                if served and (p / TITLES_DIR).is_dir():
                    self._held_titles.add(k)

            thread = threading.Thread(target=run, name=f"diskprobe:{key}", daemon=True)
            thread.start()
            threads[key] = thread
        deadline = time.monotonic() + self.timeout_s
        for key, thread in threads.items():
            thread.join(max(deadline - time.monotonic(), 0))
            if thread.is_alive():
                self._stuck[key] = thread
                results[key] = DiskProbe(key, "timeout", f"no answer in {self.timeout_s:g}s")
            else:
                self._stuck.pop(key, None)
        return [results[str(p)] for p in self.paths]

    def poll(self) -> list[DiskAction]:
        """Probe all disks and return what the caller must do (TakeOut / Rescan)."""
        probes = self.probe_all()
        forgotten = False
        with self._lock:
            # A disk whose own probe fails (dead, gone, stuck) goes out for that, and comes
            # back only through a re-verify of its files: the I/O errors its death caused
            # are history then, and must not keep the mended disk out for a day.
            for p in probes:
                if p.outcome != "ok" and p.outcome not in WRITE_ONLY_FAILURES:
                    forgotten |= self._write_errors.pop(p.path, None) is not None
            probes = with_write_errors(probes, self._write_verdicts())
            self._statuses, actions = decide_disks(self._statuses, probes, self.recover_after)
        if forgotten:
            self._remember()
        return actions

    def write_failed(self, disk: str, error: OSError) -> None:
        """A data write of the fill or a tier move on `disk` failed: an EIO or EROFS counts
        against it (health shows it at the next sample; `not_writable` and the next poll
        apply what the count says). Other errors, and paths that are no disk, are ignored.
        Any thread."""
        if self._count(disk, error):
            self._remember()

    def read_failed(self, disk: str, count: int) -> None:
        """Serving's reads of files on `disk` failed `count` times (EIO: each client got a
        500 or a cut response): counted with its failed writes, as Traffic Server counts
        every I/O error of a cache disk towards taking it offline."""
        error = OSError(errno.EIO, "serving reads failed")
        counted = [
            self._count(disk, error) for _ in range(min(count, self.write_limits.take_out_after))
        ]
        if any(counted):
            self._remember()

    def _count(self, disk: str, error: OSError) -> bool:
        """write_failed's count, without keeping it; False: it does not count."""
        if error.errno != errno.EIO or disk not in self._statuses:
            # EROFS: the disk went read-only (an operator's remount, ext4's errors=remount-ro)
            # and its canary says so at the next probe; it must serve on, not count as
            # failing.
            return False
        if self._statuses[disk].state in ("out", "rescanning"):
            return False  # errors of its death, reported late: its probe took it out already
        named = f": {error.filename}" if error.filename else ""
        with self._lock:
            now = self._clock()
            kept = [e for e in self._write_errors.get(disk, []) if self._recent(e[0], now)]
            self._write_errors[disk] = [*kept, (now, f"{error.strerror or error}{named}")]
            cur = self._statuses[disk]
            self._statuses[disk] = replace(cur, errors=cur.errors + 1)
        return True

    def _remember(self) -> None:
        """Write the errors as they are now to the memory, outside the state lock (a slow
        write must not hold up the probes): the last change is written last."""
        if self._memory is None:
            return
        with self._memory_lock:
            with self._lock:
                now = self._clock()
                errors = {d: list(e) for d, e in self._write_errors.items()}
            self._memory.keep(errors, now, self.write_limits.window_s)

    def not_writable(self) -> set[str]:
        """Disks that take no new files now: read-only, full, or failing their writes."""
        with self._lock:
            held_back = {p for p, s in self._statuses.items() if s.state == "read_only"}
            return held_back | set(self._write_verdicts())

    def write_errors(self) -> dict[str, int]:
        """Failed data writes per disk within the window."""
        with self._lock:
            now = self._clock()
            return {
                disk: sum(self._recent(t, now) for t, _ in errors)
                for disk, errors in self._write_errors.items()
            }

    def _recent(self, at: float, now: float) -> bool:
        return now - at < self.write_limits.window_s

    def _write_verdicts(self) -> dict[str, tuple[WriteVerdict, str]]:
        """Disk → (verdict, detail) for the disks whose failed writes hold them back; under
        the lock."""
        now, limits = self._clock(), self.write_limits
        verdicts: dict[str, tuple[WriteVerdict, str]] = {}
        for disk, errors in self._write_errors.items():
            verdict = write_verdict([t for t, _ in errors], now, limits)
            if verdict != "ok":
                count, last = sum(self._recent(t, now) for t, _ in errors), errors[-1][1]
                hours = limits.window_s / 3600
                verdicts[disk] = (verdict, f"{count} I/O errors in {hours:g} h, last: {last}")
        return verdicts

    def rescanned(self, path: str, ok: bool, reason: str = "re-verify failed") -> None:
        """The storage side finished re-scanning a returned disk."""
        forgotten = False
        with self._lock:
            cur = self._statuses[path]
            if cur.state == "rescanning":
                if ok:  # every file re-verified: its past I/O errors are answered
                    forgotten = self._write_errors.pop(path, None) is not None
                state: DiskState = "serving" if ok else "out"
                self._statuses[path] = replace(
                    cur, state=state, reason=None if ok else reason, ok_streak=0
                )
        if forgotten:
            self._remember()

    def take_errors(self) -> dict[str, int]:
        """Failed probes per disk since the last call (the health interval's I/O errors)."""
        with self._lock:
            errors = {k: s.errors for k, s in self._statuses.items()}
            self._statuses = {k: replace(s, errors=0) for k, s in self._statuses.items()}
        return errors

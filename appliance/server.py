"""The appliance's HTTP site: token check, then the storage index says which disk holds a file.

What it needs from storage is two narrow protocols: a `FileLocator` (the index reader) and a
`HitSink` (per-title request counts for tiering). The file-serving core lives in edgeflix/http;
the processes in worker.py and supervisor.py; the admin site (/healthz, /metrics) here too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgeflix import tokens
from edgeflix.http.plan import ResponsePlan, plan_error, plan_simple
from edgeflix.http.request import RequestHead
from edgeflix.http.server import FileTarget
from edgeflix.http.stats import ServerStats
from edgeflix.log import event
from edgeflix.metrics import Sample, render

if TYPE_CHECKING:
    # Only for types: serving workers stay free of pydantic to keep their memory small.
    from appliance.config import ApplianceConfig

log = logging.getLogger("appliance.server")
# The rule of edgeflix.titlefiles.TITLE_ID_RE (a test keeps them equal), repeated so workers
# need not import that pydantic-based module.
TITLE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


class LocatedFile(Protocol):
    """What the index knows of a servable file (appliance.index.LocatedFile fits)."""

    @property
    def path(self) -> Path: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def mtime_ns(self) -> int: ...


class FileLocator(Protocol):
    def locate(self, title_id: str, rel_path: str) -> LocatedFile | None:
        """The file's place on disk, or None when the title or file is not servable."""
        ...

    def knows(self, title_id: str) -> bool:
        """The title exists here, servable or not: its misses are counted under its id."""
        ...


class HitSink(Protocol):
    """Per-title request counts, fed from the worker's counters each tick (not per request)."""

    def hit(self, title_id: str, count: int = 1) -> None: ...
    def due(self) -> bool: ...
    def flush(self) -> int: ...


class DirectoryLocator:
    """Files straight from DISK/titles/<id>/<path> on the first disk holding them (no index):
    the locator for tests of the serving path alone and for read-only media."""

    def __init__(self, disks: tuple[Path, ...]) -> None:
        self.disks = disks

    def locate(self, title_id: str, rel_path: str) -> LocatedFile | None:
        for disk in self.disks:
            path = disk / "titles" / title_id / rel_path
            try:
                st = path.stat()
            except OSError:
                continue
            return _Found(path, st.st_size, "", st.st_mtime_ns)
        return None

    def knows(self, title_id: str) -> bool:
        return any((disk / "titles" / title_id).is_dir() for disk in self.disks)


@dataclass(frozen=True, slots=True)
class _Found:
    path: Path
    size: int
    sha256: str
    mtime_ns: int


class ApplianceSite:
    """`/t/<token>/titles/<id>/<path>` (and `/titles/<id>/<path>` when tokens are off)."""

    def __init__(
        self,
        locator: FileLocator,
        *,
        tokens_required: bool,
        keys: Mapping[str, bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.locator = locator
        self.required = tokens_required
        self.keys = dict(keys)
        self.keys_generation = 0  # which reload's keys these are (appliance/keyfile.py)
        self.clock = clock
        # Added to `clock` for token checks: expiries are on the fleet manager's clock, and
        # the fleet link learned how far this box's is off (it comes with the keys).
        self.clock_correction = 0.0
        self.token_rejections: dict[str, int] = {}

    def route(
        self, request: RequestHead, segments: tuple[str, ...], client_ip: str
    ) -> FileTarget | ResponsePlan:
        if len(segments) >= 5 and segments[0] == "t" and segments[2] == "titles":
            title_id, rel_parts = segments[3], segments[4:]
            if self.required and not _title_ok(title_id):
                return plan_error(403, request)
            if self.required:
                denied = self._check(segments[1], title_id, client_ip, request)
                if denied is not None:
                    return denied
        elif len(segments) >= 3 and segments[0] == "titles":
            if self.required:
                return plan_error(403, request)
            title_id, rel_parts = segments[1], segments[2:]
        else:
            return plan_error(404, request)
        if not _title_ok(title_id):
            return plan_error(404, request)
        rel = "/".join(rel_parts)
        found = self.locator.locate(title_id, rel)
        if found is None:
            plan = plan_error(404, request)
            if self.locator.knows(title_id):
                # Its disk is out of service (or the file was dropped): the title's own 404s.
                plan = dataclasses.replace(plan, title=title_id)
            return plan
        # Without tokens the answer depends on nothing but the path and the index: the server
        # may reuse it for identical request heads until the index changes.
        return FileTarget(os.fspath(found.path), rel, title_id, found.size, not self.required)

    def _check(
        self, token: str, title_id: str, client_ip: str, request: RequestHead
    ) -> ResponsePlan | None:
        try:
            now = self.clock() + self.clock_correction
            tokens.verify(token, title_id=title_id, client_ip=client_ip, keys=self.keys, now=now)
        except tokens.TokenError as exc:
            self.token_rejections[exc.reason] = self.token_rejections.get(exc.reason, 0) + 1
            return plan_error(403, request)
        return None

    def relocate(self, target: FileTarget) -> FileTarget | None:
        found = self.locator.locate(target.title_id, target.rel_path)
        if found is None or os.fspath(found.path) == target.path:
            return None
        event(log, "file.relocated", title=target.title_id, path=target.rel_path)
        return FileTarget(os.fspath(found.path), target.rel_path, target.title_id, found.size)


def _title_ok(title_id: str) -> bool:
    return bool(TITLE_ID_RE.match(title_id)) and ".." not in title_id


# -- admin: /healthz and /metrics ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdminView:
    """What the admin site reports, gathered by the supervisor on each scrape."""

    stats: ServerStats
    workers_alive: int
    workers: int
    token_rejections: Mapping[str, int]
    # Disk ids (resolved paths) the health monitor has taken out of service.
    out_of_service: frozenset[str] = frozenset()
    # Disks in service that take no new files (read-only, full, failing their writes).
    not_writable: frozenset[str] = frozenset()


class AdminSite:
    def __init__(
        self,
        config: ApplianceConfig,
        gather: Callable[[], AdminView],
        status: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        self.config = config
        self.gather = gather
        # /status: the same document as `edgeflix appliance status --json` (appliance/status.py).
        self.status = status

    def route(
        self, request: RequestHead, segments: tuple[str, ...], client_ip: str
    ) -> FileTarget | ResponsePlan:
        head_only = request.method == "HEAD"
        if segments == ("healthz",):
            view = self.gather()
            healthy = view.workers_alive == view.workers
            body = b"ok\n" if healthy else b"degraded: a serving worker is down\n"
            return plan_simple(200 if healthy else 503, body, head_only=head_only)
        if segments == ("metrics",):
            text = metrics_text(self.config, self.gather())
            ctype = "text/plain; version=0.0.4; charset=utf-8"
            return plan_simple(200, text.encode(), ctype, head_only=head_only)
        if segments == ("status",) and self.status is not None:
            body = json.dumps(self.status(), indent=2, sort_keys=True).encode() + b"\n"
            ctype = "application/json"
            cache = (("Cache-Control", "no-store"),)
            return plan_simple(200, body, ctype, cache, head_only=head_only)
        return plan_error(404, request)

    def relocate(self, target: FileTarget) -> FileTarget | None:
        return None


def metrics_text(config: ApplianceConfig, view: AdminView) -> str:
    """Prometheus text exposition of the merged worker counters and disk usage."""
    stats = view.stats
    p = "edgeflix_appliance_"
    requests = [
        Sample({"status": str(s), "title": t}, c[0]) for (s, t), c in sorted(stats.requests.items())
    ]
    sent = [
        Sample({"status": str(s), "title": t}, c[1]) for (s, t), c in sorted(stats.requests.items())
    ]
    families = [
        (p + "requests_total", "counter", "Requests answered, by status and title.", requests),
        (p + "response_bytes_total", "counter", "Body bytes sent, by status and title.", sent),
        (p + "open_connections", "gauge", "Client connections open now.",
         [Sample({}, stats.open_connections)]),
        (p + "connections_total", "counter", "Client connections accepted.",
         [Sample({}, stats.connections_total)]),
        (p + "rejected_connections_total", "counter", "Connections refused over the cap.",
         [Sample({}, stats.rejected_connections)]),
        (p + "evicted_connections_total", "counter",
         "Idle keep-alive connections closed at the cap to let a newcomer in.",
         [Sample({}, stats.evicted_connections)]),
        (p + "header_timeouts_total", "counter", "Connections dropped for slow request heads.",
         [Sample({}, stats.header_timeouts)]),
        (p + "accept_errors_total", "counter",
         "Failed accepts (out of file descriptors); accepting pauses briefly after each.",
         [Sample({}, stats.accept_errors)]),
        (p + "sendfile_errors_total", "counter", "sendfile(2) failures.",
         [Sample({}, stats.sendfile_errors)]),
        (p + "slow_reads_total", "counter",
         "Reads of uncached bytes for a response that took 2 s or more (a dying disk).",
         [Sample({}, stats.slow_reads)]),
        (p + "read_errors_total", "counter",
         "Reads for a response that failed (EIO): the client got a 500 or a cut response.",
         [Sample({}, stats.read_errors)]),
        (p + "responses_aborted_total", "counter",
         "Responses cut after their head by a disk error or a truncated file, by title "
         "(not in requests_total).",
         [Sample({"title": t}, n) for t, n in sorted(stats.aborted.items())]),
        (p + "token_rejections_total", "counter", "Requests refused for their URL token.",
         [Sample({"reason": r}, n) for r, n in sorted(view.token_rejections.items())]),
        (p + "workers", "gauge", "Serving worker processes alive.",
         [Sample({}, view.workers_alive)]),
    ]  # fmt: skip
    families += disk_families(config, view.out_of_service, stats.disk_faults, view.not_writable)
    # Imported here: the serving workers import this module and never need these.
    from appliance import replaced, scrub
    from appliance.fill.figures import read_families

    families += read_families(config.fill.staging, time.time())
    families += scrub.metric_families(config.storage)
    families += replaced.metric_families(config.storage)
    return render(families)


def disk_families(
    config: ApplianceConfig,
    out_of_service: Collection[str] = (),
    faults: Mapping[int, Sequence[int]] | None = None,
    not_writable: Collection[str] = (),
) -> list[tuple[str, str, str, list[Sample]]]:
    """Per-disk figures; `faults`: serving's slow reads and read errors by st_dev."""
    from appliance.disks import TITLES_DIR, detect_tier

    def device(disk: Path, out: bool) -> int | None:
        # The titles folder's: the served files, whose st_dev the faults are counted by, are
        # there. An in-service disk without one yet is its folder's; an out-of-service one
        # is not (an unmounted mount point shows the root file system).
        for where in (disk / TITLES_DIR,) if out else (disk / TITLES_DIR, disk):
            try:
                return os.stat(where).st_dev
            except OSError:
                pass
        return None

    # Faults are counted per file system, not per folder. Disks sharing one (var/disk0 and
    # var/disk1 on one file system) would each show all its faults and a sum over `disk`
    # count each twice, so one of them carries the counts and the others 0. The carrier is
    # the first of them in config order, in service or not: were it the first in service,
    # taking var/disk0 out would move the counts to var/disk1, its counter jumping from 0 and
    # increase() and per-disk alerts firing there for old errors. A disk whose device is not
    # known (out of service and its titles folder cannot be stat'ed: dead, unmounted) cannot
    # be matched to its file system: it has no fault samples and the next disk of that file
    # system carries the counts, the one case they still move.
    disks = config.storage.disks
    outs = [str(d.path.resolve()) in out_of_service for d in disks]
    devices = [device(d.path, out) for d, out in zip(disks, outs, strict=True)]
    carrier: dict[int, int] = {}
    for i, dev in enumerate(devices):
        if dev is not None:
            carrier.setdefault(dev, i)
    size, used, serving, writable, slow, failed = [], [], [], [], [], []
    for i, (disk, out, dev) in enumerate(zip(disks, outs, devices, strict=True)):
        serving.append(Sample({"disk": str(disk.path)}, 0 if out else 1))
        if dev is not None:
            counts = (faults or {}).get(dev, (0, 0)) if carrier[dev] == i else (0, 0)
            slow.append(Sample({"disk": str(disk.path)}, counts[0]))
            failed.append(Sample({"disk": str(disk.path)}, counts[1]))
        if out:
            continue  # unmounted, its mount point's figures are the root filesystem's
        held = {str(disk.path), str(disk.path.resolve())} & set(not_writable)
        writable.append(Sample({"disk": str(disk.path)}, 0 if held else 1))
        try:
            # Both inside: a missing or dead disk must not fail the whole scrape (its stat
            # for the tier raised out of the admin site, and /metrics never answered).
            vfs = os.statvfs(disk.path)
            labels = {"disk": str(disk.path), "tier": disk.tier or detect_tier(disk.path)}
        except OSError:
            continue
        size.append(Sample(labels, vfs.f_blocks * vfs.f_frsize))
        used.append(Sample(labels, (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize))
    return [
        ("edgeflix_appliance_disk_in_service", "gauge",
         "1 while the disk serves and takes titles; 0 once taken out (dead, unmounted).",
         serving),
        ("edgeflix_appliance_disk_writable", "gauge",
         "1 while a disk in service takes new titles; 0 when read-only, full or failing writes.",
         writable),
        ("edgeflix_appliance_disk_size_bytes", "gauge", "File system size per disk in service.",
         size),
        ("edgeflix_appliance_disk_used_bytes", "gauge",
         "File system bytes used per disk in service.", used),
        ("edgeflix_appliance_disk_slow_reads_total", "counter",
         "Serving reads of 2 s or more on the disk's file system (a shared one's on its first "
         "disk in config order, in service or not; 0 on the others).", slow),
        ("edgeflix_appliance_disk_read_errors_total", "counter",
         "Serving reads that failed on the disk's file system (a shared one's on its first "
         "disk in config order, in service or not; 0 on the others).", failed),
    ]  # fmt: skip

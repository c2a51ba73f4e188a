"""How healthy the appliance is: `ok`, `degraded` (with reasons) or `failing`.

Pure cores: `summarise` (inputs + thresholds-as-data → Health), `rates` (two counter
snapshots → per-second figures) and `with_link` (the fleet link's phase added to a Health).
Thin shell: `HealthSampler` (psutil, injected clock), fed the disks' states by diskwatch.py's
DiskWatch. hardware.py lowers advertised capacity from a Health.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import psutil

from appliance.diskwatch import DiskWatch
from edgeflix import wallclock

HealthState = Literal["ok", "degraded", "failing"]


@dataclass(frozen=True)
class NicRate:
    name: str
    rx_bps: float
    tx_bps: float
    speed_bps: int | None


@dataclass(frozen=True)
class DiskSample:
    path: str
    used_fraction: float | None
    io_errors: int  # failed probes and failed data writes in the last interval
    latency_ms: float | None  # mean per I/O over the last interval
    in_service: bool
    reason: str | None = None
    writable: bool = True
    write_errors: int = 0  # failed data writes (fill, tier moves) within WriteLimits.window_s
    # The disk's `max_bytes`: then `used_fraction` is what the store holds there over it
    # (above 1 once over it), not the filesystem's use.
    max_bytes: int | None = None


@dataclass(frozen=True)
class HealthInputs:
    cpu_percent: float
    memory_percent: float
    load_per_core: float
    nics: tuple[NicRate, ...] = ()
    disks: tuple[DiskSample, ...] = ()
    serving_error_rate: float = 0.0  # fraction of responses that were 5xx
    wall_clock: float | None = None  # time.time() at the sample; None: not read


@dataclass(frozen=True)
class Limit:
    degraded: float
    failing: float


@dataclass(frozen=True)
class Thresholds:
    """Levels at which a metric makes the box degraded or failing; data, so tests and
    operators can change them without touching the rules."""

    # A busy CPU slows a box down but does not stop it serving: never `failing` on its own.
    cpu_percent: Limit = Limit(90.0, math.inf)
    memory_percent: Limit = Limit(90.0, 98.0)
    load_per_core: Limit = Limit(2.0, math.inf)
    nic_utilisation: Limit = Limit(0.90, 1.01)
    # A cache fills its disks by design, and a full disk serves on (it only takes no new
    # titles): full is at worst degraded, never failing (capacity 0, out of steering).
    disk_used_fraction: Limit = Limit(0.95, math.inf)
    disk_latency_ms: Limit = Limit(200.0, 5000.0)
    serving_error_rate: Limit = Limit(0.01, 0.25)


@dataclass(frozen=True)
class Health:
    state: HealthState
    reasons: tuple[str, ...] = ()
    disks_out_of_service: tuple[str, ...] = ()
    # What an operator should know that does not lower the state (the fleet manager away
    # within the grace period): shown beside the reasons.
    warnings: tuple[str, ...] = ()


def _grade(value: float | None, limit: Limit, what: str) -> tuple[int, str | None]:
    """0 ok, 1 degraded, 2 failing, with a reason naming the figure."""
    if value is None:
        return 0, None
    if value >= limit.failing:
        return 2, f"{what} {value:.3g} >= {limit.failing:g}"
    if value >= limit.degraded:
        return 1, f"{what} {value:.3g} >= {limit.degraded:g}"
    return 0, None


def summarise(inputs: HealthInputs, thresholds: Thresholds | None = None) -> Health:
    t = thresholds or Thresholds()
    graded: list[tuple[int, str | None]] = [
        _grade(inputs.cpu_percent, t.cpu_percent, "cpu %"),
        _grade(inputs.memory_percent, t.memory_percent, "memory %"),
        _grade(inputs.load_per_core, t.load_per_core, "load per core"),
        _grade(inputs.serving_error_rate, t.serving_error_rate, "serving 5xx rate"),
        _clock(inputs.wall_clock),
    ]
    for nic in inputs.nics:
        if nic.speed_bps:
            busiest = max(nic.rx_bps, nic.tx_bps) / nic.speed_bps
            graded.append(_grade(busiest, t.nic_utilisation, f"nic {nic.name} utilisation"))
    out = tuple(d.path for d in inputs.disks if not d.in_service)
    for disk in inputs.disks:
        if not disk.in_service:
            graded.append((1, f"disk {disk.path} out of service: {disk.reason or 'unknown'}"))
            continue
        if not disk.writable:
            why = disk.reason or "read-only"
            what = {"full": "full", "write_errors": "not writable"}.get(
                why.partition(":")[0], "read-only"
            )
            graded.append((1, f"disk {disk.path} {what} ({why}): serving, no new writes"))
        graded.append(_disk_use(disk, t.disk_used_fraction))
        graded.append(_grade(disk.latency_ms, t.disk_latency_ms, f"disk {disk.path} latency ms"))
        if disk.io_errors:
            graded.append((1, f"disk {disk.path}: {disk.io_errors} I/O errors"))
    if inputs.disks and len(out) == len(inputs.disks):
        graded.append((2, "no disk in service"))
    level = max((g for g, _ in graded), default=0)
    reasons = tuple(r for g, r in graded if r is not None and g > 0)
    state: HealthState = ("ok", "degraded", "failing")[level]
    return Health(state=state, reasons=reasons, disks_out_of_service=out)


def _clock(now: float | None) -> tuple[int, str | None]:
    """A clock not yet set (1970 on a box without an RTC, before NTP): every URL token
    expires further ahead of it than any signer grants (403 expiry_too_far), and nothing
    else says why. Degraded, not failing: what needs no token serves, and all of it does
    again, without a restart, once NTP sets the clock."""
    if now is None or wallclock.plausible(now):
        return 0, None
    return 1, f"wall clock implausible (reads {wallclock.iso(now)}): set it right (NTP)"


def _disk_use(disk: DiskSample, limit: Limit) -> tuple[int, str | None]:
    if disk.max_bytes is None or disk.used_fraction is None:
        return _grade(disk.used_fraction, limit, f"disk {disk.path} used")
    if disk.used_fraction > 1:
        # Nothing deletes to get it back under (the fleet's plan does, at the next fill):
        # said plainly, as a share of a filesystem would hide it.
        held = round(disk.used_fraction * disk.max_bytes)
        return 1, (
            f"disk {disk.path} over its max_bytes: holds {held} of {disk.max_bytes} bytes "
            f"({disk.used_fraction:.0%}); no new titles there"
        )
    return _grade(disk.used_fraction, limit, f"disk {disk.path} used of max_bytes")


# --- the fleet link ------------------------------------------------------------------------

LinkPhase = Literal["unenrolled", "connected", "grace", "expired", "unknown"]


@dataclass(frozen=True)
class FleetLinkView:
    """Where the box stands with its fleet manager, as its health needs it: from the
    daemon's link (fleetlink.py) or, for `appliance status`, from the files it keeps."""

    url: str
    phase: LinkPhase  # fleetlink_core.phase; "unknown": its files could not be read
    silent_s: float | None  # since the fleet last answered; None: never
    last_contact: float | None  # the same, on the wall clock
    grace_period_s: float
    after_grace: Literal["degrade", "stop"]
    tokens_required: bool
    problem: str | None = None  # the link's last error or refusal, when known


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def link_grade(link: FleetLinkView) -> tuple[int, str | None]:
    """0 (with a warning or none), 1 degraded or 2 failing, with what to tell the operator.

    - grace: a manager restarting or briefly away is normal operation (cached keys and plan
      serve as before): ok, with a warning.
    - expired: degraded, as `after_grace = "degrade"` promises. Under "stop" with tokens
      required, failing: the keys are dropped, so every URL the fleet signed is refused and
      the box serves none of the players steered to it.
    - unenrolled with a [fleet] url: degraded; without an enrolment the box gets no keys
      and no plan (a wrong url, say the manager's HTTP port instead of its gRPC one).
    - unknown (the link's files unreadable to this user): a warning; nothing known is wrong.
    """
    why = f" ({link.problem})" if link.problem else ""
    if link.phase == "connected":
        return 0, None
    if link.phase == "unknown":
        return 0, f"fleet link state unknown{why}"
    if link.phase == "unenrolled":
        return 1, f"not enrolled with the fleet manager at {link.url}: no keys or plan{why}"
    lost = "never heard" if link.silent_s is None else f"for {_duration(link.silent_s)}"
    if link.phase == "grace" and link.silent_s is None:
        # `appliance status` on a last contact saved off a clock not yet set (status.py).
        return 0, (
            f"fleet manager at {link.url}: last contact unknown, serving on cached keys and "
            f"plan within the grace period{why}"
        )
    if link.phase == "grace":
        left = link.grace_period_s - (link.silent_s or 0.0)
        return 0, (
            f"fleet manager at {link.url} unreachable {lost}: serving on cached keys and "
            f"plan, grace period over in {_duration(max(left, 0.0))}{why}"
        )
    over = f"fleet manager at {link.url} unreachable {lost} (grace period over)"
    if link.after_grace == "stop":
        if link.tokens_required:
            return 2, f"{over}: fleet keys dropped (after_grace = stop), token URLs refused"
        return 1, f"{over}: fleet keys dropped (after_grace = stop)"
    return 1, f"{over}: serving on cached keys, nothing deleted on the stale plan"


def with_link(health: Health, link: FleetLinkView | None) -> Health:
    """`health` with the fleet link's grade (None: no [fleet] url, nothing to add)."""
    if link is None:
        return health
    level, why = link_grade(link)
    if why is None:
        return health
    if level == 0:
        return replace(health, warnings=(*health.warnings, why))
    states: tuple[HealthState, ...] = ("ok", "degraded", "failing")
    state = states[max(level, states.index(health.state))]
    return replace(health, state=state, reasons=(*health.reasons, why))


# --- rates from counter snapshots ---------------------------------------------------------


@dataclass(frozen=True)
class IoCounters:
    ops: int
    busy_ms: int  # read_time + write_time


@dataclass(frozen=True)
class Snapshot:
    at: float  # injected clock, seconds
    cpu_busy: float
    cpu_total: float
    nic_bytes: Mapping[str, tuple[int, int]]  # name → (rx, tx)
    disk_io: Mapping[str, IoCounters]  # block device name → counters


@dataclass(frozen=True)
class Rates:
    cpu_percent: float
    nic_bps: Mapping[str, tuple[float, float]]
    disk_latency_ms: Mapping[str, float | None]


def rates(prev: Snapshot, cur: Snapshot) -> Rates:
    """Per-second figures between two snapshots; counters that went backwards (NIC reset,
    wrap) count as zero rather than negative."""
    dt = max(cur.at - prev.at, 1e-9)
    total = cur.cpu_total - prev.cpu_total
    cpu = 100.0 * max(cur.cpu_busy - prev.cpu_busy, 0.0) / total if total > 0 else 0.0
    nics = {}
    for name, (rx, tx) in cur.nic_bytes.items():
        prx, ptx = prev.nic_bytes.get(name, (rx, tx))
        nics[name] = (max(rx - prx, 0) * 8 / dt, max(tx - ptx, 0) * 8 / dt)
    latency: dict[str, float | None] = {}
    for dev, io in cur.disk_io.items():
        before = prev.disk_io.get(dev, io)
        ops = io.ops - before.ops
        latency[dev] = (io.busy_ms - before.busy_ms) / ops if ops > 0 else None
    return Rates(cpu_percent=min(cpu, 100.0), nic_bps=nics, disk_latency_ms=latency)


def _filesystem_use(path: str) -> float | None:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return usage.used / usage.total if usage.total else None


# --- the sampler shell ---------------------------------------------------------------------


@dataclass
class HealthSampler:
    """Turns psutil counters into HealthInputs each interval; `device_of` maps a storage path
    to its block device name (from the hardware profile) for latency."""

    disks: DiskWatch
    device_of: Mapping[str, str | None] = field(default_factory=dict)
    nic_speeds: Mapping[str, int | None] = field(default_factory=dict)
    serving_errors: Callable[[], float] = lambda: 0.0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time  # only checked for plausibility (summarise)
    # Disks with `max_bytes` (path → it): their use is what the store holds there, which
    # `held_bytes` reads (disk → bytes; None when it cannot tell), as placement counts it.
    max_bytes: Mapping[str, int] = field(default_factory=dict)
    held_bytes: Callable[[], Mapping[str, int] | None] = dict
    _prev: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        cpu = psutil.cpu_times()
        busy = cpu.user + cpu.system + getattr(cpu, "irq", 0.0) + getattr(cpu, "softirq", 0.0)
        total = busy + cpu.idle + getattr(cpu, "iowait", 0.0) + getattr(cpu, "nice", 0.0)
        nics = {n: (c.bytes_recv, c.bytes_sent) for n, c in psutil.net_io_counters(True).items()}
        io = psutil.disk_io_counters(perdisk=True) or {}
        disk_io = {
            d: IoCounters(c.read_count + c.write_count, c.read_time + c.write_time)
            for d, c in io.items()
        }
        return Snapshot(self.clock(), busy, total, nics, disk_io)

    def sample(self) -> HealthInputs:
        cur = self.snapshot()
        prev, self._prev = self._prev or cur, cur
        r = rates(prev, cur)
        errors = self.disks.take_errors()
        failed_writes = self.disks.write_errors()
        held = self.held_bytes() if self.max_bytes else None
        disks = []
        for path, status in self.disks.statuses().items():
            in_service = status.state in ("serving", "read_only")
            quota = self.max_bytes.get(path)
            used: float | None = None
            if in_service and quota:
                used = held.get(path, 0) / quota if held is not None else None
            elif in_service:
                used = _filesystem_use(path)
            device = self.device_of.get(path)
            disks.append(
                DiskSample(
                    path=path,
                    used_fraction=used,
                    max_bytes=quota,
                    io_errors=errors.get(path, 0),
                    latency_ms=r.disk_latency_ms.get(device) if device else None,
                    in_service=in_service,
                    reason=status.reason,
                    writable=status.state != "read_only",
                    write_errors=failed_writes.get(path, 0),
                )
            )
        nics = tuple(
            NicRate(name, rx, tx, self.nic_speeds.get(name)) for name, (rx, tx) in r.nic_bps.items()
        )
        load1 = os.getloadavg()[0] / (psutil.cpu_count() or 1)
        return HealthInputs(
            cpu_percent=r.cpu_percent,
            memory_percent=psutil.virtual_memory().percent,
            load_per_core=load1,
            nics=nics,
            disks=tuple(disks),
            serving_error_rate=self.serving_errors(),
            wall_clock=self.wall(),
        )

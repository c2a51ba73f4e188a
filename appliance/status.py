"""The appliance's status document: hardware profile, health and advertised capacity, the
fleet link, and fill state per title. `edgeflix appliance status` builds it with a one-off
sampler and reads the fleet link from the files the link keeps; the daemon's admin listener
serves the same document at /status from its health thread's latest report
(appliance/monitor.py) and its running link, plus a `daemon` section (workers, reloads, fill
schedule). Both count the titles held: none on a fresh box, which has no index until its
first load, fill or run.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance import scrub
from appliance.config import ApplianceConfig
from appliance.diskwatch import DiskWatch
from appliance.fill.runner import read_state
from appliance.fleetlink_core import CONTACT_SAVE_S, MISSED_BEATS, phase
from appliance.fleetlink_state import LinkState, LinkStateError
from appliance.hardware import HardwareProfile, advertised_capacity_bps, probe
from appliance.health import (
    FleetLinkView,
    Health,
    HealthInputs,
    HealthSampler,
    HealthState,
    LinkPhase,
    summarise,
    with_link,
)
from appliance.index import (
    bytes_by_disk,
    disks_with_files,
    full_filesystem,
    open_problem,
    read_only,
)
from edgeflix import wallclock

# `appliance status` exit codes, so a monitoring script need not parse the output. None is
# 1 (any command's failure) nor 2 (a bad command line or config): a mistyped --config must
# not read as a degraded or failing box, nor a box's state as a broken check.
EXIT_CODES: Mapping[str, int] = {"ok": 0, "degraded": 3, "failing": 4}


def exit_code(state: str) -> int:
    """The exit status of `appliance status` for a health state (unknown counts as failing)."""
    return EXIT_CODES.get(state, EXIT_CODES["failing"])


def index_health(health: Health, index: Path) -> Health:
    """`health` with what the index says: one the daemon could not open (unreadable,
    damaged, on a full filesystem) is failing, as `appliance run` refuses to start on it;
    one that opens on a full filesystem is degraded (it serves; nothing new is recorded)."""
    problem = open_problem(index)
    level = 2
    if problem is None:
        full = full_filesystem(index)
        if full is None:
            return health
        problem, level = f"{full}: loads, fills and tier moves cannot be recorded", 1
    states: tuple[HealthState, ...] = ("ok", "degraded", "failing")
    state = states[max(level, states.index(health.state))]
    return dataclasses.replace(health, state=state, reasons=(problem, *health.reasons))


def held_bytes(index: Path) -> dict[str, int] | None:
    """Bytes the store holds on each disk, as placement counts them under max_bytes (files
    and kept replaced versions: index.bytes_by_disk), read-only; None when unreadable."""
    none: dict[str, int] = {}
    return read_only(index, bytes_by_disk, none, None)


def titles_held(index: Path) -> dict[str, int] | None:
    """How many titles the index holds and their bytes, read-only: none on a box that never
    loaded one (no index yet, or one with no tables yet); None when the index cannot be read
    (index_health says why)."""
    none = {"count": 0, "bytes": 0}
    return read_only(index, _count_titles, none, None)


def _count_titles(conn: sqlite3.Connection) -> dict[str, int]:
    made = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'titles'")
    if made.fetchone() is None:
        return {"count": 0, "bytes": 0}
    count, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM titles").fetchone()
    return {"count": int(count), "bytes": int(size)}


def count_max_bytes(sampler: HealthSampler, config: ApplianceConfig) -> None:
    """Let `sampler` measure disks with max_bytes against it, by what the store holds there
    (a disk shared with other data is far below its filesystem's size)."""
    sampler.max_bytes = {
        str(d.path.resolve()): d.max_bytes for d in config.storage.disks if d.max_bytes
    }
    index = config.storage.index
    sampler.held_bytes = lambda: held_bytes(index)


def sampler_for(config: ApplianceConfig, profile: HardwareProfile) -> HealthSampler:
    paths = [d.path.resolve() for d in config.storage.disks]
    watch = DiskWatch(paths, held=disks_with_files(config.storage.index))
    sampler = HealthSampler(
        disks=watch,
        device_of={d.path: d.device for d in profile.disks},
        nic_speeds={n.name: n.speed_bps for n in profile.nics},
    )
    count_max_bytes(sampler, config)
    return sampler


def saved_phase(
    enrolled: bool, contact: float | None, now: float, interval_s: float, grace_s: float
) -> LinkPhase:
    """The link's phase from its saved files. A connected link saves the fleet's answer only
    every CONTACT_SAVE_S (and exactly when it loses the fleet), so a saved contact that old
    still reads as connected, unless the grace period is over: a box beating fine is never
    reported in its grace period, and one past it is never hidden."""
    found = phase(enrolled, contact, now, interval_s, grace_s)
    saved_lag_s = CONTACT_SAVE_S + MISSED_BEATS * interval_s
    if found == "grace" and contact is not None and now - contact <= saved_lag_s:
        return "connected"
    return found


def saved_link(config: ApplianceConfig, now: float) -> FleetLinkView | None:
    """The fleet link as its files tell it (None: no [fleet] url), for `appliance status`,
    which runs beside the daemon, not in it."""
    fleet = config.fleet
    if fleet.url is None:
        return None
    view = FleetLinkView(
        url=fleet.url,
        phase="unenrolled",
        silent_s=None,
        last_contact=None,
        grace_period_s=fleet.grace_period_s,
        after_grace=fleet.after_grace,
        tokens_required=config.auth.tokens == "required",
    )
    folder = config.fleet_state_dir()
    if not folder.is_dir():
        return view  # never run with this [fleet] section
    try:
        state = LinkState(folder)
        enrolment = state.enrolment()
        saved = state.saved_contact()
    except LinkStateError as exc:
        return dataclasses.replace(view, phase="unknown", problem=str(exc))
    # What the link last failed on (the fleet's refusal, say), as the daemon's /status says
    # it: saved on change, read here rather than asked of the daemon, whose admin listener
    # may be on a port chosen at its start (`:0`), and which may be stopped: then the file
    # still tells why it last failed.
    problem = state.saved_problem()
    view = dataclasses.replace(view, problem=problem)
    # Enrolled under another name, the link enrols again (fleetlink_enrol.Enrolling.restore).
    if enrolment is None or enrolment.appliance != (fleet.name or config.name):
        return view
    since = enrolment.enrolled_at if saved is None else saved
    contact, why = wallclock.counted_since(since, now)
    if why == "implausible":
        # Saved at a 1970 reading: the daemon counts its grace period from its start (and
        # saves that), or, running since before NTP set the clock, saves the contact again
        # on the new clock within a beat. Until then, within the grace period: the safe
        # side, never "expired" off a value that says nothing.
        unknown = (
            f"last contact saved while the clock read {wallclock.iso(since)}, not yet set "
            "(NTP): unknown"
        )
        said = f"{problem}; {unknown}" if problem else unknown
        return dataclasses.replace(view, phase="grace", problem=said)
    interval_s = enrolment.heartbeat_interval_ms / 1000 or fleet.heartbeat_s
    # With a problem the link saved its last contact exactly (fleetlink._save_problem):
    # nothing to allow for, and a link failing for minutes is not read as connected.
    found = (phase if problem else saved_phase)(
        True, contact, now, interval_s, fleet.grace_period_s
    )
    return dataclasses.replace(
        view, phase=found, silent_s=max(now - contact, 0.0), last_contact=contact
    )


def assemble(
    config: ApplianceConfig,
    profile: HardwareProfile,
    inputs: HealthInputs,
    health: Health,
    daemon: Mapping[str, Any] | None = None,
    fleet: FleetLinkView | None = None,
) -> dict[str, Any]:
    """The document itself, from figures already gathered (cheap: /status calls it).
    `health` goes in with the fleet link's grade added (health.with_link)."""
    health = with_link(health, fleet)
    doc: dict[str, Any] = {
        "name": config.name,
        "health": asdict(health),
        "capacity_bps": advertised_capacity_bps(profile, health),
        "profile": asdict(profile),
        "metrics": asdict(inputs),
        "fleet": asdict(fleet) if fleet is not None else None,
        "fill": read_state(config.fill.staging),
        "scrub": scrub.status(config.storage),
        "titles": titles_held(config.storage.index),
    }
    if daemon is not None:
        doc["daemon"] = dict(daemon)
    return doc


def status_document(
    config: ApplianceConfig,
    profile: HardwareProfile | None = None,
    sampler: HealthSampler | None = None,
    interval_s: float = 0.5,
) -> dict[str, Any]:
    """Probe (unless given), take two samples `interval_s` apart for rates, summarise."""
    profile = profile or probe([d.path for d in config.storage.disks])
    if sampler is None:
        sampler = sampler_for(config, profile)
        sampler.disks.poll()
        sampler.sample()
        time.sleep(interval_s)
    sampler.disks.poll()
    inputs = sampler.sample()
    health = index_health(summarise(inputs), config.storage.index)
    return assemble(config, profile, inputs, health, fleet=saved_link(config, time.time()))

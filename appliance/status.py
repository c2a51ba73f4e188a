"""The appliance's status document: hardware profile, health and advertised capacity, and
fill state per title. `edgeflix appliance status` builds it with a one-off sampler; the
daemon's admin listener serves the same document at /status from its health thread's latest
report (appliance/monitor.py), plus a `daemon` section (workers, reloads, fill schedule).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance import scrub
from appliance.config import ApplianceConfig
from appliance.diskwatch import DiskWatch
from appliance.fill.runner import read_state
from appliance.hardware import HardwareProfile, advertised_capacity_bps, probe
from appliance.health import Health, HealthInputs, HealthSampler, HealthState, summarise
from appliance.index import disks_with_files, full_filesystem, open_problem

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


def sampler_for(config: ApplianceConfig, profile: HardwareProfile) -> HealthSampler:
    paths = [d.path.resolve() for d in config.storage.disks]
    watch = DiskWatch(paths, held=disks_with_files(config.storage.index))
    return HealthSampler(
        disks=watch,
        device_of={d.path: d.device for d in profile.disks},
        nic_speeds={n.name: n.speed_bps for n in profile.nics},
    )


def assemble(
    config: ApplianceConfig,
    profile: HardwareProfile,
    inputs: HealthInputs,
    health: Health,
    daemon: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The document itself, from figures already gathered (cheap: /status calls it)."""
    doc: dict[str, Any] = {
        "name": config.name,
        "health": asdict(health),
        "capacity_bps": advertised_capacity_bps(profile, health),
        "profile": asdict(profile),
        "metrics": asdict(inputs),
        "fill": read_state(config.fill.staging),
        "scrub": scrub.status(config.storage),
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
    return assemble(config, profile, inputs, index_health(summarise(inputs), config.storage.index))

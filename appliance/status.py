"""The appliance's status document: hardware profile, health and advertised capacity, and
fill state per title. `edgeflix appliance status` prints it; the admin listener can serve
the same dict as JSON at /status (the daemon passes its own long-lived sampler and watch).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from appliance.config import ApplianceConfig
from appliance.fill.runner import read_state
from appliance.hardware import HardwareProfile, advertised_capacity_bps, probe
from appliance.health import DiskWatch, HealthSampler, summarise


def sampler_for(config: ApplianceConfig, profile: HardwareProfile) -> HealthSampler:
    watch = DiskWatch([d.path.resolve() for d in config.storage.disks])
    return HealthSampler(
        disks=watch,
        device_of={d.path: d.device for d in profile.disks},
        nic_speeds={n.name: n.speed_bps for n in profile.nics},
    )


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
    health = summarise(inputs)
    return {
        "name": config.name,
        "health": asdict(health),
        "capacity_bps": advertised_capacity_bps(profile, health),
        "profile": asdict(profile),
        "metrics": asdict(inputs),
        "fill": read_state(config.fill.staging),
    }

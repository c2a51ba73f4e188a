"""The fleet manager's /metrics page (fleet/http.py serves it, edgeflix/metrics.py writes the
Prometheus text): steering answers by outcome, appliances by state, signed calls refused, and
the versions of the plan and the key set. Pure: FleetService.metrics hands in the counts.
"""

from __future__ import annotations

from collections import Counter

from edgeflix.metrics import Sample, render
from edgeflix.proto import auth
from fleet.model import APPLIANCE_STATES, FleetSnapshot
from fleet.steering import OUTCOMES


def render_metrics(
    snap: FleetSnapshot,
    outcomes: Counter[str],
    auth_refusals: Counter[str],
    plan_version: int,
    keys_version: int,
) -> str:
    # Every state, 0 when none is in it: a state that empties must read 0, not vanish (a
    # query or alert on `state="failing"` would keep its last value or show no data).
    states = Counter({s: 0 for s in APPLIANCE_STATES})
    states.update(a.state for a in snap.appliances)
    return render(
        [
            (
                "edgeflix_fleet_steering_total",
                "counter",
                "Steering answers by outcome (where the best URL points, and why).",
                [Sample({"outcome": o}, outcomes[o]) for o in OUTCOMES],
            ),
            (
                "edgeflix_fleet_appliances",
                "gauge",
                "Enrolled appliances by state.",
                [Sample({"state": s}, n) for s, n in sorted(states.items())],
            ),
            (
                "edgeflix_fleet_auth_refusals_total",
                "counter",
                "Signed gRPC calls refused, by reason (clock_skew: signed more than "
                f"{auth.MAX_SKEW_S:g} s from this manager's clock).",
                [Sample({"reason": r}, auth_refusals[r]) for r in auth.REFUSAL_REASONS],
            ),
            (
                "edgeflix_fleet_plan_version",
                "gauge",
                "Version of the current fill plan.",
                [Sample({}, plan_version)],
            ),
            (
                "edgeflix_fleet_keys_version",
                "gauge",
                "Version of the URL-token key set.",
                [Sample({}, keys_version)],
            ),
        ]
    )

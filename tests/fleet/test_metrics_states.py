"""The fleet's /metrics gives every appliance state a value: one that empties reads 0 instead of
vanishing (a dashboard or alert on state="unreachable" would keep its last value)."""

from __future__ import annotations

from pathlib import Path

from fleet.model import APPLIANCE_STATES
from tests.fleet.test_service import Clock, beat, enrol, service


def appliances_by_state(text: str) -> dict[str, str]:
    prefix = 'edgeflix_fleet_appliances{state="'
    lines = [line[len(prefix) :] for line in text.split("\n") if line.startswith(prefix)]
    return {state: value for state, _, value in (line.partition('"} ') for line in lines)}


def test_every_state_is_reported_and_an_emptied_one_reads_zero(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    zero = dict.fromkeys(APPLIANCE_STATES, "0")
    assert appliances_by_state(svc.metrics()) == zero  # nothing enrolled yet

    enrol(svc, "h1", "home")
    beat(svc, "h1", 1)
    assert appliances_by_state(svc.metrics()) == zero | {"ok": "1"}

    clock.now += 16  # more than 3 beats of 5 s: unreachable
    assert appliances_by_state(svc.metrics()) == zero | {"unreachable": "1"}

    beat(svc, "h1", 2)  # back: the unreachable count returns to 0, it does not disappear
    assert appliances_by_state(svc.metrics()) == zero | {"ok": "1"}

"""Damaged files in the fleet link's state folder, never a traceback: a damaged enrolment is
one clear error naming the file (so the CLI prints one line and exits non-zero); a damaged
plan, key set or contact.json reads as absent, with a warning naming the file
(appliance/fleetlink_state.py says why)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from appliance.config import ApplianceConfig
from appliance.fleetlink import FleetLink, LinkSinks
from appliance.fleetlink_figures import BoxHealth, Traffic
from appliance.fleetlink_files import Enrolment, StoredPlan
from appliance.fleetlink_keys import FleetKey
from appliance.fleetlink_state import LinkState, LinkStateError
from edgeflix.versioning import Versioned
from tests.conftest import run_cli

SHA = "c" * 64
PLAN_DOC = {
    "titles": [{"id": "film", "digest": SHA, "sources": ["http://127.0.0.1:8080"]}],
    "window": None,
    "timezone": "UTC",
    "cap_bps": None,
    "prune": True,
}


def good_state(folder: Path) -> LinkState:
    state = LinkState(folder)
    state.private_key()
    state.save_enrolment(Enrolment("a1", "home", "127.0.0.1:9", "http://127.0.0.1:1", 500, 10.0))
    state.save_plan(StoredPlan(3, PLAN_DOC, {"film": 10}))
    state.save_contact(20.0)
    return state


def enrolment_with(**changes: Any) -> bytes:
    body = {
        "appliance": "a1",
        "site": "home",
        "fleet": "127.0.0.1:9",
        "url": "http://127.0.0.1:1",
        "heartbeat_interval_ms": 500,
        "enrolled_at": 10.0,
        **changes,
    }
    return json.dumps(body).encode()


DAMAGED = {
    "interval a string": enrolment_with(heartbeat_interval_ms="500"),
    "enrolled_at null": enrolment_with(enrolled_at=None),
    "site a number": enrolment_with(site=5),
    "not an object": b"[1]",
    "format not a number": enrolment_with(format="2"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_enrolment_is_named_in_one_error(tmp_path: Path, case: str) -> None:
    """The enrolment is the box's identity with the fleet: never guessed."""
    state = good_state(tmp_path)
    (tmp_path / "enrolment.json").write_bytes(DAMAGED[case])
    with pytest.raises(LinkStateError, match=r"enrolment\.json is damaged; remove it"):
        state.enrolment()


UNUSABLE = {
    "titles a number": (
        "plan.json",
        b'{"version": 3, "document": {"titles": 5}, "sizes": {}}',
    ),
    "no titles": ("plan.json", b'{"version": 3, "document": {}, "sizes": {}}'),
    "a title not an object": (
        "plan.json",
        b'{"version": 3, "document": {"titles": [5]}, "sizes": {}}',
    ),
    "plan not JSON": ("plan.json", b'{"version": 3, "docu'),
    "plan of a later format": (
        "plan.json",
        b'{"format": 2, "version": 3, "document": {"titles": []}, "sizes": {}}',
    ),
    "secret not base64": (
        "keys.json",
        b'{"version": 1, "keys": [{"id": "k", "secret": "@@@", "activates": 0,'
        b' "retires": 0, "verify_until": 0}]}',
    ),
    "keys of a later format": (
        "keys.json",
        b'{"format": 3, "version": 1, "keys": []}',
    ),
}


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_a_damaged_plan_or_key_set_reads_as_none_with_a_warning(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No plan: the box serves what it holds and waits for the fleet's; no keys: no token
    verifies until the fleet sends its set. Either beats refusing to start."""
    name, data = UNUSABLE[case]
    state = good_state(tmp_path)
    state.save_keys(Versioned("keys", 1, (FleetKey("k1", b"s" * 32, 0.0, 0.0, 0.0),)))
    (tmp_path / name).write_bytes(data)
    caplog.set_level(logging.WARNING, logger="appliance.fleet")
    assert (state.plan() if name == "plan.json" else state.keys()) is None
    said = [
        getattr(r, "edgeflix_fields", {}) for r in caplog.records
        if r.getMessage() == "fleet.state_unusable"
    ]  # fmt: skip
    assert len(said) == 1 and name in said[0]["file"]


@pytest.mark.parametrize("data", [b"{}", b'{"at": null}', b'{"at": "x"}', b"[1]", b"{", b"NaN"])
def test_a_damaged_contact_file_counts_as_absent(tmp_path: Path, data: bytes) -> None:
    state = good_state(tmp_path)
    assert state.last_contact() == 20.0
    (tmp_path / "contact.json").write_bytes(data)
    assert state.last_contact() is None
    # The link then starts the grace clock at the enrolment: sooner, never later.
    cfg = ApplianceConfig.model_validate(
        {
            "name": "a1",
            "storage": {"disks": [{"path": str(tmp_path / "d0")}], "index": str(tmp_path / "i")},
            "fleet": {"url": "127.0.0.1:9", "state_dir": str(tmp_path)},
        }
    )
    sinks = LinkSinks(
        health=lambda: BoxHealth("ok", (), 1e9),
        traffic=lambda: Traffic({}, 0, 0),
        submit_plan=lambda plan: None,
        set_keys=lambda keys: None,
    )
    lk = FleetLink(cfg, "http://127.0.0.1:1", sinks, clock=lambda: 30.0)
    lk.restore()
    assert lk.last_contact == 10.0
    lk.rpc.close()


def test_appliance_run_says_one_line_for_a_damaged_enrolment(tmp_path: Path) -> None:
    state_dir = tmp_path / "fleet"
    good_state(state_dir)
    (state_dir / "enrolment.json").write_bytes(enrolment_with(site=5))
    (tmp_path / "d0").mkdir()
    config = tmp_path / "appliance.toml"
    config.write_text(
        f"""
name = "a1"
[storage]
disks = [{{ path = "{tmp_path}/d0", max_bytes = 100000000 }}]
index = "{tmp_path}/index.sqlite"
[serve]
listen = "127.0.0.1:0"
shutdown_timeout_s = 0.5
[admin]
listen = "127.0.0.1:0"
[fill]
staging = "{tmp_path}/staging"
[fleet]
url = "127.0.0.1:9"
state_dir = "{state_dir}"
"""
    )
    proc = run_cli(["appliance", "run", "--config", str(config)], timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "enrolment.json is damaged; remove it" in last, proc.stderr

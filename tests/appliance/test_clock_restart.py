"""The field report, through real processes on loopback: an appliance ran at a 1970 clock
(a Raspberry Pi without an RTC, NTP not synced) and saved its last contact with the fleet
then; a power cut; it starts again at the true time with the fleet away, under
`after_grace = "stop"`. `appliance run` is in its grace period on its cached keys, not
expired with them dropped (every steered URL 403) as if the fleet had been gone 56 years,
and `appliance status` beside it agrees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.fleetlink_files import Enrolment
from appliance.fleetlink_keys import FleetKey
from appliance.fleetlink_state import LinkState
from edgeflix.versioning import Versioned
from tests.conftest import run_cli
from tests.integration.daemon_support import poll, write_config
from tests.integration.serve_support import start
from tests.integration.test_fleet_appliances import free_port

AT_1970 = 86_401.59  # contact.json as the report found it


def fleet_phase(doc: dict[str, Any]) -> str:
    return str(doc["daemon"]["fleet"]["phase"])


def test_a_contact_saved_at_1970_is_no_lost_fleet_after_a_power_cut(tmp_path: Path) -> None:
    away = free_port()  # nothing listens there: the fleet manager is away
    (tmp_path / "d0").mkdir()
    config = write_config(
        tmp_path,
        f"""
[auth]
tokens = "required"
[fleet]
url = "127.0.0.1:{away}"
grace_period_s = 3600
after_grace = "stop"
""",
        disks=[tmp_path / "d0"],
    )
    state = LinkState(tmp_path / "fleet")  # [fleet] state_dir's default, beside the index
    state.save_enrolment(
        Enrolment("appliance", "home", f"127.0.0.1:{away}", "http://127.0.0.1:1", 500, 60.0)
    )
    state.save_keys(Versioned("keys", 1, (FleetKey("k1", b"k" * 32, 0.0, 0.0, 0.0),)))
    (tmp_path / "fleet" / "contact.json").write_text(json.dumps({"at": AT_1970}))

    log = tmp_path / "box.log"
    with log.open("ab") as err:
        box = start(["appliance", "run", "--config", str(config)], ("admin",), stderr=err)
    try:
        seen: list[str] = []

        def lost(doc: dict[str, Any]) -> bool:
            seen.append(fleet_phase(doc))
            return seen[-1] != "connected"  # three missed beats (0.5 s apart) on

        doc = poll(box, lost, 20)
        assert doc is not None, log.read_text()
        assert "expired" not in seen and fleet_phase(doc) == "grace", (seen, log.read_text())
        assert doc["health"]["state"] != "failing", doc["health"]
        assert doc["daemon"]["fleet"]["last_contact"] > 1_700_000_000  # counted from now
        assert "fleet.contact_implausible" in log.read_text()

        cli = run_cli(["appliance", "status", "--config", str(config), "--json"], timeout=60)
        assert cli.returncode in (0, 3), cli.stderr
        assert json.loads(cli.stdout)["fleet"]["phase"] in ("connected", "grace")
    finally:
        box.stop()

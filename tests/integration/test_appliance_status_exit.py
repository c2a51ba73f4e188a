"""`edgeflix appliance status` tells its health in its exit status as well as its output: 0 ok,
2 degraded, 1 failing; the table and the --json document are printed either way."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.status import exit_code
from tests.conftest import run_cli
from tests.integration.daemon_support import write_config


def test_exit_codes_per_state() -> None:
    assert (exit_code("ok"), exit_code("degraded"), exit_code("failing")) == (0, 2, 1)
    assert exit_code("no such state") == 1


def test_a_disk_out_of_service_is_degraded_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "d0").mkdir()
    config = write_config(tmp_path, disks=[tmp_path / "d0", tmp_path / "gone"])
    table = run_cli(["appliance", "status", "--config", str(config)])
    assert table.returncode == 2, table.stderr
    assert "degraded" in table.stdout and f"disk {tmp_path / 'gone'} out of service" in table.stdout
    doc = run_cli(["appliance", "status", "--config", str(config), "--json"])
    assert doc.returncode == 2, doc.stderr
    health = json.loads(doc.stdout)["health"]
    assert health["state"] == "degraded"
    assert health["disks_out_of_service"] == [str(tmp_path / "gone")]


def test_no_disk_in_service_is_failing_with_exit_1(tmp_path: Path) -> None:
    config = write_config(tmp_path, disks=[tmp_path / "gone0", tmp_path / "gone1"])
    table = run_cli(["appliance", "status", "--config", str(config)])
    assert table.returncode == 1, table.stderr
    assert "failing" in table.stdout and "no disk in service" in table.stdout
    doc = run_cli(["appliance", "status", "--config", str(config), "--json"])
    assert doc.returncode == 1, doc.stderr
    assert json.loads(doc.stdout)["health"]["state"] == "failing"


def test_the_exit_status_follows_the_state_reported(tmp_path: Path) -> None:
    # Healthy disks: the state also depends on this machine's load, so the exit status is
    # checked against the state the document reports rather than assumed to be 0.
    config = write_config(tmp_path)
    doc = run_cli(["appliance", "status", "--config", str(config), "--json"])
    state = json.loads(doc.stdout)["health"]["state"]
    assert doc.returncode == exit_code(state), (state, doc.stderr)
    assert not json.loads(doc.stdout)["health"]["disks_out_of_service"]

"""`edgeflix appliance status` tells its health in its exit status as well as its output: 0 ok,
3 degraded, 4 failing (1 and 2 stay errors: a bad config is no health state); the table and the
--json document are printed either way."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.index import connect_writer
from appliance.status import exit_code
from tests.conftest import run_cli
from tests.integration.daemon_support import write_config


def ran_once(tmp_path: Path) -> None:
    """The index `appliance run` makes at its first start (status needs one: without it the
    config names the wrong one, or the daemon never ran)."""
    connect_writer(tmp_path / "index.sqlite").close()


def test_exit_codes_per_state() -> None:
    assert (exit_code("ok"), exit_code("degraded"), exit_code("failing")) == (0, 3, 4)
    assert exit_code("no such state") == 4


def test_a_disk_out_of_service_is_degraded_with_exit_3(tmp_path: Path) -> None:
    (tmp_path / "d0").mkdir()
    config = write_config(tmp_path, disks=[tmp_path / "d0", tmp_path / "gone"])
    ran_once(tmp_path)
    table = run_cli(["appliance", "status", "--config", str(config)])
    assert table.returncode == 3, table.stderr
    assert "degraded" in table.stdout and f"disk {tmp_path / 'gone'} out of service" in table.stdout
    doc = run_cli(["appliance", "status", "--config", str(config), "--json"])
    assert doc.returncode == 3, doc.stderr
    health = json.loads(doc.stdout)["health"]
    assert health["state"] == "degraded"
    assert health["disks_out_of_service"] == [str(tmp_path / "gone")]


def test_no_disk_in_service_is_failing_with_exit_4(tmp_path: Path) -> None:
    config = write_config(tmp_path, disks=[tmp_path / "gone0", tmp_path / "gone1"])
    ran_once(tmp_path)
    table = run_cli(["appliance", "status", "--config", str(config)])
    assert table.returncode == 4, table.stderr
    assert "failing" in table.stdout and "no disk in service" in table.stdout
    doc = run_cli(["appliance", "status", "--config", str(config), "--json"])
    assert doc.returncode == 4, doc.stderr
    assert json.loads(doc.stdout)["health"]["state"] == "failing"


def test_the_exit_status_follows_the_state_reported(tmp_path: Path) -> None:
    # Healthy disks: the state also depends on this machine's load, so the exit status is
    # checked against the state the document reports rather than assumed to be 0.
    config = write_config(tmp_path)
    ran_once(tmp_path)
    doc = run_cli(["appliance", "status", "--config", str(config), "--json"])
    state = json.loads(doc.stdout)["health"]["state"]
    assert doc.returncode == exit_code(state), (state, doc.stderr)
    assert not json.loads(doc.stdout)["health"]["disks_out_of_service"]

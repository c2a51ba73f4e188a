"""`fleet ls` across a restart of a real `edgeflix fleet serve`: an appliance last heard
before the restart is shown that old ("seen s ago"), not as heard at the restart."""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.serve_support import start
from tests.integration.test_fleet import FLEET_TOML, ApplianceClient, cli, token


def test_seen_ago_counts_from_the_last_beat_across_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    try:
        box = ApplianceClient(fleet.urls["grpc"], "h1", "http://127.0.0.99:8081")
        box.enrol(token(fleet, "home"))
        box.beat({})
        box.channel.close()
    finally:
        assert fleet.stop() == 0  # a clean stop saves the last beats
    heard = time.monotonic()
    time.sleep(3.0)  # the manager is down; the appliance is silent
    again = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    try:
        (h1,) = cli(again, "ls")  # type: ignore[misc]
        assert h1["name"] == "h1"
        assert h1["last_seen_s"] >= 3.0, h1
        assert h1["last_seen_s"] <= time.monotonic() - heard + 1.0, h1
    finally:
        again.stop()

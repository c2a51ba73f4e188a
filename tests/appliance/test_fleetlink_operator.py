"""What the fleet link tells an operator who changed its `[fleet]` settings in ways it cannot
act on by itself: a renamed appliance (its enrolment names the old name) and a new join token
while enrolled (a site move needs `fleet rm` first). No fleet: the link's state on disk."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from appliance.config import ApplianceConfig
from appliance.fleetlink import FleetLink, LinkSinks
from appliance.fleetlink_figures import BoxHealth, Traffic
from appliance.fleetlink_files import Enrolment
from appliance.fleetlink_state import LinkState


def link(tmp: Path, name: str, **fleet: Any) -> FleetLink:
    config = ApplianceConfig.model_validate(
        {
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(tmp / "index.sqlite")},
            "fleet": {"url": "127.0.0.1:9", "name": name, **fleet},
        }
    )
    sinks = LinkSinks(
        health=lambda: BoxHealth("ok", (), 1e9),
        traffic=lambda: Traffic({}, 0, 0),
        submit_plan=lambda plan: None,
        set_keys=lambda keys: None,
    )
    return FleetLink(config, "http://127.0.0.1:8081", sinks)


def enrolled_as(tmp: Path, name: str) -> None:
    state = LinkState(tmp / "fleet")
    state.save_enrolment(Enrolment(name, "home", "127.0.0.1:9", "http://x:1", 500, 0.0))


def warnings(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [
        getattr(r, "edgeflix_fields", {})
        for r in caplog.records
        if r.getMessage() == name and r.levelno == logging.WARNING
    ]


def test_a_renamed_appliance_is_told_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enrolled_as(tmp_path, "edge1")
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    lk = link(tmp_path, "edge1b", join_token="spent")
    lk.restore()
    assert lk.state()["appliance"] is None  # the enrolment of another name is not used
    (said,) = warnings(caplog, "fleet.renamed")
    assert said["reason"] == "enrolled as edge1, config now says edge1b"
    assert "`edgeflix fleet rm edge1`" in said["action"] and "new join token" in said["action"]


def test_the_same_name_restores_without_a_word(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enrolled_as(tmp_path, "edge1")
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    lk = link(tmp_path, "edge1")
    lk.restore()
    assert lk.state()["appliance"] == "edge1"
    assert not warnings(caplog, "fleet.renamed")


def test_a_new_join_token_while_enrolled_is_said_to_be_unused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enrolled_as(tmp_path, "edge1")
    lk = link(tmp_path, "edge1", join_token="first")
    lk.restore()
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    lk.reconfigure(lk.fleet.model_copy(update={"heartbeat_s": 2.0}))  # the token as it was
    assert not warnings(caplog, "fleet.join_token_unused")
    lk.reconfigure(lk.fleet.model_copy(update={"join_token": "other-site"}))
    (said,) = warnings(caplog, "fleet.join_token_unused")
    assert said["appliance"] == "edge1" and said["site"] == "home"
    assert "`edgeflix fleet rm edge1` first" in said["action"]


def test_a_new_join_token_after_the_fleet_forgot_the_appliance_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused on enrolling again (`fleet rm`, the old token spent): the new token is the
    way back, not unused."""
    enrolled_as(tmp_path, "edge1")
    lk = link(tmp_path, "edge1", join_token="spent")
    lk.restore()
    lk._keep_enrolment("join token refused")  # what the link does on that refusal
    caplog.set_level(logging.INFO, logger="appliance.fleet")
    lk.reconfigure(lk.fleet.model_copy(update={"join_token": "fresh"}))
    assert not warnings(caplog, "fleet.join_token_unused")
    assert lk.state()["refused"] is None

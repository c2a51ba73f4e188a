"""`appliance fill`'s command line turned into a plan (session.plan_from_cli): what it
accepts, and one-line PlanErrors for what it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance.config import ApplianceConfig
from appliance.fill.plan import PlanError
from appliance.fill.session import plan_from_cli
from tests.appliance.storage_fixtures import storage_toml

URL = "http://127.0.0.1:8080"


@pytest.fixture
def cfg(tmp_path: Path) -> ApplianceConfig:
    return appliance_config.load(storage_toml(tmp_path, tiers=("ssd",)))


def test_a_title_or_source_given_twice_is_meant_once(cfg: ApplianceConfig) -> None:
    plan = plan_from_cli(cfg, [URL, URL + "/"], ["clip", "clip", "tiny"], None, 8, 2, False)
    assert [t.id for t in plan.titles] == ["clip", "tiny"]
    assert plan.titles[0].sources == (URL,)
    assert plan.cap_bps == 8_000_000 and plan.streams == 2 and not plan.prune


@pytest.mark.parametrize(
    ("cap", "says"),
    [
        (float("inf"), "give a number"),
        (float("nan"), "give a number"),
        (0.0000001, "under 1 bit/s"),
    ],
)
def test_caps_that_cannot_be_a_cap_are_refused(cfg: ApplianceConfig, cap: float, says: str) -> None:
    with pytest.raises(PlanError, match=says):
        plan_from_cli(cfg, [URL], ["clip"], None, cap, None, False)


def test_a_zero_cap_is_no_cap(cfg: ApplianceConfig) -> None:
    assert plan_from_cli(cfg, [URL], ["clip"], None, 0, None, False).cap_bps is None


def test_a_bad_override_of_a_plan_file_is_one_line(cfg: ApplianceConfig, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"titles": [{"id": "clip", "sources": ["http://o"]}]}')
    with pytest.raises(PlanError, match=r"^streams: .*64") as info:
        plan_from_cli(cfg, [], [], plan, None, 65, False)
    assert "\n" not in str(info.value)


def test_now_from_the_command_line_does_not_wait_for_site_peers(
    cfg: ApplianceConfig, tmp_path: Path
) -> None:
    """A plan file's fill run waits minutes for a site peer still filling a title; an
    operator typing `--now` wants the titles now (the daemon's fills still wait)."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        '{"titles": [{"id": "a", "sources": ["http://10.0.0.2:8081", "http://o:8080"]}],'
        ' "window": "03:00-04:00", "timezone": "UTC"}'
    )
    scheduled = plan_from_cli(cfg, [], [], plan_file, None, None, False)
    assert scheduled.wait_for_peers and scheduled.window == "03:00-04:00"
    now = plan_from_cli(cfg, [], [], plan_file, None, None, True)
    assert not now.wait_for_peers and now.window is None

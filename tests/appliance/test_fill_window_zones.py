"""Fill-window time zones: names that are not zones (a folder of zones, an over-long name)
are one user-facing WindowError, never an OSError traceback."""

from __future__ import annotations

import pytest

from appliance.fill.plan import PlanError, parse_plan
from appliance.fill.window import parse_window
from edgeflix.fillwindow import WindowError


@pytest.mark.parametrize("name", ["Europe", "America", "America/Argentina", "a" * 300])
def test_a_folder_or_overlong_name_is_an_unknown_zone(name: str) -> None:
    with pytest.raises(WindowError) as info:
        parse_window("02:00-06:00", name)
    message = str(info.value)
    assert message.startswith("unknown time zone ") and "Europe/Berlin" in message
    assert "\n" not in message and len(message) < 160


def test_a_plan_naming_a_folder_is_refused_as_a_plan_error() -> None:
    raw = b'{"window": "02:00-06:00", "timezone": "Europe"}'
    with pytest.raises(PlanError, match="unknown time zone 'Europe'"):
        parse_plan(raw, "plan.json")

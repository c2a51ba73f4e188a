"""Site time zones that name no zone are one user-facing error, whatever the name is."""

from __future__ import annotations

import pytest

from fleet.errors import FleetInputError
from fleet.model import Site


@pytest.mark.parametrize("name", ["Europe", "America", "Europe/", "", "UTC\x00", "a" * 300])
def test_a_name_that_is_no_zone_is_refused_in_one_line(name: str) -> None:
    with pytest.raises(FleetInputError) as info:
        Site.build("s", ["10.0.0.0/8"], "02:00-06:00", name)
    message = str(info.value)
    assert "unknown time zone" in message and "Europe/Berlin" in message
    assert "\n" not in message and len(message) < 160


@pytest.mark.parametrize("name", ["Europe/Berlin", "UTC", "America/New_York"])
def test_iana_names_are_accepted(name: str) -> None:
    assert Site.build("s", [], timezone=name).timezone == name

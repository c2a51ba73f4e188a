"""Fleet model values: prefixes, fill windows in the site's timezone, appliance URLs."""

from __future__ import annotations

import datetime as dt

import pytest

from fleet.errors import FleetInputError
from fleet.model import (
    Appliance,
    FillWindow,
    FleetSnapshot,
    HeldTitle,
    Site,
    check_appliance_url,
    parse_address,
)


def test_fill_window_wraps_midnight() -> None:
    w = FillWindow.parse("22:30-04:00")

    def at(hour: int, minute: int) -> bool:
        return w.is_open(dt.datetime(2026, 5, 4, hour, minute, tzinfo=dt.UTC), dt.UTC)

    assert at(23, 0) and at(3, 59)
    assert not at(4, 0) and not at(12, 0)
    assert str(w) == "22:30-04:00"


def test_a_site_window_open_all_day_is_accepted_and_published_as_it_parses() -> None:
    """00:00-24:00: the site fills at any hour; plans carry it in a form the appliances read
    back as always open (never "00:00-00:00", which they refuse as empty)."""
    site = Site.build("home", ["192.168.1.0/24"], "00:00-24:00", "Europe/Berlin")
    assert str(site.fill_window) == "00:00-24:00"
    assert FillWindow.parse(str(site.fill_window)) == site.fill_window
    for hour in range(24):
        assert site.in_fill_window(dt.datetime(2026, 3, 29, hour, 30, tzinfo=dt.UTC))
    assert str(FillWindow.parse("22:00-24:00")) == "22:00-00:00"


@pytest.mark.parametrize("text", ["2-6", "02:00", "02:00-02:00", "25:00-03:00", "00:00-00:00"])
def test_bad_fill_windows_are_refused(text: str) -> None:
    with pytest.raises(FleetInputError):
        FillWindow.parse(text)


def test_site_window_uses_the_site_timezone() -> None:
    site = Site.build("home", ["192.168.1.0/24"], "02:00-06:00", "Europe/Berlin")
    # 01:30 UTC in January is 02:30 in Berlin: inside; 05:30 UTC is 06:30: outside.
    assert site.in_fill_window(dt.datetime(2026, 1, 5, 1, 30, tzinfo=dt.UTC))
    assert not site.in_fill_window(dt.datetime(2026, 1, 5, 5, 30, tzinfo=dt.UTC))


def test_bad_site_values_are_refused() -> None:
    with pytest.raises(FleetInputError, match="unknown time zone"):
        Site.build("x", [], timezone="Mars/Olympus")
    with pytest.raises(FleetInputError, match="not an IP prefix"):
        Site.build("x", ["192.168.1.0/33"])


def test_appliance_derived_figures() -> None:
    a = Appliance(
        "a",
        "home",
        "u",
        capacity_bps=1e9,
        load_bps=2.5e8,
        titles={"t": HeldTitle("d"), "p": HeldTitle("d", complete=False)},
    )
    assert a.utilisation == 0.25 and a.spare_bps == 7.5e8
    assert a.holds_complete("t") and not a.holds_complete("p") and not a.holds_complete("x")


def test_an_ipv4_mapped_site_prefix_matches_its_ipv4_clients() -> None:
    site = Site.build("home", ["::ffff:10.0.0.0/104"], "02:00-06:00", "UTC")
    snap = FleetSnapshot(sites=(site,), appliances=())
    for client in ("10.1.2.3", "::ffff:10.1.2.3"):
        assert snap.site_of(parse_address(client)) == site, client
    assert snap.site_of(parse_address("11.0.0.1")) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://0.0.0.0:8081",
        "http://[::]:8081",
        "https://0.0.0.0",
        "http://[0:0:0:0:0:0:0:0]:8081",
        "http://[::ffff:0.0.0.0]:8081",
        "http://0:8081",  # what a player's resolver reads as 0.0.0.0
        "http://0.0.0.1:8081",  # 0.0.0.0/8 is "this network", never a destination
    ],
)
def test_a_wildcard_appliance_url_is_refused_naming_public_url(url: str) -> None:
    """An appliance on all interfaces with no public URL registered http://0.0.0.0:PORT,
    and players were steered there."""
    with pytest.raises(FleetInputError, match=r"wildcard address.*\[fleet\] public_url"):
        check_appliance_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8081",
        "http://[::1]:8081",
        "http://192.168.1.10:8081/",
        "https://edge1.example.com",
        "http://h0:8081",
        "http://10.0.0.0:8081",
    ],
)
def test_reachable_appliance_urls_are_kept(url: str) -> None:
    assert check_appliance_url(url) == url.rstrip("/")

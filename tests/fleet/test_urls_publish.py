"""Steering → signed URLs (edgeflix.tokens), and plans → what appliances read."""

from __future__ import annotations

import json

import pytest

from appliance.fill.plan import parse_plan  # contract check: the appliance reads our output
from edgeflix.tokens import SigningKey, WrongClient, verify
from fleet.model import Appliance, FleetSnapshot, HeldTitle, Site
from fleet.plans import ApplianceFillPlan, PlannedTitle
from fleet.publish import to_document, to_proto
from fleet.steering import steer
from fleet.urls import playback_urls

KEY = SigningKey("k1", b"s" * 32)
HOME = Site.build("home", ["192.168.1.0/24"], "02:00-06:00", "Europe/Berlin")


def snapshot() -> FleetSnapshot:
    box = Appliance("h1", "home", "http://127.0.0.1:8081/", titles={"film": HeldTitle("d")})
    return FleetSnapshot((HOME,), (box,), origin_url="http://127.0.0.1:8080")


def test_appliance_urls_carry_a_token_that_verifies_and_origin_urls_do_not() -> None:
    decision = steer(snapshot(), "192.168.1.5", "film")
    got = playback_urls(decision, lambda _c: KEY, now=1000.0, ttl_s=600)
    appliance_url, origin_url = got.urls
    assert got.expires == 1600
    assert appliance_url.startswith("http://127.0.0.1:8081/t/k1.1600.any.")
    assert appliance_url.endswith("/titles/film/master.m3u8")
    token = appliance_url.split("/t/", 1)[1].split("/", 1)[0]
    claims = verify(
        token, title_id="film", client_ip="10.9.9.9", keys={"k1": KEY.secret}, now=1500.0
    )
    assert claims.expires == 1600
    assert origin_url == "http://127.0.0.1:8080/titles/film/master.m3u8"


def test_bound_urls_refuse_another_client_and_no_key_means_no_token() -> None:
    decision = steer(snapshot(), "192.168.1.5", "film")
    url = playback_urls(decision, lambda _c: KEY, 0.0, 60, bind_client_ip=True).urls[0]
    token = url.split("/t/", 1)[1].split("/", 1)[0]
    verify(token, title_id="film", client_ip="192.168.1.5", keys={"k1": KEY.secret}, now=1)
    with pytest.raises(WrongClient):
        verify(token, title_id="film", client_ip="192.168.1.6", keys={"k1": KEY.secret}, now=1)
    plain = playback_urls(decision, lambda _c: None, 0.0, 60).urls[0]
    assert plain == "http://127.0.0.1:8081/titles/film/master.m3u8"


DIGEST = "ab" * 32
ENTRY = ApplianceFillPlan(
    "h2",
    "home",
    (
        PlannedTitle("film", DIGEST, 10, "ssd", "h1"),
        PlannedTitle("show", "not-a-sha", 5, "hdd", "origin"),
    ),
)


def test_plan_document_is_what_the_appliance_reads() -> None:
    doc = to_document(ENTRY, HOME, {"h1": "http://10.0.0.1:8081/"}, "http://origin:8080")
    parsed = parse_plan(json.dumps(doc).encode(), "fleet")
    assert [t.id for t in parsed.titles] == ["film", "show"]
    assert parsed.titles[0].sources == ("http://10.0.0.1:8081", "http://origin:8080")
    assert parsed.titles[0].digest == DIGEST and parsed.titles[1].digest is None
    assert parsed.titles[1].sources == ("http://origin:8080",)
    assert [t.size for t in parsed.titles] == [10, 5]  # for the fill's wait for a peer
    assert (parsed.window, parsed.timezone) == ("02:00-06:00", "Europe/Berlin")


def test_a_site_open_all_day_publishes_a_plan_the_appliance_fills_at_any_hour() -> None:
    always = Site.build("home", ["192.168.1.0/24"], "00:00-24:00", "Europe/Berlin")
    doc = to_document(ENTRY, always, {"h1": "http://10.0.0.1:8081/"}, "http://origin:8080")
    window = parse_plan(json.dumps(doc).encode(), "fleet").fill_window()
    assert window is not None and window.always_open
    assert to_proto(ENTRY, 4, always, {}, "http://origin:8080").fill_window == "00:00-24:00"


def test_plan_proto_keeps_order_version_and_sources() -> None:
    plan = to_proto(ENTRY, 4, HOME, {"h1": "http://10.0.0.1:8081"}, "http://origin:8080")
    assert plan.version == 4 and plan.fill_window == "02:00-06:00"
    assert [t.title_id for t in plan.titles] == ["film", "show"]
    assert list(plan.titles[0].sources) == ["http://10.0.0.1:8081", "http://origin:8080"]


def test_token_cache_hands_out_what_sign_would_and_starts_afresh_each_second() -> None:
    from edgeflix.tokens import sign
    from fleet.urls import TokenCache

    cache = TokenCache(max_entries=2)
    other = SigningKey("k2", b"t" * 32)
    for key, expires, client in [(KEY, 1600, None), (KEY, 1600, "10.0.0.1"), (other, 1600, None)]:
        for title in ("film", "show", "clip"):  # the third is past max_entries
            assert cache(title, key, expires, client) == sign(title, key, expires, client)
            assert cache(title, key, expires, client) == sign(title, key, expires, client)
    assert cache("film", KEY, 1601) == sign("film", KEY, 1601)
    decision = steer(snapshot(), "192.168.1.5", "film")
    assert playback_urls(decision, lambda _c: KEY, 1000.0, 600, signer=cache) == playback_urls(
        decision, lambda _c: KEY, 1000.0, 600
    )


def test_token_cache_keeps_each_keys_tokens_while_two_keys_sign() -> None:
    """After a rotation one answer signs for appliances on the new key and on the old one;
    switching between them must not throw the other key's tokens away."""
    from edgeflix.tokens import sign
    from fleet.urls import TokenCache

    cache = TokenCache()
    other = SigningKey("k2", b"t" * 32)
    for _ in range(10):
        for key in (KEY, other):
            assert cache("film", key, 1600) == sign("film", key, 1600)
    assert len(cache._tokens) == 2  # one signature per key, not one per switch

"""A real `edgeflix appliance run` whose clock runs 5 h ahead of a real `edgeflix fleet serve`
(every process of the box on a `sitecustomize` seam that shifts its wall clock): the fleet
steers players to it, and the URLs it hands out play there, checked on the fleet's clock
(tests/appliance/test_clock_corrected_tokens.py has the parts)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.appliance.test_clock_corrected_tokens import SEAM
from tests.conftest import run_cli
from tests.integration.daemon_support import seam_env, start_daemon, status
from tests.integration.serve_support import Server, make_title, start
from tests.integration.test_fleet import FLEET_TOML

AHEAD_S = 5 * 3600.0
BOUND_S = 60.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Server]:
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    server = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    try:
        yield server
    finally:
        server.stop()


def test_a_box_5h_ahead_plays_the_urls_the_fleet_steers_to_it(
    tmp_path: Path, fleet: Server
) -> None:
    token = httpx.post(fleet.urls["http"] + "/join-tokens", json={"site": "home"}, timeout=10)
    (tmp_path / "d0").mkdir()
    config = tmp_path / "appliance.toml"
    config.write_text(f"""
name = "a1"
[storage]
index = "{tmp_path / "index.sqlite"}"
disks = [{{ path = "{tmp_path / "d0"}" }}]
[serve]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[auth]
tokens = "required"
[fill]
staging = "{tmp_path / "staging"}"
[fleet]
url = "{fleet.urls["grpc"]}"
join_token = "{token.raise_for_status().json()["token"]}"
heartbeat_s = 0.5
""")
    src = make_title(tmp_path / "src" / "film", "film")
    run_cli(["appliance", "load", "--config", str(config), "--title", "film", "--from",
             str(src)], check=True)  # fmt: skip
    env = seam_env(tmp_path, SEAM, EDGEFLIX_TEST_CLOCK_SKEW_S=str(AHEAD_S))
    box = start_daemon(config, env)
    try:
        deadline, steered = time.monotonic() + BOUND_S, ""
        while time.monotonic() < deadline and not steered:
            reply = httpx.get(
                fleet.urls["http"] + "/steer",
                params={"client_ip": "192.168.1.50", "title": "film"},
                timeout=10,
            ).json()
            steered = next((u for u in reply["urls"] if u.startswith(box.url)), "")
            time.sleep(0.2)
        assert steered, status(box)["daemon"]["fleet"]
        fleet_state = status(box)["daemon"]["fleet"]
        assert fleet_state["clock_correction_s"] == pytest.approx(-AHEAD_S, abs=5)
        assert fleet_state["clock"].startswith("clock off by +18000 s")
        # The workers have the correction with the keys once the link published them.
        deadline, got = time.monotonic() + BOUND_S, 0
        while time.monotonic() < deadline and got != 200:
            got = httpx.get(steered, timeout=10).status_code
            time.sleep(0.2)
        assert got == 200, steered
    finally:
        box.stop()

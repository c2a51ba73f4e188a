"""The addresses `edgeflix demo` writes into the configs it starts the daemons with: what a
client dials, never a wildcard (the fleet refuses one as its origin URL, the appliance as
its public URL) nor an empty host. The configs are loaded by the real loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config as appliance_config
from edgeflix.demo import reachable, write_appliance_config, write_fleet_config
from fleet import config as fleet_config


@pytest.mark.parametrize(
    ("listen", "dial"),
    [
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("0:8080", "127.0.0.1:8080"),
        (":8080", "127.0.0.1:8080"),  # an empty host listens on loopback
        ("[::]:8080", "[::1]:8080"),
        ("[::ffff:0.0.0.0]:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("[::1]:8080", "[::1]:8080"),
        ("box.lan:8080", "box.lan:8080"),
    ],
)
def test_a_listen_address_becomes_one_a_client_dials(listen: str, dial: str) -> None:
    assert reachable(listen) == dial


@pytest.mark.parametrize("origin", ["0.0.0.0:8080", ":8080", "[::]:8080"])
def test_the_fleet_config_takes_the_origin_url_written(tmp_path: Path, origin: str) -> None:
    path = write_fleet_config(tmp_path, "127.0.0.1:7070", "127.0.0.1:7080",
                              f"http://{reachable(origin)}")  # fmt: skip
    loaded = fleet_config.load(path)
    assert loaded.origin.url in ("http://127.0.0.1:8080", "http://[::1]:8080")


def test_an_appliance_listening_everywhere_registers_its_loopback_url(tmp_path: Path) -> None:
    path = write_appliance_config(tmp_path, "0.0.0.0:8081", "127.0.0.1:8082", ":7070")
    loaded = appliance_config.load(path)
    assert loaded.fleet.public_url == "http://127.0.0.1:8081"
    assert loaded.fleet.url == "127.0.0.1:7070"
    plain = appliance_config.load(
        write_appliance_config(tmp_path, "127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:7070")
    )
    assert plain.fleet.public_url is None  # the listen address is the URL already

"""`[fleet] public_url` is where the fleet steers players to this appliance: a wildcard
host (all interfaces) is no address a player can reach, so it is refused at config load,
naming the file and the key, before the appliance enrols with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.config import ApplianceConfig
from tests.conftest import run_cli


@pytest.mark.parametrize(
    "url", ["http://0.0.0.0:8081", "http://[::]:8081", "https://0:443", "http://[::ffff:0.0.0.0]"]
)
def test_a_wildcard_public_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match=r"fleet\.public_url\n.*wildcard address"):
        ApplianceConfig.model_validate({"fleet": {"url": "127.0.0.1:9", "public_url": url}})


def test_a_reachable_public_url_is_kept() -> None:
    cfg = ApplianceConfig.model_validate(
        {"serve": {"listen": "0.0.0.0:8081"},
         "fleet": {"url": "127.0.0.1:9", "public_url": "http://192.168.1.10:8081/"}}
    )  # fmt: skip
    assert cfg.fleet.public_url == "http://192.168.1.10:8081"


def test_the_cli_names_the_file_and_key_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(
        f"""
[storage]
disks = [{{ path = "{tmp_path}/d0" }}]
index = "{tmp_path}/var/index.sqlite"
[serve]
listen = "127.0.0.1:0"
[fleet]
url = "127.0.0.1:9"
public_url = "http://0.0.0.0:8081"
"""
    )
    proc = run_cli(["appliance", "ls", "--config", str(config)], timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {config}: key 'fleet.public_url': 'http://0.0.0.0:8081' is a wildcard address "
        "(all interfaces), which no client can reach: give the address or name the server is "
        "reached at"
    ]
    assert not (tmp_path / "var").exists()  # refused before anything was made

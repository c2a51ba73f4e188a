"""The `[fleet]` settings the link cannot work without: an appliance listening on all
interfaces (0.0.0.0, [::]) has no address of its own to register, so without
`[fleet] public_url` it is refused at config load, before the fleet steers players to
http://0.0.0.0:PORT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from appliance.config import ApplianceConfig
from tests.conftest import run_cli


def validate(listen: str, **fleet: Any) -> ApplianceConfig:
    return ApplianceConfig.model_validate(
        {"serve": {"listen": listen}, "fleet": {"url": "127.0.0.1:9", **fleet}}
    )


@pytest.mark.parametrize(
    "listen",
    # The short forms and the IPv4-mapped one too: the fleet refuses all of them.
    ["0.0.0.0:8081", "[::]:8081", "[0:0::0]:0", "0:8081", "0.0:8081", "[::ffff:0.0.0.0]:8081"],
)
def test_a_wildcard_listen_with_a_fleet_needs_a_public_url(listen: str) -> None:
    with pytest.raises(ValidationError, match=r"set \[fleet\] public_url"):
        validate(listen)
    cfg = validate(listen, public_url="http://192.168.1.10:8081")
    assert cfg.fleet.public_url == "http://192.168.1.10:8081"


@pytest.mark.parametrize("listen", ["127.0.0.1:8081", ":8081", "[::1]:0", "box.lan:8081"])
def test_an_address_of_its_own_needs_none(listen: str) -> None:
    assert validate(listen).fleet.public_url is None


def test_without_a_fleet_a_wildcard_is_fine() -> None:
    cfg = ApplianceConfig.model_validate({"serve": {"listen": "0.0.0.0:8081"}})
    assert cfg.fleet.url is None


def test_appliance_run_refuses_it_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(
        f"""
[storage]
disks = [{{ path = "{tmp_path}/d0" }}]
index = "{tmp_path}/index.sqlite"
[serve]
listen = "0.0.0.0:0"
[fleet]
url = "127.0.0.1:9"
"""
    )
    proc = run_cli(["appliance", "run", "--config", str(config)], timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "listening on" not in proc.stdout
    assert "public_url" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("url", ["::1:7070", "::1", "[127.0.0.1]:7070", "[::1:7070"])
def test_a_fleet_url_grpc_cannot_dial_is_refused(url: str) -> None:
    """`::1:7070` passed the checks and gRPC dialled it for ever, never connecting."""
    with pytest.raises(ValidationError, match=r"fleet\.url\n.*not HOST:PORT"):
        ApplianceConfig.model_validate({"fleet": {"url": url}})
    with pytest.raises(ValidationError, match=r"fleet\.enrol_url\n.*not HOST:PORT"):
        ApplianceConfig.model_validate(
            {"fleet": {"url": "[::1]:7070", "ca": "ca.pem", "enrol_url": url}}
        )
    cfg = ApplianceConfig.model_validate({"fleet": {"url": "[::1]:7070"}})
    assert cfg.fleet.url == "[::1]:7070"

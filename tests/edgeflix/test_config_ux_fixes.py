"""Config mistakes a review found badly told: a URL where HOST:PORT is wanted (the
appliance's [fleet] url given the manager's HTTP URL) answered with an IPv6 hint, misspelt
override variables ignored without a word, and a number given through the environment for
a string key refused with no hint to quote it."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import ENV_PREFIX as APPLIANCE
from appliance.index import connect_writer
from edgeflix.config import (
    NOT_OVERRIDES,
    ConfigModel,
    ignored_overrides,
    load_config,
    quote_for_shell,
)
from edgeflix.configtypes import HostPort, parse_fleet_grpc, parse_hostport
from edgeflix.errors import ConfigError
from fleet.config import ENV_PREFIX as FLEET
from origin.config import ENV_PREFIX as ORIGIN
from tests.appliance.storage_fixtures import storage_toml

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "edgeflix.cli"]


# -- 3. a URL where HOST:PORT is wanted -------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["http://127.0.0.1:7080", "https://fleet.example:443", "grpc://[::1]:7070"]
)
def test_a_url_is_called_a_url_not_a_bad_ipv6_address(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_hostport(value)
    message = str(caught.value)
    # Generic: parse_hostport also reads listen addresses, where a fleet hint would mislead.
    assert message == f"'{value}' is a URL; give HOST:PORT", message
    with pytest.raises(ConfigError) as caught:
        parse_fleet_grpc(value)
    message = str(caught.value)
    assert message.startswith(f"'{value}' is a URL; give the fleet manager's gRPC HOST:PORT")
    assert "IPv6" not in message


def test_host_port_forms_still_parse() -> None:
    assert parse_hostport("[::1]:8080") == ("::1", 8080)
    assert parse_hostport(":7070") == ("127.0.0.1", 7070)
    with pytest.raises(ConfigError, match=r"IPv6 address goes in brackets"):
        parse_hostport("::1:8080")


class Link(ConfigModel):
    url: HostPort | None = None


def test_the_key_and_file_come_first(tmp_path: Path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text('url = "http://127.0.0.1:7080"\n')
    with pytest.raises(
        ConfigError, match=r"a\.toml: key 'url': 'http://127\.0\.0\.1:7080' is a URL"
    ):
        load_config(Link, toml, env={})


# -- 4. near-miss override variables ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "EDGEFLIX_APPLIANCE_SERVE__WORKERS",  # one underscore after the prefix
        "EDGEFLIX_APPLIANCE_SERVE_WORKERS",
        "EDGEFLIX_APPLIANCES__SERVE__WORKERS",  # plural
        "EDGEFLIX_APPLIANCES_SERVE_WORKERS",
        "edgeflix_appliance__serve__workers",  # the prefix in lower case
        "Edgeflix_Appliance__SERVE__WORKERS",
        "EDGEFLIX_APPLIANCE",  # the prefix alone
        "EDGEFLIX_APPLIANCE__",  # no key after it
        "EDGEFLIX_APPLIANCE____",
    ],
)
def test_near_misses_are_named(name: str) -> None:
    assert ignored_overrides([name], APPLIANCE) == [name]


@pytest.mark.parametrize(
    "name",
    [
        "EDGEFLIX_APPLIANCE__SERVE__WORKERS",  # the real thing
        "EDGEFLIX_APPLIANCE__serve__workers",  # keys are read in any case
        "EDGEFLIX_APPLIANCE__NAME",
        "EDGEFLIX_FLEET__SERVER__HTTP",  # another component's override
        "EDGEFLIX_ORIGIN__ENCODE__PRESET",
        "EDGEFLIX_APPLIANCEX__A",  # not the prefix nor a plural of it
        "PATH",
        "MY_EDGEFLIX_APPLIANCE__A",
    ],
)
def test_overrides_and_other_variables_are_not(name: str) -> None:
    assert ignored_overrides([name], APPLIANCE) == []


@pytest.mark.parametrize("prefix", [APPLIANCE, FLEET, ORIGIN])
def test_the_variables_edgeflix_reads_are_never_near_misses(prefix: str) -> None:
    assert ignored_overrides(NOT_OVERRIDES, prefix) == []


def test_fleet_near_misses_beside_its_own_variables() -> None:
    env = ["EDGEFLIX_FLEET", "EDGEFLIX_FLEET_CA", "EDGEFLIX_FLEET_TOKEN", "EDGEFLIX_FLEET_URL"]
    assert ignored_overrides(env, FLEET) == ["EDGEFLIX_FLEET_URL"]


def test_every_edgeflix_variable_the_code_reads_is_listed() -> None:
    """A new EDGEFLIX_X read by the code, missing from NOT_OVERRIDES, would be warned about
    as a misspelt override in every daemon's log."""
    prefixes = {APPLIANCE, FLEET, ORIGIN}
    read = set()
    for folder in ("edgeflix", "appliance", "fleet", "origin"):
        for source in (ROOT / folder).rglob("*.py"):
            text = source.read_text(encoding="utf-8")
            read |= set(re.findall(r"[\"'](EDGEFLIX_[A-Z_]*[A-Z])[\"']", text))
    wanted = {name for name in read if "__" not in name} - (prefixes - {"EDGEFLIX_FLEET"})
    assert wanted <= NOT_OVERRIDES, wanted - NOT_OVERRIDES


class Serve(ConfigModel):
    workers: int = 2


class Daemon(ConfigModel):
    name: str = "edge"
    serve: Serve = Serve()


def test_load_config_warns_once_naming_them(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "EDGEFLIX_APPLIANCE_SERVE__WORKERS": "0",
        "edgeflix_appliance__serve__workers": "0",
        "EDGEFLIX_APPLIANCE__SERVE__WORKERS": "3",
        "EDGEFLIX_FLEET_TOKEN": "secret",
    }
    with caplog.at_level(logging.WARNING, logger="edgeflix.config"):
        cfg = load_config(Daemon, None, env=env, env_prefix=APPLIANCE)
    assert cfg.serve.workers == 3
    (record,) = caplog.records
    assert record.getMessage() == "config.env_ignored"
    fields = record.edgeflix_fields  # type: ignore[attr-defined]
    assert (
        fields["variables"]
        == "EDGEFLIX_APPLIANCE_SERVE__WORKERS edgeflix_appliance__serve__workers"
    )
    assert "EDGEFLIX_APPLIANCE__SECTION__KEY" in fields["reason"]
    assert "secret" not in caplog.text and "0" not in fields["variables"]


def test_no_warning_when_all_is_well(caplog: pytest.LogCaptureFixture) -> None:
    env = {"EDGEFLIX_APPLIANCE__SERVE__WORKERS": "3", "EDGEFLIX_LOG_LEVEL": "info"}
    with caplog.at_level(logging.DEBUG):
        load_config(Daemon, None, env=env, env_prefix=APPLIANCE)
    assert caplog.records == []


# -- 5. a number given for a string key -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "quoted"),
    [("1", "'\"1\"'"), ("true", "'\"true\"'"), ("[1]", "'\"[1]\"'"), ("it's", "'\"it'\"'\"'s\"'")],
)
def test_quote_for_shell(raw: str, quoted: str) -> None:
    assert quote_for_shell(raw) == quoted


@pytest.mark.parametrize(
    ("name", "raw", "key"),
    [
        ("EDGEFLIX_APPLIANCE__NAME", "1", "name"),
        ("EDGEFLIX_APPLIANCE__NAME", "2026-01-01", "name"),
        ("EDGEFLIX_APPLIANCE__NAME", "false", "name"),
    ],
)
def test_a_number_for_a_string_key_says_to_quote_it(name: str, raw: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(Daemon, None, env={name: raw}, env_prefix=APPLIANCE)
    assert str(caught.value) == (
        f"{name}: key '{key}': Input should be a valid string "
        f"(quote it to keep it text: {name}='\"{raw}\"')"
    )


def test_no_quote_hint_for_a_file_value_or_a_wrong_number(tmp_path: Path) -> None:
    toml = tmp_path / "d.toml"
    toml.write_text("name = 1\n")
    with pytest.raises(ConfigError) as in_file:
        load_config(Daemon, toml, env={}, env_prefix=APPLIANCE)
    assert "quote it" not in str(in_file.value)
    env = {"EDGEFLIX_APPLIANCE__SERVE__WORKERS": "many"}
    with pytest.raises(ConfigError) as not_a_string:
        load_config(Daemon, None, env=env, env_prefix=APPLIANCE)
    assert "quote it" not in str(not_a_string.value)


# -- the same, as a user meets them -----------------------------------------------------------


def _edgeflix(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.lower().startswith("edgeflix_")}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env={**full, **env}
    )


@pytest.mark.parametrize(
    "name",
    [
        "EDGEFLIX_APPLIANCE_SERVE__WORKERS",
        "EDGEFLIX_APPLIANCE_SERVE_WORKERS",
        "EDGEFLIX_APPLIANCES__SERVE__WORKERS",
        "edgeflix_appliance__serve__workers",
    ],
)
def test_appliance_ls_warns_of_a_misspelt_variable(tmp_path: Path, name: str) -> None:
    config = str(storage_toml(tmp_path))
    (tmp_path / "var").mkdir()
    connect_writer(tmp_path / "var" / "index.sqlite").close()  # an empty appliance
    proc = _edgeflix(["appliance", "ls", "--config", config, "--json"], **{name: "0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    (line,) = proc.stderr.splitlines()
    assert "level=warning" in line and "event=config.env_ignored" in line
    assert f"variables={name} " in line


def test_appliance_with_a_url_for_fleet_url_says_so(tmp_path: Path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text('[fleet]\nurl = "http://127.0.0.1:7080"\n')
    proc = _edgeflix(["appliance", "ls", "--config", str(toml)])
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {toml}: key 'fleet.url': 'http://127.0.0.1:7080' is a URL; give the fleet "
        "manager's gRPC HOST:PORT ([server] grpc, or enrol_grpc for enrol_url), not its HTTP "
        "URL\n"
    )


def test_the_fleet_manager_own_http_key_gets_no_fleet_url_hint(tmp_path: Path) -> None:
    proc = _edgeflix(["fleet", "serve"], EDGEFLIX_FLEET__SERVER__HTTP='"https://127.0.0.1:7080"')
    assert proc.returncode == 2
    assert proc.stderr.endswith("'https://127.0.0.1:7080' is a URL; give HOST:PORT\n")


def test_appliance_with_a_number_for_its_join_token_says_to_quote_it(tmp_path: Path) -> None:
    name = "EDGEFLIX_APPLIANCE__FLEET__JOIN_TOKEN"
    proc = _edgeflix(["appliance", "ls", "--config", str(storage_toml(tmp_path))], **{name: "123"})
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: {name}: key 'fleet.join_token': Input should be a valid string "
        f"(quote it to keep it text: {name}='\"123\"')\n"
    )

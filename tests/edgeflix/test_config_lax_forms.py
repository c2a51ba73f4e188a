"""Strict config models still take the forms the release before (lax pydantic) took that
have one reading, so an upgrade starts every daemon that started before: a boolean in its
usual spellings (`=0`, `=no`, `=False`, from a variable or a file), a whole float for an
integer (`3600.0`, `1e4`), a variable's text that TOML does not read as a number (`.5`,
`04`). A fractional float for an integer is still refused, and the refusals say what to
write: true or false for a boolean, an array in TOML's words for a list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance import config as appliance_config
from edgeflix.config import ConfigModel, load_config
from edgeflix.errors import ConfigError
from fleet import config as fleet_config
from origin import config as origin_config
from tests.integration.daemon_support import start_daemon, status, write_config

APPLIANCE, FLEET = "EDGEFLIX_APPLIANCE", "EDGEFLIX_FLEET"
ROOTS: dict[str, type[ConfigModel]] = {
    APPLIANCE: appliance_config.ApplianceConfig,
    FLEET: fleet_config.FleetConfig,
    "EDGEFLIX_ORIGIN": origin_config.OriginConfig,
}


def load(tmp_path: Path, prefix: str, text: str = "", **env: str) -> Any:
    """`text` as the config file of the component with variables' `prefix`, and `env`."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(ROOTS[prefix], path, env=env, env_prefix=prefix)


def refusal(tmp_path: Path, prefix: str, text: str = "", **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, prefix, text, **env)
    message = str(caught.value)
    assert "\n" not in message
    return message.replace(f"{tmp_path / 'c.toml'}", "FILE")


# pydantic's lax boolean table, which the release before read every boolean key with.
SPELLINGS = {
    False: ["0", "no", "No", "False", "FALSE", "false", "off", "OFF", "f", "n"],
    True: ["1", "yes", "YES", "True", "true", "on", "On", "t", "T", "y"],
}


@pytest.mark.parametrize(
    ("raw", "wanted"), [(raw, value) for value, raws in SPELLINGS.items() for raw in raws]
)
def test_a_variable_sets_a_boolean_in_its_usual_spellings(
    tmp_path: Path, raw: str, wanted: bool
) -> None:
    loaded = load(tmp_path, APPLIANCE, EDGEFLIX_APPLIANCE__SERVE__SENDFILE=raw)
    assert loaded.serve.sendfile is wanted
    fleet = load(tmp_path, FLEET, EDGEFLIX_FLEET__STEERING__BIND_CLIENT_IP=raw)
    assert fleet.steering.bind_client_ip is wanted


@pytest.mark.parametrize(
    ("value", "wanted"),
    [('"no"', False), ('"False"', False), ("0", False), ('"on"', True), ("1", True)],
)
def test_a_file_sets_a_boolean_in_the_spellings_the_release_before_took(
    tmp_path: Path, value: str, wanted: bool
) -> None:
    assert load(tmp_path, APPLIANCE, f"[serve]\nsendfile = {value}\n").serve.sendfile is wanted
    fleet = load(tmp_path, FLEET, f"[steering]\norigin_fallback = {value}\n")
    assert fleet.steering.origin_fallback is wanted


def test_a_whole_float_sets_an_integer(tmp_path: Path) -> None:
    appliance = load(
        tmp_path, APPLIANCE, "[serve]\nmax_connections = 1e4\n[[storage.disks]]\n"
        'path = "d0"\nmax_bytes = 5e9\n', EDGEFLIX_APPLIANCE__SERVE__WORKERS="4.0",
    )  # fmt: skip
    assert (appliance.serve.workers, appliance.serve.max_connections) == (4, 10_000)
    assert appliance.storage.disks[0].max_bytes == 5_000_000_000
    fleet = load(tmp_path, FLEET, "[steering]\ntoken_ttl_s = 3600.0\n")
    assert fleet.steering.token_ttl_s == 3600 and type(fleet.steering.token_ttl_s) is int
    origin = load(tmp_path, "EDGEFLIX_ORIGIN", "[encode]\naudio_kbps = 128.0\n")
    assert origin.encode.audio_kbps == 128 and type(origin.encode.audio_kbps) is int


def test_a_fractional_float_for_an_integer_is_still_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path, APPLIANCE, "[serve]\nworkers = 4.5\n") == (
        "FILE: key 'serve.workers': Input should be a valid integer, got a number with a "
        "fractional part"
    )
    assert refusal(tmp_path, FLEET, EDGEFLIX_FLEET__STEERING__TOKEN_TTL_S="1e-3").startswith(
        "EDGEFLIX_FLEET__STEERING__TOKEN_TTL_S: key 'steering.token_ttl_s': Input should be a "
        "valid integer, got a number with a fractional part"
    )


def test_a_variable_sets_a_number_toml_does_not_read(tmp_path: Path) -> None:
    loaded = load(
        tmp_path, APPLIANCE, EDGEFLIX_APPLIANCE__FILL__PEER_WINDOW_SHARE=".5",
        EDGEFLIX_APPLIANCE__SERVE__WORKERS="04", EDGEFLIX_APPLIANCE__SERVE__HEADER_TIMEOUT_S="5.",
    )  # fmt: skip
    assert loaded.fill.peer_window_share == 0.5 and loaded.serve.workers == 4
    assert loaded.serve.header_timeout_s == 5.0
    # Text stays text where text is wanted: a name that looks like a number is not one.
    assert load(tmp_path, APPLIANCE, EDGEFLIX_APPLIANCE__NAME="04").name == "04"


def test_a_quoted_number_in_a_file_is_still_refused_with_the_fix(tmp_path: Path) -> None:
    assert refusal(tmp_path, APPLIANCE, '[serve]\nworkers = "4"\n') == (
        "FILE: key 'serve.workers': Input should be a valid integer, not the string '4' "
        "(write it without quotes: workers = 4)"
    )


def test_a_boolean_refused_says_to_write_true_or_false(tmp_path: Path) -> None:
    assert refusal(tmp_path, APPLIANCE, EDGEFLIX_APPLIANCE__SERVE__SENDFILE="nein") == (
        "EDGEFLIX_APPLIANCE__SERVE__SENDFILE: key 'serve.sendfile': Input should be a valid "
        "boolean, not 'nein' (write true or false)"
    )
    assert refusal(tmp_path, FLEET, '[server]\ntls = "ture"\n') == (
        "FILE: key 'server.tls': Input should be a valid boolean, not the string 'ture' "
        "(write true or false)"
    )
    assert refusal(tmp_path, FLEET, "[server]\ntls = 2\n") == (
        "FILE: key 'server.tls': Input should be a valid boolean, not 2 (write true or false)"
    )


def test_a_list_refused_says_array_and_shows_one(tmp_path: Path) -> None:
    site = '[[sites]]\nname = "home"\nprefixes = "10.0.0.0/8"\n'
    example = 'prefixes = ["10.0.0.0/8"]'
    assert refusal(tmp_path, FLEET, site) == (
        f"FILE: key 'sites.0.prefixes': Input should be an array, e.g. {example}"
    )
    assert refusal(tmp_path, FLEET, EDGEFLIX_FLEET__SERVER__TLS_NAMES="edge.example") == (
        "EDGEFLIX_FLEET__SERVER__TLS_NAMES: key 'server.tls_names': Input should be an array, "
        """e.g. EDGEFLIX_FLEET__SERVER__TLS_NAMES='["edge.example"]'"""
    )
    # An array of tables written as one table: the header it wants.
    assert refusal(tmp_path, APPLIANCE, '[storage.disks]\npath = "d0"\n') == (
        "FILE: key 'storage.disks': Input should be an array of tables: a [[storage.disks]] "
        "section for each, not [storage.disks]"
    )
    assert refusal(tmp_path, APPLIANCE, '[storage]\ndisks = "d0"\n') == (
        "FILE: key 'storage.disks': Input should be an array"
    )


class _AnySection(ConfigModel):
    """A section no component has: the forms are the base's, not each field's."""

    on: bool = False
    maybe: bool | None = None
    count: int | None = None
    names: tuple[str, ...] = ()


def test_every_config_model_takes_the_forms() -> None:
    loaded = _AnySection.model_validate({"on": "yes", "maybe": "off", "count": 2.0})
    assert (loaded.on, loaded.maybe, loaded.count) == (True, False, 2)
    assert type(loaded.count) is int


def test_the_appliance_daemon_starts_with_the_forms_of_the_release_before(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    text = config.read_text().replace("workers = 1\n", "workers = 1.0\nmax_connections = 1e4\n")
    config.write_text(text)
    server = start_daemon(config, env={"EDGEFLIX_APPLIANCE__SERVE__SENDFILE": "0"})
    try:
        assert status(server)
    finally:
        assert server.stop() == 0

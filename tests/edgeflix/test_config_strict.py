"""Config values of the wrong type are refused in one line naming the key, not coerced
(`workers = "4"`, `sendfile = "maybe"`, `min_urls = 2.5`), in all three components' configs;
an integer still goes where a float is wanted, and the strings TOML has for paths and the
arrays it has for lists still load, as do the string formats parsed on purpose. (The forms
the release before took that have one reading, `4.0` and `no`, load: test_config_lax_forms.)"""

from __future__ import annotations

import typing
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import pytest
from pydantic import Strict

from appliance import config as appliance_config
from edgeflix.config import ConfigModel, load_config
from edgeflix.errors import ConfigError
from fleet import config as fleet_config
from origin import config as origin_config
from tests.conftest import run_cli

LOADERS: dict[str, ModuleType] = {
    "appliance": appliance_config,
    "fleet": fleet_config,
    "origin": origin_config,
}
INT, BOOL = "Input should be a valid integer", "Input should be a valid boolean"
ROOTS: dict[str, type[ConfigModel]] = {
    "appliance": appliance_config.ApplianceConfig,
    "fleet": fleet_config.FleetConfig,
    "origin": origin_config.OriginConfig,
}


def load(tmp_path: Path, component: str, text: str) -> Any:
    """`text` as the component's config file, through the shared loader (no overrides)."""
    path = tmp_path / f"{component}.toml"
    path.write_text(text)
    prefix = LOADERS[component].ENV_PREFIX
    return load_config(ROOTS[component], path, env={}, env_prefix=prefix)


@pytest.mark.parametrize(
    ("component", "text", "said"),
    [
        ("appliance", '[serve]\nworkers = "4"\n',
         "key 'serve.workers': Input should be a valid integer, not the string '4' "
         "(write it without quotes: workers = 4)"),
        ("appliance", "[serve]\nworkers = 4.5\n", f"key 'serve.workers': {INT}"),
        ("appliance", "[serve]\nworkers = true\n", f"key 'serve.workers': {INT}, not true"),
        ("appliance", '[serve]\nsendfile = "nope"\n',
         "key 'serve.sendfile': Input should be a valid boolean, not the string 'nope' "
         "(write true or false)"),
        ("appliance", "[serve]\nsendfile = 2\n", f"key 'serve.sendfile': {BOOL}"),
        ("appliance", '[serve]\nheader_timeout_s = "10"\n',
         "key 'serve.header_timeout_s': Input should be a valid number, not the string '10' "
         "(write it without quotes: header_timeout_s = 10)"),
        ("appliance", '[[storage.disks]]\npath = "d0"\nmax_bytes = "1000"\n',
         "key 'storage.disks.0.max_bytes': Input should be a valid integer"),
        ("appliance", '[[storage.disks]]\npath = "d0"\nhigh_watermark = "0.9"\n',
         "key 'storage.disks.0.high_watermark': Input should be a valid number"),
        ("appliance", '[fill]\nattempts_per_source = "3"\n', "key 'fill.attempts_per_source'"),
        ("appliance", '[fleet]\nheartbeat_s = "5"\n', "key 'fleet.heartbeat_s'"),
        ("appliance", "name = 7\n", "key 'name': Input should be a valid string"),
        ("appliance", "[storage]\nindex = 3\n", "key 'storage.index'"),
        ("fleet", '[origin]\npoll_s = "30"\n',
         "key 'origin.poll_s': Input should be a valid number, not the string '30' "
         "(write it without quotes: poll_s = 30)"),
        ("fleet", '[server]\ntls = "ja"\n', "key 'server.tls': Input should be a valid boolean"),
        ("fleet", "[steering]\nmin_urls = 2.5\n", f"key 'steering.min_urls': {INT}"),
        ("fleet", '[steering]\ntoken_ttl_s = "60"\n', "key 'steering.token_ttl_s'"),
        ("fleet", '[heartbeat]\nmissed_beats = "3"\n', "key 'heartbeat.missed_beats'"),
        ("fleet", '[server]\ntls_names = "edge.example"\n', "key 'server.tls_names'"),
        ("fleet", '[[sites]]\nname = "home"\nprefixes = [10]\n', "key 'sites.0.prefixes.0'"),
        ("origin", '[encode]\nthreads = "2"\n', f"key 'encode.threads': {INT}"),
        ("origin", '[encode]\naudio_kbps = 128.5\n', "key 'encode.audio_kbps'"),
        ("origin", '[publish]\nreplaced_keep_s = "60"\n', "key 'publish.replaced_keep_s'"),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(
    tmp_path: Path, component: str, text: str, said: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, component, text)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / component}.toml: ") and said in message, message
    assert "\n" not in message


def test_an_integer_goes_where_a_float_is_wanted(tmp_path: Path) -> None:
    fleet = load(tmp_path, "fleet", "[origin]\npoll_s = 30\n[steering]\nepsilon = 0\n")
    assert fleet.origin.poll_s == 30.0 and type(fleet.origin.poll_s) is float
    assert fleet.steering.epsilon == 0.0
    appliance = load(tmp_path, "appliance", "[serve]\nheader_timeout_s = 5\n[[storage.disks]]\n"
                     'path = "d0"\nhigh_watermark = 1\nlow_watermark = 0.5\n')  # fmt: skip
    assert (
        appliance.serve.header_timeout_s == 5.0 and appliance.storage.disks[0].high_watermark == 1
    )
    origin = load(
        tmp_path, "origin", "[encode]\ntrial_seconds = 4\n[publish]\nreplaced_keep_s = 0\n"
    )
    assert origin.encode.trial_seconds == 4.0 and origin.publish.replaced_keep_s == 0.0


def test_paths_lists_and_the_formats_parsed_on_purpose_still_load(tmp_path: Path) -> None:
    appliance = load(tmp_path, "appliance", f"""
[storage]
index = "{tmp_path / "i.sqlite"}"
disks = [ {{ path = "{tmp_path / "d0"}", tier = "ssd", max_bytes = 1000 }} ]
[serve]
listen = "[::1]:8081"
[auth]
tokens = "required"
keys = [ {{ id = "k1", secret = "ZXhhbXBsZSBvbmx5OiBtYWtlIHlvdXIgb3duIGtleSE=" }} ]
[fill]
plan = "plan.json"
staging = "fill"
[fleet]
url = "127.0.0.1:7070"
public_url = "http://127.0.0.1:8081/"
state_dir = "fleet-state"
ca = "ca.pem"
enrol_url = "127.0.0.1:7071"
""")  # fmt: skip
    assert appliance.storage.index == tmp_path / "i.sqlite"
    assert appliance.storage.disks[0].path == tmp_path / "d0"
    assert appliance.fill.plan == Path("plan.json") and appliance.fleet.ca == Path("ca.pem")
    assert (
        appliance.auth.keys[0].id == "k1" and appliance.fleet.public_url == "http://127.0.0.1:8081"
    )
    fleet = load(tmp_path, "fleet", """
[server]
db = "f.sqlite"
tls_names = ["edge.example", "192.0.2.1"]
[[sites]]
name = "home"
prefixes = ["192.168.1.0/24"]
fill_window = "22:00-05:00"
timezone = "Europe/Berlin"
""")  # fmt: skip
    assert fleet.server.db == Path("f.sqlite") and fleet.server.tls_names == (
        "edge.example",
        "192.0.2.1",
    )
    assert (
        fleet.sites[0].prefixes == ("192.168.1.0/24",)
        and fleet.sites[0].fill_window == "22:00-05:00"
    )


def test_an_override_of_the_wrong_type_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("")
    env = {"EDGEFLIX_APPLIANCE__SERVE__SENDFILE": "yess"}
    with pytest.raises(ConfigError) as caught:
        load_config(
            appliance_config.ApplianceConfig, path, env=env, env_prefix="EDGEFLIX_APPLIANCE"
        )
    assert str(caught.value) == (
        "EDGEFLIX_APPLIANCE__SERVE__SENDFILE: key 'serve.sendfile': Input should be a valid "
        "boolean, not 'yess' (write true or false)"
    )
    env = {
        "EDGEFLIX_APPLIANCE__SERVE__SENDFILE": "false",
        "EDGEFLIX_APPLIANCE__SERVE__WORKERS": "3",
    }
    loaded = load_config(
        appliance_config.ApplianceConfig, path, env=env, env_prefix="EDGEFLIX_APPLIANCE"
    )
    assert loaded.serve.sendfile is False and loaded.serve.workers == 3


def _lax_missing(annotation: Any, lax: bool) -> list[Any]:
    """The Path and tuple types in `annotation` not under Strict(False): what a strict model
    refuses in the only form TOML writes them (a string, an array)."""
    if typing.get_origin(annotation) is Annotated:
        inner, *metadata = typing.get_args(annotation)
        return _lax_missing(inner, lax or Strict(False) in metadata)
    found = []
    if annotation is Path or typing.get_origin(annotation) is tuple:
        found = [] if lax else [annotation]
        lax = False  # a list's items are as strict as any value
    for arg in typing.get_args(annotation):
        found += _lax_missing(arg, lax)
    return found


def _models(root: type[ConfigModel]) -> list[type[ConfigModel]]:
    found, pending = [], [root]
    while pending:
        model = pending.pop()
        found.append(model)
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                annotation = stack.pop()
                if isinstance(annotation, type) and issubclass(annotation, ConfigModel):
                    pending.append(annotation)
                stack.extend(typing.get_args(annotation))
    return found


@pytest.mark.parametrize("root", ROOTS.values(), ids=lambda r: r.__name__)
def test_every_path_and_list_field_takes_what_toml_writes(root: type[ConfigModel]) -> None:
    """A field added as a bare `Path` or `tuple[...]` would refuse every value a file gives
    it: ConfigPath and ConfigList are the ones to use."""
    wrong = {
        f"{model.__name__}.{name}": missing
        for model in _models(root)
        for name, field in model.model_fields.items()
        if (missing := _lax_missing(field.annotation, Strict(False) in field.metadata))
    }
    assert not wrong, wrong


def test_the_cli_says_which_key_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[serve]\nworkers = "4"\n')
    proc = run_cli(["appliance", "ls", "--config", str(config)], timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr == (
        f"error: {config}: key 'serve.workers': Input should be a valid integer, not the "
        "string '4' (write it without quotes: workers = 4)\n"
    )

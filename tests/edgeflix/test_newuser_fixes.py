"""What a new user meets first, checked without starting anything: the systemd unit runs the
daemon where it may write, `make demo` keeps its state apart from a setup made by hand, the
README's by-hand sequence uses only titles that exist at each step, the example configs load
with the real loaders and name every key, and the log settings refuse what they do not know.
(tests/integration/test_newuser_fixes.py runs the same things as real processes.)"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shlex
import types
import typing
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from appliance import config as appliance_config
from edgeflix.config import ConfigModel, parse_env_value
from edgeflix.errors import ConfigError
from fleet import config as fleet_config
from origin import config as origin_config

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "images" / "edgeflix-appliance.service"
EXAMPLES = REPO / "examples"
LOADERS: dict[str, types.ModuleType] = {
    "appliance.toml": appliance_config,
    "fleet.toml": fleet_config,
    "origin.toml": origin_config,
}
MODELS: dict[str, type[ConfigModel]] = {
    "appliance.toml": appliance_config.ApplianceConfig,
    "fleet.toml": fleet_config.FleetConfig,
    "origin.toml": origin_config.OriginConfig,
}


# -- the systemd unit ------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """`Key=Value` lines of a unit file (every section), each key's values in order."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def writable_paths(unit: dict[str, list[str]]) -> list[PurePosixPath]:
    """Where a ProtectSystem=strict service may write: ReadWritePaths and its StateDirectory."""
    paths = [PurePosixPath(p) for v in unit.get("ReadWritePaths", []) for p in v.split()]
    paths += [
        PurePosixPath("/var/lib", s) for v in unit.get("StateDirectory", []) for s in v.split()
    ]
    return paths


def test_the_unit_runs_the_daemon_where_its_default_paths_are_writable() -> None:
    unit = unit_settings(UNIT)
    assert unit["ProtectSystem"] == ["strict"]  # all of / read-only but the paths below
    # systemd's default for a system service is /: default paths would be /var/appliance/…
    workdir = PurePosixPath(unit.get("WorkingDirectory", ["/"])[-1])
    writable = writable_paths(unit)
    assert any(workdir.is_relative_to(w) for w in writable), (workdir, writable)
    defaults = appliance_config.ApplianceConfig()
    written = [defaults.storage.index, defaults.fill.staging, defaults.fleet_state_dir()]
    written += [d.path for d in defaults.storage.disks]
    for relative in written:
        assert not relative.is_absolute()
        where = workdir / relative.as_posix()
        assert any(where.is_relative_to(w) for w in writable), (where, writable)


# -- make demo vs a setup by hand ------------------------------------------------------------


def readme_by_hand() -> str:
    """The shell block of README.md's "By hand" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## By hand") :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("\n```", start)]


def readme_appliance_toml() -> str:
    block = readme_by_hand()
    start = block.index("<<'TOML'\n") + len("<<'TOML'\n")
    return block[start : block.index("\nTOML", start)]


def overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def test_the_demo_keeps_its_state_apart_from_a_by_hand_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's index, staging, disk, fleet database and origin store share nothing with
    the README's hand-written appliance.toml, the fleet's defaults or the origin's default
    store: the demo's `load --replace` rewrote the by-hand titles, and `appliance load`
    by hand the demo's."""
    from edgeflix import demo

    monkeypatch.chdir(tmp_path)  # both setups run in the checkout: relative paths meet
    var_option = inspect.signature(demo.demo).parameters["var"].default
    var = Path(var_option.default).resolve()
    appliance = appliance_config.load(
        demo.write_appliance_config(var, "127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:7070")
    )
    fleet = fleet_config.load(
        demo.write_fleet_config(var, "127.0.0.1:7070", "127.0.0.1:7080", "http://127.0.0.1:8080")
    )
    demo_paths = [
        appliance.storage.index,
        appliance.fill.staging,
        appliance.fleet_state_dir(),
        *(d.path for d in appliance.storage.disks),
        fleet.server.db,
        var / "origin",
        var / "appliance.toml",
        var / "fleet.toml",
    ]
    (tmp_path / "appliance.toml").write_text(readme_appliance_toml())
    by_hand = appliance_config.load(tmp_path / "appliance.toml")
    hand_paths = [
        by_hand.storage.index,
        by_hand.fill.staging,
        by_hand.fleet_state_dir(),
        *(d.path for d in by_hand.storage.disks),
        fleet_config.FleetConfig().server.db,  # `fleet serve` without --config
        Path("var/origin"),  # `origin … --store` left out
    ]
    for mine in demo_paths:
        for theirs in hand_paths:
            assert not overlaps(mine.resolve(), theirs.resolve()), (mine, theirs)


# -- the README's by-hand sequence -----------------------------------------------------------


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_readme_by_hand_sequence_only_uses_titles_that_exist_then() -> None:
    """Each `appliance load/fill --title X` comes after `origin ingest --id X` and before any
    `origin rm --id X` (the README removed `movie` before loading it, and filled `other`,
    never ingested). tests/integration/test_newuser_fixes.py runs the block for real."""
    on_origin: set[str] = set()
    used = 0
    for line in readme_by_hand().splitlines():
        argv = shlex.split(line, comments=True)
        if argv[:1] != ["edgeflix"]:
            continue
        command = argv[1:3]
        if command == ["origin", "ingest"]:
            on_origin.add(option(argv, "--id"))
        elif command == ["origin", "rm"]:
            title = option(argv, "--id")
            assert title in on_origin, line
            on_origin.discard(title)
        elif command in (["appliance", "load"], ["appliance", "fill"]):
            title = option(argv, "--title")
            assert title in on_origin, f"{line!r}: {title} is not on the origin at that point"
            if command == ["appliance", "load"]:
                assert option(argv, "--from") == f"var/origin/titles/{title}", line
            used += 1
    assert used == 2  # both ways onto an appliance are shown


def test_the_readme_names_what_a_new_user_needs() -> None:
    text = (REPO / "README.md").read_text()
    assert "run/load/fill/ls/rm/reconcile/verify/status/sign" in text
    assert 'make demo DEMO_ARGS="--help"' in text and "edgeflix demo --help" in text
    for example in LOADERS:
        assert f"`{example}`" in text and (EXAMPLES / example).is_file()
    assert "shared folder" not in text  # DESIGN.md is not in the repository
    assert "EDGEFLIX_LOG_LEVEL" in text and "EDGEFLIX_LOG_JSON" in text


# -- the example configs ---------------------------------------------------------------------

# `# key = value`: a key left at its default, shown commented out; prose never starts so.
COMMENTED_KEY = re.compile(r"^# ([a-z_]+ = .+)$", re.MULTILINE)


@pytest.fixture
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples are read as written, whatever EDGEFLIX_* the test run has."""
    for name in list(os.environ):
        if name.startswith("EDGEFLIX_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_overrides")
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_each_example_loads_with_the_real_loader(name: str) -> None:
    LOADERS[name].load(EXAMPLES / name)


@pytest.mark.usefixtures("no_overrides")
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_every_key_shown_commented_out_is_a_real_key(name: str, tmp_path: Path) -> None:
    """Uncommented, all together, the keys shown at their defaults still load: none is
    misspelt, misplaced in another section, or of the wrong type."""
    text = (EXAMPLES / name).read_text()
    enabled, count = COMMENTED_KEY.subn(r"\1", text)
    assert count >= 5
    (tmp_path / name).write_text(enabled)
    LOADERS[name].load(tmp_path / name)


def schema_keys(model: type[ConfigModel]) -> dict[str, bool]:
    """Every key a config model takes, in its sections and in the tables of its lists, → True
    for a section or a list of tables, False for a value."""
    keys: dict[str, bool] = {}
    for field_name, field in model.model_fields.items():
        keys.setdefault(field_name, False)
        pending: list[Any] = [field.annotation]
        while pending:
            annotation = pending.pop()
            if isinstance(annotation, type) and issubclass(annotation, ConfigModel):
                keys[field_name] = True
                keys.update(schema_keys(annotation))
            pending.extend(typing.get_args(annotation))
    return keys


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_every_key_of_the_schema_is_in_its_example(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    model = MODELS[name]
    missing = []
    for key, is_table in sorted(schema_keys(model).items()):
        as_value = rf"(^|[\s{{,#]){key} = "  # a list of tables may be shown inline, too
        shown = rf"^\[\[?([a-z_]+\.)?{key}\]\]?$|{as_value}" if is_table else as_value
        if not re.search(shown, text, re.MULTILINE):
            missing.append(key)
    assert not missing, f"examples/{name} does not show {missing}"


@pytest.mark.usefixtures("no_overrides")
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_the_overrides_an_example_shows_set_what_it_says(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = LOADERS[name]
    shown = re.findall(rf"({module.ENV_PREFIX}__[A-Z_]+)=(\S+)", (EXAMPLES / name).read_text())
    assert shown
    for variable, value in shown:
        monkeypatch.setenv(variable, value)
    loaded: Any = module.load(EXAMPLES / name)
    for variable, value in shown:
        node = loaded
        for key in variable.removeprefix(module.ENV_PREFIX + "__").lower().split("__"):
            node = getattr(node, key)
        assert node == parse_env_value(value), variable


def test_the_appliance_example_says_fleet_url_is_grpc_not_http() -> None:
    loaded = appliance_config.load(EXAMPLES / "appliance.toml")
    assert loaded.fleet.url is not None and "://" not in loaded.fleet.url
    fleet_text = (EXAMPLES / "fleet.toml").read_text()
    assert "`[fleet] url`" in fleet_text
    assert "NOT the HTTP URL" in (EXAMPLES / "appliance.toml").read_text()


# -- log settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "as_json", "want_level", "want_json"),
    [
        (None, None, logging.INFO, False),
        ("", "", logging.INFO, False),  # set but empty: as unset
        ("debug", "1", logging.DEBUG, True),
        ("DEBUG", "true", logging.DEBUG, True),
        (" Warning ", "Yes", logging.WARNING, True),
        ("warn", "on", logging.WARNING, True),
        ("error", "0", logging.ERROR, False),
        ("critical", "FALSE", logging.CRITICAL, False),
        ("info", "no", logging.INFO, False),
        ("info", "off", logging.INFO, False),
    ],
)
def test_log_settings_take_the_usual_spellings(
    level: str | None, as_json: str | None, want_level: int, want_json: bool
) -> None:
    from edgeflix.log import log_settings

    env = {
        k: v
        for k, v in (("EDGEFLIX_LOG_LEVEL", level), ("EDGEFLIX_LOG_JSON", as_json))
        if v is not None
    }
    settings = log_settings(env)
    assert (settings.level, settings.as_json) == (want_level, want_json)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"EDGEFLIX_LOG_LEVEL": "verbose"}, "EDGEFLIX_LOG_LEVEL='verbose'"),
        ({"EDGEFLIX_LOG_LEVEL": "10"}, "EDGEFLIX_LOG_LEVEL='10'"),
        ({"EDGEFLIX_LOG_LEVEL": "notset"}, "EDGEFLIX_LOG_LEVEL='notset'"),
        ({"EDGEFLIX_LOG_JSON": "maybe"}, "EDGEFLIX_LOG_JSON='maybe'"),
        ({"EDGEFLIX_LOG_JSON": "2"}, "EDGEFLIX_LOG_JSON='2'"),
    ],
)
def test_log_settings_refuse_what_they_do_not_know(env: dict[str, str], named: str) -> None:
    from edgeflix.log import log_settings

    with pytest.raises(ConfigError) as caught:
        log_settings(env)
    message = str(caught.value)
    assert message.startswith(named) and "\n" not in message
    assert "debug, info, warning, error or critical" in message or "true" in message
    assert caught.value.exit_code == 2  # as a bad config

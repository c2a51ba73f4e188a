from __future__ import annotations

from edgeflix.cli import COMPONENTS, wanted_components
from tests.conftest import run_cli


def test_only_the_named_component_is_mounted() -> None:
    assert wanted_components(["appliance", "ls", "--json"]) == ["appliance"]
    assert wanted_components(["--help"]) == list(COMPONENTS)
    assert wanted_components(["nosuch"]) == list(COMPONENTS)
    assert wanted_components([]) == list(COMPONENTS)


def test_help_lists_every_component_and_unknown_command_fails() -> None:
    listing = run_cli(["--help"], check=True).stdout
    assert all(name in listing for name in COMPONENTS)
    assert run_cli(["nosuch"]).returncode == 2

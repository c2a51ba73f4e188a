"""What every `edgeflix fleet …` command shares: the `--fleet`, `--json` and `--config`
options, the check that refuses an option or argument given empty, and `_shaped`, which turns an
answer of the wrong shape (another server's JSON) into the same one line as any other fleet
error. The command modules (fleet/cli_*.py) build on these; fleet/client.py does the calling.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from fleet.client import DEFAULT_FLEET, ENV_CA, NOT_A_FLEET, fleet_url, redacted
from fleet.errors import FleetError


def _given(value: str | None) -> str | None:
    """An option or argument given empty is a mistake, not "left out": `--site ""` read as
    no site told every site to fill, and `--fleet ""` fell back to the default manager."""
    if value is not None and not value.strip():
        raise typer.BadParameter("must not be empty")
    return value


FleetOpt = typer.Option(
    None,
    "--fleet",
    callback=_given,
    help=f"Fleet manager HTTP URL (default: $EDGEFLIX_FLEET or {DEFAULT_FLEET}); an "
    f"https:// one is verified against ${ENV_CA} (its fleet-ca.pem) when set.",
)
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
ConfigOpt = typer.Option(None, "--config", help="fleet.toml (defaults if left out).")


def _shaped(command: Callable[..., None]) -> Callable[..., None]:
    """Rendering an answer of the wrong shape (another server's JSON) is one line, too."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (KeyError, TypeError, AttributeError, IndexError):
            what = "JSON of another shape than the fleet manager's"
            base = redacted(fleet_url(kwargs.get("fleet")))
            raise FleetError(NOT_A_FLEET.format(base=base, what=what)) from None

    return run

"""`edgeflix appliance …`: the appliance's command line (I/O shell over the appliance's cores)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)

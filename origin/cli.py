"""`edgeflix origin …`: the origin's command line (I/O shell over the origin's cores)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)

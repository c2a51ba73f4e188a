"""`edgeflix fleet …`: run the fleet manager (`serve`) and talk to a running one over its
HTTP API (fleet/client.py: `--fleet URL` or EDGEFLIX_FLEET). Tables on a terminal, plain text
in a pipe, `--json` everywhere; an unknown name, an unreachable manager or a certificate that
does not verify is one clear line. This module is the group and `serve`; the commands live by
concern in fleet/cli_appliances.py, cli_placement.py, cli_keys.py and cli_backup.py, on the
options of fleet/cli_options.py, merged here in the order `--help` lists them.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from fleet import cli_appliances, cli_backup, cli_keys, cli_placement
from fleet.cli_options import ConfigOpt

# httpx logs every request at INFO: noise on a CLI whose output is the answer.
logging.getLogger("httpx").setLevel(logging.WARNING)

app = typer.Typer(no_args_is_help=True)


@app.command("serve")
def serve_cmd(config: Path | None = ConfigOpt) -> None:
    """Run the fleet manager: gRPC for appliances, HTTP for the CLI and services."""
    from fleet.config import load
    from fleet.server import serve

    cfg = load(config)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(cfg))


# Added without a name, each module's commands join this group's, in this order.
app.add_typer(cli_backup.app)
app.add_typer(cli_appliances.app)
app.add_typer(cli_placement.app)
app.add_typer(cli_keys.app)

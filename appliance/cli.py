"""`edgeflix appliance …`: the appliance's command line (I/O shells over the appliance's cores).

This module is the group that edgeflix/cli.py mounts: it registers each command, in the order
`--help` lists them, from the modules that hold them by concern: cli_titles (load, rm, fill:
what the appliance holds), cli_inspect (ls, status: read-only views), cli_repair (reconcile,
verify: the disks against the index), cli_serve (run, sign), and cli_store, which opens the
store for them. All are imported with the group, so their imports stay inside the commands:
`run` and `sign` do not pay for the storage stack.
"""

from __future__ import annotations

import typer

from appliance.cli_inspect import ls_cmd, status_cmd
from appliance.cli_repair import reconcile_cmd, verify_cmd
from appliance.cli_serve import run_cmd, sign_cmd
from appliance.cli_titles import fill_cmd, load_cmd, rm_cmd

app = typer.Typer(no_args_is_help=True)

app.command("load")(load_cmd)
app.command("ls")(ls_cmd)
app.command("rm")(rm_cmd)
app.command("reconcile")(reconcile_cmd)
app.command("verify")(verify_cmd)
app.command("run")(run_cmd)
app.command("sign")(sign_cmd)
app.command("fill")(fill_cmd)
app.command("status")(status_cmd)

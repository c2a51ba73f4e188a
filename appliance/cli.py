"""`edgeflix appliance …`: the appliance's command line (I/O shell over the appliance's cores)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from appliance.store import Store

app = typer.Typer(no_args_is_help=True)


# -- storage: load / ls / rm / verify ------------------------------------------------------
# Imports stay inside the commands so `run` and `sign` do not pay for the storage stack.

_CONFIG_HELP = "Appliance config (TOML); defaults when left out."


def _open_store(config: Path | None) -> Store:
    """Load the config, open the store and reconcile it, reporting findings on stderr."""
    from appliance import config as appliance_config
    from appliance.repair import reconcile
    from appliance.store import Store
    from edgeflix.ui import err_console

    store = Store(appliance_config.load(config).storage)
    report = reconcile(store)
    for finding in report.findings:
        err_console.print(f"warning: {finding}", highlight=False, soft_wrap=True)
    return store


@app.command("load")
def load_cmd(
    title: str = typer.Option(..., "--title", help="Title id (must match its files.json)."),
    source: Path = typer.Option(..., "--from", help="Folder holding the title and its files.json."),
    replace: bool = typer.Option(False, "--replace", help="Reload a title already present."),
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
) -> None:
    """Load a packaged title from a local folder, verifying every file against files.json."""
    from appliance.mover import RateBook
    from edgeflix import titlefiles, ui

    store = _open_store(config)
    try:
        book = RateBook(store.config.index, store.config.decay_half_life_s)
        rate = book.rate(title)
        book.close()
        try:
            total = titlefiles.read(source)[0].total_bytes
        except titlefiles.TitleFilesError:
            total = 0  # store.load says what is wrong with the folder
        with ui.progress(transfer=True) as bar:
            task = bar.add_task(f"load {title}", total=total)
            row = store.load(
                title,
                source,
                replace=replace,
                rate=rate,
                on_bytes=lambda n: bar.advance(task, n),
            )
    finally:
        store.close()
    typer.echo(f"loaded {row.id}: {row.bytes} bytes on the {row.tier} tier")


@app.command("ls")
def ls_cmd(
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the titles on this appliance with state, tier, disks and bytes."""
    from dataclasses import asdict

    from edgeflix import ui

    store = _open_store(config)
    try:
        titles = store.listing()
    finally:
        store.close()
    if as_json:
        ui.print_json([asdict(t) for t in titles])
        return
    rows = [
        (
            t.id,
            t.state,
            t.tier,
            ",".join(t.disks),
            t.bytes,
            f"{t.files} ({t.missing} missing)" if t.missing else t.files,
        )
        for t in titles
    ]
    ui.print_table(("title", "state", "tier", "disks", "bytes", "files"), rows)


@app.command("rm")
def rm_cmd(
    title: str = typer.Option(..., "--title", help="Title id to remove."),
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
) -> None:
    """Remove a title and all its files from this appliance."""
    store = _open_store(config)
    try:
        store.remove(title)
    finally:
        store.close()
    typer.echo(f"removed {title}")


@app.command("verify")
def verify_cmd(
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Re-hash every stored file; bad files are dropped and their titles marked incomplete."""
    from appliance.repair import verify
    from edgeflix import ui

    store = _open_store(config)
    try:
        total = store.servable_bytes()
        with ui.progress(transfer=True) as bar:
            task = bar.add_task("verify", total=total)
            report = verify(store, on_bytes=lambda n: bar.advance(task, n))
    finally:
        store.close()
    problems = [{"title": f.title, "path": f.path, "problem": f.problem} for f in report.findings]
    if as_json:
        ui.print_json(
            {
                "checked_files": report.checked_files,
                "checked_bytes": report.checked_bytes,
                "problems": problems,
                "busy": report.busy,
            }
        )
    else:
        for finding in report.findings:
            typer.echo(str(finding))
        typer.echo(
            f"checked {report.checked_files} files, {report.checked_bytes} bytes: "
            f"{len(problems)} problems"
        )
    if problems:
        raise typer.Exit(1)

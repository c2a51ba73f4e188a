"""`appliance reconcile` and `appliance verify`: bring the index and the disks into agreement
on demand, the command-line shells over appliance/repair.py's reconcile and verify (the daemon
runs the same at start and on its intervals). Both print what they found, or JSON, and exit 1
when a stored file was lost or is bad (verify: also when a disk out of service went unchecked),
so a script can tell damage from a clean run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from appliance.cli_store import CONFIG_HELP, open_store

if TYPE_CHECKING:
    from appliance.repair import Finding


def reconcile_cmd(
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Bring the index and the disks into agreement now, as the daemon does at start: serve
    again files marked missing that are back (verified), finish interrupted loads and
    removals, drop missing or truncated files, delete partial and stray files. Exit status 1
    when a stored file was lost (its title is marked incomplete)."""
    from appliance.repair import reconcile
    from appliance.startup import restore_disks
    from edgeflix import ui

    store = open_store(config, check=False)
    try:
        restored = restore_disks(store)  # first, as the daemon does at start
        report = reconcile(store)
    finally:
        store.close()
    if as_json:
        ui.print_json(
            {
                "checked_files": report.checked_files,
                "findings": [
                    {"title": f.title, "path": f.path, "problem": f.problem, "damage": f.damage}
                    for f in report.findings
                ],
                "busy": report.busy,
                "restored": restored,
            }
        )
    else:
        for title_id in restored:
            typer.echo(f"{title_id}: ready again (its missing files are back, and verified)")
        for finding in report.findings:
            typer.echo(str(finding))
        for title_id in report.busy:
            typer.echo(f"{title_id}: not checked (another process is working on it)")
        typer.echo(f"checked {report.checked_files} files: {len(report.findings)} findings")
    if any(f.damage for f in report.findings):
        raise typer.Exit(1)


def verify_cmd(
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Re-hash every stored file; bad files are dropped and their titles marked incomplete."""
    from appliance.repair import verify
    from edgeflix import ui

    # Files the start-up reconcile dropped (missing, truncated, replaced by a link) are damage
    # too: counted with what re-hashing finds, so the exit status tells of either.
    found: list[Finding] = []
    store = open_store(config, found)
    try:
        total = store.servable_bytes()
        with ui.progress(transfer=True) as bar:
            task = bar.add_task("verify", total=total)
            report = verify(store, on_bytes=lambda n: bar.advance(task, n))
    finally:
        store.close()
    report.findings[:0] = [f for f in found if f.damage]
    problems = [{"title": f.title, "path": f.path, "problem": f.problem} for f in report.findings]
    if as_json:
        ui.print_json(
            {
                "checked_files": report.checked_files,
                "checked_bytes": report.checked_bytes,
                "problems": problems,
                "busy": report.busy,
                "unchecked": report.unchecked,
            }
        )
    else:
        for finding in report.findings:
            typer.echo(str(finding))
        for disk, count in sorted(report.unchecked.items()):
            typer.echo(f"disk {disk} is out of service: {count} files not checked")
        typer.echo(
            f"checked {report.checked_files} files, {report.checked_bytes} bytes: "
            f"{len(problems)} problems"
        )
    if problems or report.unchecked:
        raise typer.Exit(1)

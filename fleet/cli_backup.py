"""`edgeflix fleet backup|restore`: run on the manager's own machine, not over its HTTP API.
`backup` copies the database (consistent while the manager writes), the CA and the admin token
with a manifest of their hashes; `restore` puts one back while the manager is stopped, moving
what it replaces aside. The work is in fleet/backup.py; this module only words its results.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from edgeflix import ui
from fleet.cli_options import ConfigOpt, JsonOpt, _given

app = typer.Typer()


@app.command("backup")
def backup_cmd(
    dest: str = typer.Argument(
        ..., callback=_given, metavar="DEST", help="A new (or empty) folder for the backup."
    ),
    config: Path | None = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Back up the fleet manager, running or not, on its machine: the database (SQLite's
    online backup, consistent while the manager writes), the CA, the admin token and a
    manifest of their SHA-256, into the new folder DEST (0700; the keys stay 0600)."""
    from fleet.backup import MANIFEST, take_backup
    from fleet.config import load

    folder = Path(dest)
    manifest = take_backup(Path(load(config).server.db), folder, datetime.now(UTC))
    if as_json:
        ui.print_json(manifest.model_dump(mode="json"))
        return
    for f in manifest.files:
        typer.echo(f"wrote {folder / f.name} ({f.size_bytes} bytes, sha256 {f.sha256[:16]}…)")
    typer.echo(f"wrote {folder / MANIFEST}")
    typer.echo(
        f"backup of {manifest.source} at {manifest.created}: plan version "
        f"{manifest.plan_version or '-'}, key set version {manifest.keys_version}, "
        f"{manifest.appliances} appliances, schema {manifest.schema_version}"
    )


@app.command("restore")
def restore_cmd(
    src: str = typer.Argument(
        ..., callback=_given, metavar="SRC", help="A folder `edgeflix fleet backup` wrote."
    ),
    config: Path | None = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Restore a backup in place of the manager's database and the files beside it, the
    manager stopped (refused while it runs). What it replaces is moved into
    before-restore-<UTC time>/ beside the database, never deleted."""
    from fleet.backup import NEXT_STEPS, restore_backup
    from fleet.config import load

    done = restore_backup(Path(load(config).server.db), Path(src), datetime.now(UTC))
    m = done.manifest
    if as_json:
        ui.print_json({
            "restored": [str(p) for p in done.installed],
            "moved_aside_to": str(done.aside) if done.aside else None,
            "moved_aside": list(done.moved),
            "kept": list(done.kept),
            "backup": m.model_dump(mode="json"),
            "next": NEXT_STEPS,
        })  # fmt: skip
        return
    if done.aside is not None:
        typer.echo(f"moved aside into {done.aside}: {' '.join(done.moved)}")
    typer.echo(
        f"restored the backup of {m.created} (plan version {m.plan_version or '-'}, key set "
        f"version {m.keys_version}, {m.appliances} appliances): "
        + " ".join(str(p) for p in done.installed)
    )
    if done.kept:
        typer.echo(f"left as they were (the backup has none): {' '.join(done.kept)}")
    typer.echo(f"next: {NEXT_STEPS}")

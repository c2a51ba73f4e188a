"""`appliance ls` and `appliance status`: the read-only views of an appliance, as tables or
JSON. `ls` lists the titles as the index has them (without reading the disks, which would take
minutes on a full appliance); `status` gives the hardware profile, health, fleet link and fill
state, its exit status telling healthy from degraded or failing. The helpers after each command
render its cells; a fresh box with no index yet is told as such by both, naming the index path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from appliance.cli_store import CONFIG_HELP, store_of

if TYPE_CHECKING:
    from appliance.listing import TitleListing


def ls_cmd(
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the titles on this appliance with state, tier, disks and bytes, as the index has
    them: the disks are checked by the daemon (at start and every reconcile_interval_s),
    `appliance reconcile` and `appliance verify`."""
    from dataclasses import asdict

    from appliance import config as appliance_config
    from appliance.listing import never_loaded
    from edgeflix import ui

    storage = appliance_config.load(config).storage
    # A fresh box has no index until its first load, fill or run: it holds no titles, and
    # `ls`, often a new user's first command, says so (making no index, nor probing disks).
    fresh = never_loaded(storage.index)
    titles: list[TitleListing] = []
    if not fresh:
        store = store_of(storage, check=False)
        try:
            titles = store.listing()
        finally:
            store.close()
    if as_json:
        ui.print_json([asdict(t) for t in titles])
        return
    if not titles and ui.interactive():
        ui.console().print(_no_titles(storage.index, fresh), markup=False, highlight=False)
        return
    rows = [(t.id, t.state, t.tier, ",".join(t.disks), t.bytes, _files_cell(t)) for t in titles]
    ui.print_table(("title", "state", "tier", "disks", "bytes", "files"), rows)


def _no_titles(index: Path, fresh: bool) -> str:
    """What `ls` on a terminal says of a box holding no titles; with no index yet, its path,
    where a mistyped [storage] index shows."""
    if not fresh:
        return "no titles on this appliance"
    return f"no titles on this appliance yet (no index at {index} until the first load or run)"


def _files_cell(t: TitleListing) -> str | int:
    notes = [f"{t.missing} missing"] if t.missing else []
    if t.unconfigured:  # until a reconcile sets them aside (missing), as the daemon does
        notes += [f"{t.unconfigured} on disks not in [storage] disks"]
    notes += [f"{t.unavailable} on disks out of service"] if t.unavailable else []
    if t.kept_files and t.kept_until is not None:
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.kept_until))
        notes += [f"+{t.kept_files} of older versions kept until {until}"]
    return f"{t.files} ({', '.join(notes)})" if notes else t.files


def status_cmd(
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Hardware profile, health (ok / degraded / failing, with reasons), fleet link and fill state.

    Exit status: 0 healthy, 3 degraded (serving, with reasons), 4 failing; 1 or 2 when no
    status could be taken (2: a bad command line or config)."""
    from appliance import config as appliance_config
    from appliance.listing import never_loaded
    from appliance.status import exit_code, status_document
    from edgeflix import ui

    cfg = appliance_config.load(config)
    # A fresh box (no index until its first load, fill or run) has a state all the same.
    fresh = never_loaded(cfg.storage.index)
    doc = status_document(cfg)
    code = exit_code(doc["health"]["state"])
    if as_json:
        ui.print_json(doc)
        raise typer.Exit(code)
    health, profile = doc["health"], doc["profile"]
    rows: list[tuple[str, str]] = [
        ("health", health["state"]),
        *(("reason", r) for r in health["reasons"]),
        *(("warning", w) for w in health["warnings"]),
    ]
    if doc["fleet"] is not None:
        rows.append(("fleet", f"{doc['fleet']['phase']} ({doc['fleet']['url']})"))
    rows.append(("titles", _titles_cell(doc["titles"], cfg.storage.index, fresh)))
    rows += [
        ("capacity", f"{doc['capacity_bps'] / 1e9:.2f} Gbit/s"),
        ("cpu", f"{profile['cpu']['model']} ({profile['cpu']['logical_cores']} cores)"),
        ("memory", f"{profile['memory_bytes'] / 2**30:.1f} GiB"),
    ]
    if profile["board"]:
        rows.append(("board", profile["board"]))
    for d in profile["disks"]:
        rows.append(
            ("disk", " ".join(filter(None, (d["path"], d["kind"], d["model"], "on", d["mount"]))))
        )
    for n in profile["nics"]:
        if not n["virtual"]:
            speed = f"{n['speed_bps'] / 1e6:.0f} Mbit/s" if n["speed_bps"] else "speed unknown"
            rows.append(("nic", f"{n['name']} {speed} mtu {n['mtu']}"))
    for t in profile["temperatures"]:
        rows.append(("temperature", f"{t['sensor']} {t['celsius']:.1f} C"))
    for title_id, p in ((doc["fill"] or {}).get("titles") or {}).items():
        rows.append(("fill", f"{title_id} {p['state']} {p['done']}/{p['total']} bytes"))
    ui.print_table(["what", "value"], rows)
    raise typer.Exit(code)


def _titles_cell(held: dict[str, int] | None, index: Path, fresh: bool) -> str:
    """The titles row of `status`: how many, or why none (a fresh box names its index path,
    where a mistyped [storage] index shows)."""
    if held is None:
        return "unknown (the index cannot be read)"
    if held["count"]:
        return f"{held['count']} ({held['bytes'] / 1e9:.2f} GB)"
    if fresh:
        return f"none yet (no index at {index})"
    return "none"

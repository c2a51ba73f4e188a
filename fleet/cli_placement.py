"""`edgeflix fleet sites|steer|plan|fill`: the sites and what the manager decides over them:
which appliances a player is steered to (`steer`, a probe that counts neither as an outcome nor as
demand), which titles each appliance should hold (`plan`, with what changed), and filling that
plan outside the window (`fill --now`).
"""

from __future__ import annotations

import typer

from edgeflix import ui
from fleet.admin import ENV_TOKEN
from fleet.cli_options import FleetOpt, JsonOpt, _given, _shaped
from fleet.client import call

app = typer.Typer()


@app.command("sites")
@_shaped
def sites_cmd(fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """Configured sites with their prefixes and fill windows."""
    rows = call(fleet, "GET", "/sites", list)
    if as_json:
        ui.print_json(rows)
        return
    ui.print_table(
        ["site", "prefixes", "fill window", "timezone", "filling now", "appliances"],
        [
            [
                r["name"],
                " ".join(r["prefixes"]),
                r["fill_window"],
                r["timezone"],
                r["in_fill_window"],
                r["appliances"],
            ]
            for r in rows
        ],
    )


@app.command("steer")
@_shaped
def steer_cmd(
    client_ip: str = typer.Option(
        ..., "--client-ip", callback=_given, help="The player's address."
    ),
    title: str = typer.Option(..., "--title", callback=_given, help="Title id."),
    fleet: str | None = FleetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Where a client would stream a title from, best first, and why."""
    # A probe: the manager answers as for a player, but counts it neither as an outcome
    # nor as demand for the title.
    params = {"client_ip": client_ip, "title": title, "probe": "1"}
    out = call(fleet, "GET", "/steer", params=params)
    if as_json:
        ui.print_json(out)
        return
    typer.echo(f"client site: {out['client_site'] or '(none)'}; outcome: {out['outcome']}")
    ui.print_table(
        ["#", "name", "site", "reason", "url"],
        [
            [i + 1, c["name"], c["site"], c["reason"], c["url"]]
            for i, c in enumerate(out["candidates"])
        ],
    )
    # Only an admin hears which appliances were left out (the list names every one).
    for line in out.get("excluded", []):
        typer.echo(f"left out: {line}")
    if "excluded" not in out:
        typer.echo(f"left out: shown only with the admin token (${ENV_TOKEN})")


@app.command("plan")
@_shaped
def plan_cmd(
    site: str | None = typer.Option(
        None, "--site", callback=_given, help="Only this site's appliances."
    ),
    now: bool = typer.Option(
        False, "--now", help="Re-plan first instead of showing the last plan."
    ),
    fleet: str | None = FleetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The current fill plan per appliance and what changed since the previous one."""
    params = {"site": site} if site is not None else {}
    out = call(fleet, "POST" if now else "GET", "/plan", params=params)
    if as_json:
        ui.print_json(out)
        return
    typer.echo(f"plan version {out['version']}")
    ui.print_table(
        ["appliance", "site", "titles", "GB", "added", "removed", "retiered", "updated",
         "fill failed"],
        [
            [
                p["name"],
                p["site"],
                len(p["titles"]),
                f"{p['planned_bytes'] / 1e9:.1f}",
                " ".join(p["diff"]["added"]) or "-",
                " ".join(p["diff"]["removed"]) or "-",
                " ".join(p["diff"]["retiered"]) or "-",
                " ".join(p["diff"].get("updated", ())) or "-",
                " ".join(p.get("fill_failed", ())) or "-",
            ]
            for p in out["appliances"]
        ],
    )  # fmt: skip


@app.command("fill")
@_shaped
def fill_cmd(
    now: bool = typer.Option(
        False, "--now", help="Fill now, outside the window (once); required, as a safeguard."
    ),
    site: str | None = typer.Option(None, "--site", callback=_given, help="Only this site."),
    fleet: str | None = FleetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Tell appliances to fill their plan now instead of waiting for the window."""
    if not now:  # a usage error (exit 2): the command does nothing without it
        raise ui.click_exceptions().UsageError(
            "appliances fill inside their window by themselves; pass --now to fill at once"
        )
    out = call(fleet, "POST", "/fill-now", params={"site": site} if site is not None else {})
    ui.print_json(out) if as_json else typer.echo(
        "fill now: " + (" ".join(out["appliances"]) or "(no appliances)")
    )

"""`edgeflix fleet ls|show|drain|undrain|rm`: the enrolled appliances as the manager sees
them (state, load, clock, what each holds and what its plan wants), taking one out of steering
and back, and forgetting one (with the advice on the URL-signing keys it still holds). Rendering
of these answers lives here too, with `clock_line` and `removed_advice` as its pure parts.
"""

from __future__ import annotations

from typing import Any

import typer

from edgeflix import ui
from fleet.cli_options import FleetOpt, JsonOpt, _given, _shaped
from fleet.client import call
from fleet.errors import FleetInputError, UnknownNameError
from fleet.model import check_name

app = typer.Typer()

# metavar: usage errors name the argument as the usage line shows it, not as Python does.
NameArg = typer.Argument(
    ...,
    callback=_given,
    metavar="NAME",
    help="The appliance's name (as `edgeflix fleet ls` lists it).",
)


def _path_name(name: str) -> str:
    """An appliance name as a URL path segment; no enrolled name can be anything else."""
    try:
        return check_name(name, "appliance")
    except FleetInputError:
        raise UnknownNameError(f"no appliance named '{name}' (not a valid name)") from None


def _mbps(bps: float) -> str:
    return f"{bps / 1e6:.0f}"


@app.command("ls")
@_shaped
def ls_cmd(fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """Every enrolled appliance with its site, state and load."""
    rows = call(fleet, "GET", "/appliances", list)
    if as_json:
        ui.print_json(rows)
        return
    ui.print_table(
        ["name", "site", "state", "load Mb/s", "capacity Mb/s", "conns", "complete", "held",
         "filled", "failed", "seen s ago", "clock off s"],
        [
            [
                r["name"],
                r["site"],
                r["state"],
                _mbps(r["load_bps"]),
                _mbps(r["capacity_bps"]),
                r["connections"],
                r["titles"],
                # A manager from before these fields: what it says, nothing made up.
                r.get("titles_held", "-"),
                _filled(r.get("fill_bytes_done", 0), r.get("fill_bytes_total", 0)),
                r.get("fill_failed", "-"),
                r["last_seen_s"] if r["last_seen_s"] is not None else "-",
                _clock_cell(r),
            ]
            for r in rows
        ],
    )  # fmt: skip


def _clock_cell(row: dict[str, Any]) -> str:
    """How far off its clock was seen: "+600 refused" (its calls are), "+600 corrected" (it
    signs with the manager's time), "-" (not seen off, or a manager from before)."""
    offset = row.get("clock_offset_s")
    if offset is None:
        return "-"
    return f"{offset:+.0f} {'refused' if row.get('clock_refused') else 'corrected'}"


def clock_line(info: dict[str, Any]) -> str | None:
    """`fleet show`'s word on an appliance whose clock was seen off (None: it was not)."""
    offset = info.get("clock_offset_s")
    if offset is None:
        return None
    off = f"clock off by {offset:+.0f} s"
    if info.get("clock_refused"):
        return f"{off}: its calls are refused; set its clock right (NTP)"
    return (
        f"{off}: it uses the fleet manager's time for its calls, URL-token expiry "
        "and fill windows; set its clock right (NTP)"
    )


def _filled(done: int, total: int) -> str:
    """Share of the running plan's bytes held ("-": no plan, or an empty one)."""
    return f"{min(done / total, 1.0):.0%}" if total > 0 else "-"


@app.command("show")
@_shaped
def show_cmd(name: str = NameArg, fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """One appliance: state, load, what it holds and what its plan wants."""
    info = call(fleet, "GET", f"/appliances/{_path_name(name)}")
    if as_json:
        ui.print_json(info)
        return
    for key in (
        "name",
        "site",
        "url",
        "state",
        "health_detail",
        "connections",
        "plan_version",
        "keys_version",
        "last_seen_s",
    ):
        typer.echo(f"{key}: {'-' if info[key] in (None, '') else info[key]}")
    clock = clock_line(info)
    if clock is not None:
        typer.echo(f"clock: {clock}")
    typer.echo(f"load: {_mbps(info['load_bps'])} of {_mbps(info['capacity_bps'])} Mb/s")
    typer.echo(f"disk: {info['disk_bytes'] / 1e9:.2f} GB")
    for t in info.get("tiers", ()):
        fillable = t["fillable_bytes"] or t["capacity_bytes"]
        typer.echo(
            f"disk {t['tier']}: {t['used_bytes'] / 1e9:.2f} GB used, fills up to "
            f"{fillable / 1e9:.2f} of {t['capacity_bytes'] / 1e9:.2f} GB"
        )
    complete = sum(1 for h in info["held"].values() if h["complete"])
    typer.echo(f"held: {len(info['held'])} titles")
    typer.echo(f"complete: {complete} of them (servable)")
    done, total = info.get("fill_bytes_done", 0), info.get("fill_bytes_total", 0)
    typer.echo(
        f"fill: {done / 1e9:.2f} of {total / 1e9:.2f} GB of its plan held ({_filled(done, total)})"
    )
    failures = info.get("fill_failures", [])
    typer.echo(f"fill failures: {len(failures)} titles")
    if failures:
        ui.print_table(
            ["title", "no room", "reason"],
            [[f["title_id"], f["no_room"], f["reason"] or "-"] for f in failures],
            title="fill failures",
        )
        if not ui.interactive():
            typer.echo()
    ui.print_table(
        ["title", "complete", "tier", "GB", "digest"],
        [
            [t, h["complete"], h["tier"], f"{h['size_bytes'] / 1e9:.2f}", h["digest"]]
            for t, h in info["held"].items()
        ],
        title="held",
    )
    if not ui.interactive():
        typer.echo()  # two tables in a pipe: a blank line ends the first
    typer.echo(f"plan: {len(info['plan'])} titles")
    ui.print_table(
        ["title", "tier", "GB", "source", "digest"],
        [
            [p["title_id"], p["tier"], f"{p['size_bytes'] / 1e9:.2f}", p["source"], p["digest"]]
            for p in info["plan"]
        ],
        title="plan",
    )


@app.command("drain")
@_shaped
def drain_cmd(name: str = NameArg, fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """Take an appliance out of steering (it keeps its titles) for maintenance."""
    out = call(fleet, "POST", f"/appliances/{_path_name(name)}/drain")
    ui.print_json(out) if as_json else typer.echo(f"{name}: drained")


@app.command("undrain")
@_shaped
def undrain_cmd(name: str = NameArg, fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """Put a drained appliance back into steering."""
    out = call(fleet, "POST", f"/appliances/{_path_name(name)}/undrain")
    ui.print_json(out) if as_json else typer.echo(f"{name}: back in steering")


def removed_advice(name: str) -> str:
    """What to do about the URL-signing keys a removed appliance still holds: all
    appliances share them, so the box (retired, stolen) can sign URLs the others accept.
    A rotation retires them: they verify until URLs signed with them expire (fleet/keys.py),
    then no more. A revocation ends them at once, and the players' URLs signed with them."""
    return (
        f"{name} still holds the fleet's URL-signing keys and can sign URLs every appliance "
        "accepts. Run `edgeflix fleet keys rotate` now: those keys then stop verifying once "
        "URLs signed with them have expired ([steering] token_ttl_s after the new key "
        "signs). To stop them at once (a stolen box), also run `edgeflix fleet keys revoke "
        "KEY_ID` for each key id `keys rotate` lists but the last, new one; players' URLs "
        "signed with them stop working too."
    )


@app.command("rm")
@_shaped
def rm_cmd(name: str = NameArg, fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """Forget an appliance (it must enrol again with a new join token). It keeps the
    URL-signing keys it fetched: rotate them (the advice printed says how)."""
    out = call(fleet, "DELETE", f"/appliances/{_path_name(name)}")
    if as_json:
        ui.print_json({**out, "advice": removed_advice(name)})
        return
    typer.echo(f"{name}: removed")
    ui.warn(removed_advice(name))

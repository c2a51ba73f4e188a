"""`edgeflix fleet …`: run the fleet manager (`serve`) and talk to a running one over its
HTTP API (fleet/client.py: `--fleet URL` or EDGEFLIX_FLEET). Tables on a terminal, plain text
in a pipe, `--json` everywhere; an unknown name, an unreachable manager or a certificate that
does not verify is one clear line.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from edgeflix import ui
from fleet.admin import ENV_TOKEN
from fleet.client import DEFAULT_FLEET, ENV_CA, NOT_A_FLEET, call, fleet_url, redacted
from fleet.errors import FleetError, FleetInputError, UnknownNameError
from fleet.keys import is_key_id
from fleet.model import check_name

# httpx logs every request at INFO: noise on a CLI whose output is the answer.
logging.getLogger("httpx").setLevel(logging.WARNING)

app = typer.Typer(no_args_is_help=True)
keys_app = typer.Typer(
    help="URL-token signing keys: list them (alone, or `ls`), `rotate` on schedule or at "
    "will, `revoke` a leaked one."
)
app.add_typer(keys_app, name="keys")


def _given(value: str | None) -> str | None:
    """An option or argument given empty is a mistake, not "left out": `--site ""` read as
    no site told every site to fill, and `--fleet ""` fell back to the default manager."""
    if value is not None and not value.strip():
        raise typer.BadParameter("must not be empty")
    return value


FleetOpt = typer.Option(
    None,
    "--fleet",
    callback=_given,
    help=f"Fleet manager HTTP URL (default: $EDGEFLIX_FLEET or {DEFAULT_FLEET}); an "
    f"https:// one is verified against ${ENV_CA} (its fleet-ca.pem) when set.",
)
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
# metavar: usage errors name the argument as the usage line shows it, not as Python does.
NameArg = typer.Argument(
    ...,
    callback=_given,
    metavar="NAME",
    help="The appliance's name (as `edgeflix fleet ls` lists it).",
)


def _shaped(command: Callable[..., None]) -> Callable[..., None]:
    """Rendering an answer of the wrong shape (another server's JSON) is one line, too."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (KeyError, TypeError, AttributeError, IndexError):
            what = "JSON of another shape than the fleet manager's"
            base = redacted(fleet_url(kwargs.get("fleet")))
            raise FleetError(NOT_A_FLEET.format(base=base, what=what)) from None

    return run


def _path_name(name: str) -> str:
    """An appliance name as a URL path segment; no enrolled name can be anything else."""
    try:
        return check_name(name, "appliance")
    except FleetInputError:
        raise UnknownNameError(f"no appliance named '{name}' (not a valid name)") from None


def _mbps(bps: float) -> str:
    return f"{bps / 1e6:.0f}"


ConfigOpt = typer.Option(None, "--config", help="fleet.toml (defaults if left out).")


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


@app.command("join-token")
@_shaped
def join_token_cmd(
    site: str = typer.Option(
        ..., "--site", callback=_given, help="The site the new appliance belongs to."
    ),
    fleet: str | None = FleetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Print a one-time join token for a new appliance (its fleet.join_token setting)."""
    out = call(fleet, "POST", "/join-tokens", json={"site": site})
    ui.print_json(out) if as_json else typer.echo(out["token"])


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _show_keys(fleet: str | None, as_json: bool) -> None:
    out = call(fleet, "GET", "/keys")
    if as_json:
        ui.print_json(out)
        return
    typer.echo(f"key set version {out['version']}")
    ui.print_table(
        ["id", "since", "signs", "activates UTC", "retires UTC", "verifies until UTC"],
        [
            [k["id"], k["since"], "yes" if k["signing"] else "-", _when(k["activates"]),
             _when(k["retires"]), _when(k["verify_until"])]
            for k in out["keys"]
        ],
    )  # fmt: skip
    rebased = out.get("rebased")  # (a manager from before it: nothing to say)
    if rebased:
        if not ui.interactive():
            typer.echo()  # in a pipe: a blank line ends the table
        typer.echo(f"rebased: {rebased['note']}")


@keys_app.callback(invoke_without_command=True)
@_shaped
def keys_cmd(ctx: typer.Context, fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """The URL-token signing keys: which signs, until when each verifies, and whether the
    set was re-stamped after a restore from backup (then appliances keep the keys made
    after the backup for verifying only)."""
    if ctx.invoked_subcommand is None:
        _show_keys(fleet, as_json)
    elif fleet is not None or as_json:
        raise ui.click_exceptions().UsageError(
            f"--fleet and --json go after the sub-command: keys {ctx.invoked_subcommand} ..."
        )


@keys_app.command("ls")
@_shaped
def keys_ls_cmd(fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """The URL-token signing keys (what `edgeflix fleet keys` alone shows)."""
    _show_keys(fleet, as_json)


@keys_app.command("rotate")
@_shaped
def keys_rotate_cmd(
    immediate: bool = typer.Option(
        False, "--immediate", help="Sign with the new key at once (else after the lead time)."
    ),
    fleet: str | None = FleetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Rotate the URL-token signing key now; URLs already issued stay valid until they expire.

    Rotation is not revocation: the old key keeps verifying its URLs for their whole
    lifetime. For a leaked key, `edgeflix fleet keys revoke KEY_ID`."""
    out = call(fleet, "POST", "/keys/rotate", params={"immediate": immediate})
    ui.print_json(out) if as_json else typer.echo(
        f"key set version {out['version']}: {' '.join(out['keys'])}"
    )


@keys_app.command("revoke")
@_shaped
def keys_revoke_cmd(
    key_id: str = typer.Argument(
        ...,
        callback=_given,
        metavar="KEY_ID",
        help="The key's id (`edgeflix fleet keys` lists them; a URL's token starts with it).",
    ),
    fleet: str | None = FleetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Revoke a leaked URL-token key now: each appliance drops it on its next sync (a
    heartbeat or two) and from then refuses every URL signed with it, unexpired or not.
    If it was the signing key, a new key signs from now (appliances are left out of
    steering until they fetch it). `keys rotate` is not this: a rotated key keeps
    verifying until its URLs expire."""
    if not is_key_id(key_id):
        raise UnknownNameError(f"no key {key_id!r} (not a valid key id)")
    out = call(fleet, "POST", f"/keys/{key_id}/revoke")
    ui.print_json(out) if as_json else typer.echo(
        f"revoked {out['revoked']}; key set version {out['version']}: {' '.join(out['keys'])}"
    )

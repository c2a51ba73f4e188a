"""`edgeflix fleet join-token` and `edgeflix fleet keys …`: the credentials the manager hands
out. A one-time join token lets a new appliance enrol; the URL-token signing keys are listed
(`keys` alone or `keys ls`, with when each signs and verifies and whether the set was re-stamped
after a restore), rotated on schedule or at will, and revoked when one leaked.
"""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from edgeflix import ui
from fleet.cli_options import FleetOpt, JsonOpt, _given, _shaped
from fleet.client import call
from fleet.errors import UnknownNameError
from fleet.keys import is_key_id

app = typer.Typer()
keys_app = typer.Typer(
    help="URL-token signing keys: list them (alone, or `ls`), `rotate` on schedule or at "
    "will, `revoke` a leaked one."
)
app.add_typer(keys_app, name="keys")


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

"""`edgeflix fleet …`: run the fleet manager (`serve`) and talk to a running one over its
HTTP API (`--fleet URL` or EDGEFLIX_FLEET; https:// verified against EDGEFLIX_FLEET_CA when
set). Tables on a terminal, plain text in a pipe, `--json` everywhere; an unknown name, an
unreachable manager or a certificate that does not verify is one clear line.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer

from edgeflix import ui
from edgeflix.config import parse_base_url
from edgeflix.errors import ConfigError
from fleet.admin import ENV_TOKEN
from fleet.errors import FleetError, FleetInputError, UnknownNameError
from fleet.keys import is_key_id
from fleet.model import check_name

# httpx logs every request at INFO: noise on a CLI whose output is the answer.
logging.getLogger("httpx").setLevel(logging.WARNING)

app = typer.Typer(no_args_is_help=True)
keys_app = typer.Typer(
    no_args_is_help=True,
    help="URL-token signing keys: `rotate` on schedule or at will, `revoke` a leaked one.",
)
app.add_typer(keys_app, name="keys")

DEFAULT_FLEET = "http://127.0.0.1:7080"
# The manager's CA (fleet-ca.pem beside its [server] db) for an https:// URL; without it,
# httpx's default trust store.
ENV_CA = "EDGEFLIX_FLEET_CA"
# A manager that accepts and never answers is reported after this long, not waited on.
CALL_TIMEOUT_S = 10.0
# The TLS handshake that tells an HTTPS listener given an http:// URL (`_speaks_https`).
PROBE_TIMEOUT_S = 3.0
_X509_HOSTNAME_MISMATCH = 62  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH


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


class FleetUnreachable(FleetError):
    """The fleet manager did not answer."""


def fleet_url(fleet: str | None) -> str:
    """The manager's base URL from --fleet, else $EDGEFLIX_FLEET, else the default."""
    raw = fleet if fleet is not None else os.environ.get("EDGEFLIX_FLEET") or DEFAULT_FLEET
    try:
        return parse_base_url(raw.strip())
    except ConfigError:
        raise FleetError(
            f"fleet manager URL '{_redacted(raw)}' is not http(s)://HOST[:PORT] "
            "(--fleet or EDGEFLIX_FLEET)"
        ) from None


def _redacted(url: str) -> str:
    """`url` fit for a message: a password given in it (user:pw@host) is not echoed."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}").geturl()


def _call(fleet: str | None, method: str, path: str, want: type = dict, **kw: Any) -> Any:
    base = fleet_url(fleet)
    shown = _redacted(base)
    https = urllib.parse.urlsplit(base).scheme == "https"
    verify = _verify() if https else True
    try:
        resp = httpx.request(
            method, base + path, timeout=CALL_TIMEOUT_S, headers=_auth(), verify=verify, **kw
        )
    except httpx.ProtocolError as exc:  # something answered, not in HTTP/1.1 (a gRPC port)
        if not https and _speaks_https(base):  # it hung up on plain HTTP: HTTPS it takes
            raise FleetUnreachable(
                f"fleet manager at {shown} serves HTTPS ([server] tls = true): use "
                f"https://{shown.partition('://')[2]} and set ${ENV_CA} to its fleet-ca.pem"
            ) from None
        raise FleetUnreachable(
            f"fleet manager at {shown} did not answer in HTTP ({exc}): {_IS_IT_THE_FLEET}"
        ) from None
    except httpx.ConnectError as exc:
        raise FleetUnreachable(_connect_failure(shown, exc)) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise FleetUnreachable(f"fleet manager at {shown} is unreachable: {exc}") from None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code == 404 and not _manager_error(body):
        # No route of the manager's: an origin's, an appliance's or another server's port.
        what = f"HTTP 404 for {method} {path}"
        raise FleetError(_NOT_A_FLEET.format(base=shown, what=what))
    if resp.status_code >= 400:
        detail = body.get("error") or body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str):
            # FastAPI's validation errors are a list; anything else is not ours.
            detail = json.dumps(detail) if detail else resp.text
        # One line, even for a proxy's HTML error page.
        detail = " ".join(detail.split())[:200] or resp.reason_phrase
        raise FleetError(f"fleet manager: {detail} (HTTP {resp.status_code})")
    if body is None:
        raise FleetError(_NOT_A_FLEET.format(base=shown, what="an answer that is not JSON"))
    if not isinstance(body, want):
        raise FleetError(
            _NOT_A_FLEET.format(base=shown, what=f"JSON that is not a {want.__name__}")
        )
    return body


def _verify() -> ssl.SSLContext | bool:
    """What an https:// manager's certificate is checked against: $EDGEFLIX_FLEET_CA, else
    httpx's default trust store (a manager behind a proxy with a public certificate)."""
    path = os.environ.get(ENV_CA, "").strip()
    if not path:
        return True
    try:
        return ssl.create_default_context(cafile=path)
    except OSError as exc:
        # ssl.SSLError (an OSError too): the file holds no certificate OpenSSL can read.
        what = "no PEM certificate in it" if isinstance(exc, ssl.SSLError) else exc.strerror
        raise FleetInputError(f"${ENV_CA}: cannot use {path} as a CA file ({what})") from None


def _connect_failure(shown: str, exc: httpx.ConnectError) -> str:
    """One line for a failed connection; a TLS failure says what to change."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = cause.verify_message or cause.reason or "certificate verify failed"
        if cause.verify_code == _X509_HOSTNAME_MISMATCH:
            return (
                f"fleet manager at {shown}: its certificate does not name that host ({why}): "
                "use its [server] http host, or add this one to its [server] tls_names"
            )
        ca = os.environ.get(ENV_CA, "").strip()
        against = f" against ${ENV_CA} ({ca})" if ca else ""
        return (
            f"fleet manager at {shown}: its certificate did not verify{against} ({why}): set "
            f"${ENV_CA} to that manager's fleet-ca.pem (beside its [server] db)"
        )
    if isinstance(cause, ssl.SSLError):
        plain = f"http://{shown.partition('://')[2]}"
        return (
            f"fleet manager at {shown} did not answer in TLS ({cause.reason or cause}): if it "
            f"serves plain HTTP ([server] tls = false), use {plain}"
        )
    return f"fleet manager at {shown} is unreachable: {exc}"


def _speaks_https(base: str) -> bool:
    """Whether `base`'s host and port complete a TLS handshake that picks HTTP/1.1 (the
    manager's HTTPS listener says so; its gRPC ones do not). Nothing is sent over it."""
    parts = urllib.parse.urlsplit(base)
    context = ssl.create_default_context()
    context.check_hostname = False  # only what it speaks, not who it is
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    address = (parts.hostname or "", parts.port or 80)
    try:
        with (
            socket.create_connection(address, PROBE_TIMEOUT_S) as sock,
            context.wrap_socket(sock) as tls,
        ):
            return tls.selected_alpn_protocol() == "http/1.1"
    except (OSError, ValueError):  # ssl.SSLError, timeouts, refusals
        return False


def _manager_error(body: Any) -> bool:
    """`body` is the manager's own error answer: {"error": "<what is wrong>"}."""
    return isinstance(body, dict) and isinstance(body.get("error"), str)


def _auth() -> dict[str, str]:
    """The admin token from the environment (fleet/admin.py), when there is one."""
    token = os.environ.get(ENV_TOKEN, "").strip()
    if not token:
        return {}
    if not token.isascii() or not token.isprintable() or " " in token:
        # It goes into an HTTP header: refuse it here, in one line, not as an encoding error.
        raise FleetInputError(f"${ENV_TOKEN} is not a token (printable ASCII, no spaces)")
    return {"authorization": f"Bearer {token}"}


_IS_IT_THE_FLEET = "is it the fleet manager's HTTP address?"
_NOT_A_FLEET = "{base} sent {what}: " + _IS_IT_THE_FLEET


def _shaped(command: Callable[..., None]) -> Callable[..., None]:
    """Rendering an answer of the wrong shape (another server's JSON) is one line, too."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (KeyError, TypeError, AttributeError, IndexError):
            what = "JSON of another shape than the fleet manager's"
            base = _redacted(fleet_url(kwargs.get("fleet")))
            raise FleetError(_NOT_A_FLEET.format(base=base, what=what)) from None

    return run


def _path_name(name: str) -> str:
    """An appliance name as a URL path segment; no enrolled name can be anything else."""
    try:
        return check_name(name, "appliance")
    except FleetInputError:
        raise UnknownNameError(f"no appliance named '{name}' (not a valid name)") from None


def _mbps(bps: float) -> str:
    return f"{bps / 1e6:.0f}"


@app.command("serve")
def serve_cmd(
    config: Path | None = typer.Option(None, "--config", help="fleet.toml (defaults if left out)."),
) -> None:
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


@app.command("ls")
@_shaped
def ls_cmd(fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """Every enrolled appliance with its site, state and load."""
    rows = _call(fleet, "GET", "/appliances", list)
    if as_json:
        ui.print_json(rows)
        return
    ui.print_table(
        ["name", "site", "state", "load Mb/s", "capacity Mb/s", "conns", "complete", "held",
         "filled", "failed", "seen s ago"],
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
            ]
            for r in rows
        ],
    )  # fmt: skip


def _filled(done: int, total: int) -> str:
    """Share of the running plan's bytes held ("-": no plan, or an empty one)."""
    return f"{min(done / total, 1.0):.0%}" if total > 0 else "-"


@app.command("show")
@_shaped
def show_cmd(name: str = NameArg, fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """One appliance: state, load, what it holds and what its plan wants."""
    info = _call(fleet, "GET", f"/appliances/{_path_name(name)}")
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
    out = _call(fleet, "POST", f"/appliances/{_path_name(name)}/drain")
    ui.print_json(out) if as_json else typer.echo(f"{name}: drained")


@app.command("undrain")
@_shaped
def undrain_cmd(name: str = NameArg, fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """Put a drained appliance back into steering."""
    out = _call(fleet, "POST", f"/appliances/{_path_name(name)}/undrain")
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
    out = _call(fleet, "DELETE", f"/appliances/{_path_name(name)}")
    if as_json:
        ui.print_json({**out, "advice": removed_advice(name)})
        return
    typer.echo(f"{name}: removed")
    ui.warn(removed_advice(name))


@app.command("sites")
@_shaped
def sites_cmd(fleet: str | None = FleetOpt, as_json: bool = JsonOpt) -> None:
    """Configured sites with their prefixes and fill windows."""
    rows = _call(fleet, "GET", "/sites", list)
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
    out = _call(fleet, "GET", "/steer", params=params)
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
    out = _call(fleet, "POST" if now else "GET", "/plan", params=params)
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
    out = _call(fleet, "POST", "/fill-now", params={"site": site} if site is not None else {})
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
    out = _call(fleet, "POST", "/join-tokens", json={"site": site})
    ui.print_json(out) if as_json else typer.echo(out["token"])


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
    out = _call(fleet, "POST", "/keys/rotate", params={"immediate": immediate})
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
        help="The key's id (`keys rotate --json` lists them; a URL's token starts with it).",
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
    out = _call(fleet, "POST", f"/keys/{key_id}/revoke")
    ui.print_json(out) if as_json else typer.echo(
        f"revoked {out['revoked']}; key set version {out['version']}: {' '.join(out['keys'])}"
    )

"""`appliance run` and `appliance sign`: serving. `run` starts the daemon (appliance/daemon.py)
until SIGTERM or Ctrl-C; `sign` prints a signed URL to a title's master playlist on this
appliance, signed with a key of [auth] keys or, on a fleet-managed appliance, with the fleet's
keys as its fleet link cached them, refusing a --ttl longer than the fleet's key set guarantees.
Neither touches the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from edgeflix.tokens import MAX_TTL_S

if TYPE_CHECKING:
    from edgeflix.tokens import SigningKey


def run_cmd(
    config: Path | None = typer.Option(None, "--config", help="Appliance config (TOML)."),
) -> None:
    """Run the appliance daemon: serving workers, admin listener, tier mover (until SIGTERM
    or Ctrl-C)."""
    from appliance import config as appliance_config
    from appliance.daemon import run

    run(appliance_config.load(config), config)


def sign_cmd(
    title: str = typer.Option(..., "--title", help="Title id to grant."),
    ttl: int = typer.Option(
        3600, "--ttl", min=1, max=MAX_TTL_S, help="Seconds the URL stays valid (10 years at most)."
    ),
    client_ip: str | None = typer.Option(None, "--client-ip", help="Bind to one client."),
    key_id: str | None = typer.Option(None, "--key", help="Key id (default: the first key)."),
    config: Path | None = typer.Option(None, "--config", help="Appliance config (TOML)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print a signed URL to the title's master.m3u8 on this appliance."""
    import time

    from appliance import config as appliance_config
    from edgeflix import tokens
    from edgeflix.configtypes import is_wildcard_host, parse_hostport
    from edgeflix.errors import ConfigError
    from edgeflix.titlefiles import check_title_id

    cfg = appliance_config.load(config)
    check_title_id(title)
    if key_id is not None and not key_id.strip():
        raise typer.BadParameter("the key id is empty; leave out --key to sign with the first "
                                 "key", param_hint="--key")  # fmt: skip
    keys = [k for k in cfg.auth.keys if key_id is None or k.id == key_id]
    now = time.time()
    expires = int(now) + ttl
    if keys:
        key = tokens.SigningKey(keys[0].id, keys[0].secret_bytes())
    elif not cfg.auth.keys and cfg.fleet.url is not None:  # the fleet's keys, as cached
        key = _fleet_signing_key(cfg.fleet_state_dir(), key_id, now, expires)
    else:
        raise ConfigError(
            "no such key in [auth] keys" if key_id is not None else "[auth] keys is empty"
        )
    token = tokens.sign(title, key, expires, client_ip)
    path = tokens.signed_path(token, title, "master.m3u8")
    if cfg.fleet.public_url is not None:  # where players reach this appliance
        url = cfg.fleet.public_url.rstrip("/") + path
    else:
        from edgeflix.ui import warn

        host, port = parse_hostport(cfg.serve.listen)
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"
        if port == 0:  # the daemon picks its port at start: only the path part is usable
            warn("[serve] listen has port 0, so the URL's port is not the daemon's; use its path")
        elif is_wildcard_host(host):
            warn(
                f"[serve] listen is on all interfaces, so {host} in the URL is no address a "
                "player can reach; set [fleet] public_url, or use the URL's path"
            )
    if as_json:
        from edgeflix.ui import print_json

        print_json({"url": url, "title": title, "key": key.id, "expires": expires,
                    "client_ip": client_ip})  # fmt: skip
        return
    typer.echo(url)


def _fleet_signing_key(state_dir: Path, key_id: str | None, now: float, expires: int) -> SigningKey:
    """A fleet-managed appliance verifies with the fleet's keys, cached by its fleet link in
    `state_dir`: sign with the one the fleet signs with now (or `key_id`, while it verifies).
    A token expiring after the fleet stops having the key verified is refused (a usage
    error naming the longest --ttl): the URL would die early, when the fleet rotates keys."""
    import os

    from appliance.fleetlink_files import KEYS_FILE
    from appliance.fleetlink_keys import signing_key, verified_until
    from appliance.fleetlink_state import LinkState
    from edgeflix.errors import ConfigError
    from edgeflix.tokens import SigningKey

    path = state_dir / KEYS_FILE
    if not path.is_file():
        raise ConfigError(
            f"[auth] keys is empty and no fleet keys are cached in {path} yet (the daemon "
            "fetches them once enrolled); until then the fleet signs: `edgeflix fleet steer`"
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(f"cannot read {path}: run this as the appliance daemon's user")
    cached = LinkState(state_dir).keys()
    held = cached.payload if cached is not None else ()
    if key_id is None:
        picked = signing_key(held, now)
    else:
        picked = next(
            (k for k in held if k.id == key_id and (k.verify_until == 0 or now < k.verify_until)),
            None,
        )
    if picked is None:
        raise ConfigError(
            f"no fleet key in {path} signs now"
            if key_id is None
            else f"no such key in the fleet's keys ({path})"
        )
    until = verified_until(picked, now)
    if until is None:
        from edgeflix.ui import warn

        warn(
            f"the fleet's key set does not say how long key {picked.id} verifies once retired "
            "(a fleet manager from before that): the URL may stop working at its next key "
            "rotation, before it expires"
        )
    elif expires > until:
        _refuse_ttl(picked.id, until, now)
    return SigningKey(picked.id, picked.secret)


def _refuse_ttl(key_id: str, until: float, now: float) -> NoReturn:
    """--ttl past what the fleet's key set guarantees: one line naming the longest one."""
    from datetime import UTC, datetime

    longest = int(until) - int(now)
    at = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    advice = f"use --ttl {longest} or less" if longest >= 1 else "leave out --key"
    raise typer.BadParameter(
        f"the fleet's key {key_id} is only sure to be verified until {at}, and a URL "
        f"signed with it stops working then; {advice}",
        param_hint="--ttl",
    )

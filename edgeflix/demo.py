"""`make demo` / `edgeflix demo`: the product on one machine, from the real sample clip.

Runs each component as its own process through the same CLI a user has (they talk over
the wire, never by import): ingest the clip into ./var/demo/origin, start the origin server
and the fleet manager, seed an appliance from the origin store (sneakernet) and start it with
URL tokens required; it enrols with the fleet and takes its signing keys from it. A player
asks the fleet's steering for the title and gets a signed appliance URL, printed here.
`--check` plays that URL's playlist once and exits (the smoke test CI runs).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import typer

from edgeflix.configtypes import format_hostport, is_wildcard_host, parse_hostport
from edgeflix.errors import EdgeflixError
from edgeflix.samples import sample_clip

TITLE_ID = "bbb"
TITLE_NAME = "Big Buck Bunny"
STARTUP_TIMEOUT_S = 30.0
# All the demo's state (stores, index, fleet database, configs) is kept here, not in ./var:
# the commands' defaults there (var/origin, var/appliance/index.sqlite, var/fleet/fleet.sqlite)
# are a by-hand setup's, and sharing them, each would rewrite the other's titles.
DEMO_VAR = Path("var/demo")


def edgeflix(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeflix.cli", *args]


def run_step(description: str, argv: list[str]) -> None:
    typer.echo(f"==> {description}")
    proc = subprocess.run(argv, check=False)
    if proc.returncode != 0:
        raise EdgeflixError(f"demo step failed: {description} (exit {proc.returncode})")


def wait_for(
    url: str,
    timeout_s: float = STARTUP_TIMEOUT_S,
    proc: subprocess.Popen[bytes] | None = None,
    name: str = "",
) -> None:
    """Poll `url` until it answers 200; bounded by `timeout_s`, and over at once when
    `proc`, the daemon that should answer, has exited (its own error is above)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EdgeflixError(f"{name} exited with {proc.returncode} (its error is above)")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise EdgeflixError(f"{url} did not come up within {timeout_s:.0f} s ({last})")


@contextlib.contextmanager
def background(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """Start a daemon we own; stop it (by pid) with SIGTERM, then SIGKILL after 10 s."""
    proc = subprocess.Popen(argv)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def check_free(addresses: dict[str, str]) -> None:
    """Every address the demo listens on must be free: else its checks would be answered
    by whatever holds it (a demo left running, say), not by the daemons it starts."""
    for name, address in addresses.items():
        try:
            host, port = parse_hostport(address)  # as the daemons read it: ":8080" is loopback
        except EdgeflixError:
            raise EdgeflixError(f"{address} ({name}) is not HOST:PORT") from None
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            # As the daemons bind: a port in TIME_WAIT from an earlier run is free to use.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise EdgeflixError(
                    f"{address} ({name}) is taken: {exc.strerror or exc}; another demo still "
                    "running? stop it, or pass other addresses (see --help)"
                ) from None


def reachable(address: str) -> str:
    """The HOST:PORT a client on this machine dials for a listen address: loopback for a
    wildcard (all interfaces, which is no address to send a client to; the fleet refuses
    it as its origin URL) or for an empty host (which listens on 127.0.0.1)."""
    host, port = parse_hostport(address)
    if is_wildcard_host(host):
        v6 = ":" in host and ipaddress.IPv6Address(host).ipv4_mapped is None
        host = "::1" if v6 else "127.0.0.1"
    return format_hostport(host, port)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: every daemon started is stopped


def write_appliance_config(var: Path, listen: str, admin: str, fleet_grpc: str) -> Path:
    """The appliance, enrolling with the fleet at `fleet_grpc`; listening on all interfaces,
    it registers its loopback URL (the fleet steers this machine's player there)."""
    config = var / "appliance.toml"
    wildcard = is_wildcard_host(parse_hostport(listen)[0])
    public = f'public_url = "http://{reachable(listen)}"\n' if wildcard else ""
    disk = var / "appliance" / "disk0"
    disk.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'name = "demo-edge"\n\n[storage]\nindex = "{var / "appliance" / "index.sqlite"}"\n'
        f'disks = [ {{ path = "{disk}", tier = "ssd" }} ]\n\n'
        f'[serve]\nlisten = "{listen}"\n\n[admin]\nlisten = "{admin}"\n\n'
        f'[auth]\ntokens = "required"\n\n'
        f'[fill]\nstaging = "{var / "appliance" / "staging"}"\n\n'
        f'[fleet]\nurl = "{reachable(fleet_grpc)}"\nheartbeat_s = 1.0\n{public}'
    )
    return config


def write_fleet_config(var: Path, grpc: str, http: str, origin_url: str) -> Path:
    """Open enrolment (loopback only) and one site holding every loopback client. Its fill
    window opens twelve hours from now: the demo's appliance is seeded by hand, not filled."""
    config = var / "fleet.toml"
    opens = (time.gmtime().tm_hour + 12) % 24
    config.write_text(
        f'[server]\ngrpc = "{grpc}"\nhttp = "{http}"\ndb = "{var / "fleet" / "fleet.sqlite"}"\n'
        f'enrolment = "open"\n\n[origin]\nurl = "{origin_url}"\n\n'
        f'[[sites]]\nname = "home"\nprefixes = ["127.0.0.0/8", "::1/128"]\n'
        f'fill_window = "{opens:02d}:00-{(opens + 1) % 24:02d}:00"\ntimezone = "UTC"\n'
    )
    (var / "fleet").mkdir(parents=True, exist_ok=True)
    return config


def steer_until_edge(fleet_http: str, edge_base: str, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
    """Ask steering as a player on loopback would, until the appliance has enrolled, reported
    the title and got its keys: the first URL is then a signed appliance URL."""
    query = urllib.parse.urlencode({"client_ip": "127.0.0.1", "title": TITLE_ID})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"{fleet_http}/steer?{query}", timeout=2) as resp:
                urls = json.loads(resp.read()).get("urls") or []
            if urls and str(urls[0]).startswith(edge_base):
                with contextlib.suppress(EdgeflixError):  # keys may not have reached it yet
                    wait_for(str(urls[0]), timeout_s=2)
                    return str(urls[0])
        time.sleep(0.5)
    raise EdgeflixError(f"steering gave no working appliance URL within {timeout_s:.0f} s")


def demo(
    var: Path = typer.Option(
        DEMO_VAR, help="Where the demo keeps all its data (apart from a by-hand setup's)."
    ),
    origin_listen: str = typer.Option("127.0.0.1:8080", help="Origin HTTP address."),
    appliance_listen: str = typer.Option("127.0.0.1:8081", help="Appliance HTTP address."),
    admin_listen: str = typer.Option("127.0.0.1:8082", help="Appliance admin address."),
    fleet_grpc: str = typer.Option("127.0.0.1:7070", help="Fleet manager gRPC address."),
    fleet_http: str = typer.Option("127.0.0.1:7080", help="Fleet manager HTTP address."),
    check: bool = typer.Option(
        False, help="Fetch the playlist once through the appliance and exit."
    ),
) -> None:
    """Ingest the sample clip, start origin, fleet manager and appliance, print what to play."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    check_free(
        {
            "origin": origin_listen,
            "appliance": appliance_listen,
            "appliance admin": admin_listen,
            "fleet gRPC": fleet_grpc,
            "fleet HTTP": fleet_http,
        }
    )
    store = var / "origin"
    if not (store / "titles" / TITLE_ID / "files.json").exists():
        clip = sample_clip("bigbuckbunny.mp4")
        run_step(
            f"ingest {clip.name} as '{TITLE_ID}'",
            edgeflix(
                "origin",
                "ingest",
                str(clip),
                "--id",
                TITLE_ID,
                "--title",
                TITLE_NAME,
                "--store",
                str(store),
            ),
        )
    var = var.resolve()
    config = write_appliance_config(var, appliance_listen, admin_listen, fleet_grpc)
    # Where this machine's clients (and the fleet's origin URL) reach each listener.
    origin_at, edge_at, admin_at, fleet_at = map(
        reachable, (origin_listen, appliance_listen, admin_listen, fleet_http)
    )
    fleet_config = write_fleet_config(var, fleet_grpc, fleet_http, f"http://{origin_at}")
    run_step(
        "load the title onto the appliance",
        edgeflix("appliance", "load", "--config", str(config), "--title", TITLE_ID,
                 "--from", str(store / "titles" / TITLE_ID), "--replace"),
    )  # fmt: skip
    with (
        background(
            edgeflix("origin", "serve", "--store", str(store), "--listen", origin_listen)
        ) as origin,
        background(edgeflix("fleet", "serve", "--config", str(fleet_config))) as fleet,
        background(edgeflix("appliance", "run", "--config", str(config))) as appliance,
    ):
        origin_url = f"http://{origin_at}/titles/{TITLE_ID}/master.m3u8"
        wait_for(origin_url, proc=origin, name="origin serve")
        wait_for(f"http://{fleet_at}/healthz", proc=fleet, name="fleet serve")
        wait_for(f"http://{admin_at}/healthz", proc=appliance, name="appliance run")
        played = steer_until_edge(f"http://{fleet_at}", f"http://{edge_at}/")
        # Up and running: from here Ctrl-C (or SIGTERM) is how the demo is meant to end,
        # a normal stop with status 0, not an interruption.
        with contextlib.suppress(KeyboardInterrupt):
            typer.echo(
                f"\norigin:     {origin_url}\n"
                f"steering:   http://{fleet_at}/steer?client_ip=127.0.0.1&title={TITLE_ID}\n"
                f"play:       {played}\n"
                f"appliance:  http://{admin_at}/status  http://{admin_at}/metrics\n"
                f"fleet CLI:  edgeflix fleet ls --fleet http://{fleet_at}\n"
            )
            if check:
                return
            typer.echo("Press Ctrl-C to stop.")
            while True:
                time.sleep(3600)


def main() -> None:
    """`make demo`: the umbrella CLI's `edgeflix demo`, so it reports usage errors, failures
    and Ctrl-C the same way (one line; exit 2, 1 or 130)."""
    from edgeflix.cli import main as cli_main

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli_main(["demo", *sys.argv[1:]])


if __name__ == "__main__":
    main()

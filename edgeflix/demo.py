"""`make demo` / `edgeflix demo`: the product on one machine, from the real sample clip.

Runs each component as its own process through the same CLI a user has (they talk over
the wire, never by import): ingest the clip into ./var/origin, start the origin server,
seed an appliance from the origin store and start it, then print URLs to play.
`--check` fetches the master playlist through the appliance once and exits (smoke test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import typer

from edgeflix.errors import EdgeflixError
from edgeflix.samples import sample_clip

TITLE_ID = "bbb"
TITLE_NAME = "Big Buck Bunny"
STARTUP_TIMEOUT_S = 30.0


def edgeflix(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgeflix.cli", *args]


def run_step(description: str, argv: list[str]) -> None:
    typer.echo(f"==> {description}")
    proc = subprocess.run(argv, check=False)
    if proc.returncode != 0:
        raise EdgeflixError(f"demo step failed: {description} (exit {proc.returncode})")


def wait_for(url: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200; bounded by `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
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


def write_appliance_config(var: Path, listen: str, admin: str) -> Path:
    config = var / "appliance.toml"
    disk = var / "appliance" / "disk0"
    disk.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'name = "demo-edge"\n\n[storage]\nindex = "{var / "appliance" / "index.sqlite"}"\n'
        f'disks = [ {{ path = "{disk}", tier = "ssd" }} ]\n\n'
        f'[serve]\nlisten = "{listen}"\n\n[admin]\nlisten = "{admin}"\n'
    )
    return config


def demo(
    var: Path = typer.Option(Path("var"), help="Where the demo keeps its data."),
    origin_listen: str = typer.Option("127.0.0.1:8080", help="Origin HTTP address."),
    appliance_listen: str = typer.Option("127.0.0.1:8081", help="Appliance HTTP address."),
    admin_listen: str = typer.Option("127.0.0.1:8082", help="Appliance admin address."),
    check: bool = typer.Option(
        False, help="Fetch the playlist once through the appliance and exit."
    ),
) -> None:
    """Ingest the sample clip, start an origin and an appliance, print what to play."""
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
    config = write_appliance_config(var.resolve(), appliance_listen, admin_listen)
    run_step(
        "load the title onto the appliance",
        edgeflix(
            "appliance",
            "load",
            "--config",
            str(config),
            "--title",
            TITLE_ID,
            "--from",
            str(store / "titles" / TITLE_ID),
            "--replace",
        ),
    )
    with (
        background(edgeflix("origin", "serve", "--store", str(store), "--listen", origin_listen)),
        background(edgeflix("appliance", "run", "--config", str(config))),
    ):
        origin_url = f"http://{origin_listen}/titles/{TITLE_ID}/master.m3u8"
        edge_url = f"http://{appliance_listen}/titles/{TITLE_ID}/master.m3u8"
        wait_for(origin_url)
        wait_for(edge_url)
        typer.echo(
            f"\norigin:    {origin_url}\nappliance: {edge_url}\n"
            f"metrics:   http://{admin_listen}/metrics\n"
        )
        if check:
            return
        typer.echo("Press Ctrl-C to stop.")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        typer.run(demo)
    except EdgeflixError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

"""Helpers for the appliance daemon's health and lifecycle tests: a config with two disk
folders on one tier, a title spread over both, /status polled with a bound."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import run_cli
from tests.integration.serve_support import Server, make_title, start

REPO = Path(__file__).resolve().parents[2]


def write_config(
    tmp: Path,
    extra: str = "",
    workers: int = 1,
    disks: Sequence[Path] | None = None,
    shutdown_timeout_s: int = 10,
) -> Path:
    """An appliance config over `disks` (default: folders d0 and d1 under `tmp`, made here),
    all one tier, with the index and fill staging under `tmp`."""
    if disks is None:
        disks = [tmp / "d0", tmp / "d1"]
        for disk in disks:
            disk.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(f'{{ path = "{d}", tier = "ssd" }}' for d in disks)
    path = tmp / "appliance.toml"
    path.write_text(
        f"""
[storage]
index = "{tmp / "index.sqlite"}"
disks = [ {listed} ]
[serve]
listen = "127.0.0.1:0"
workers = {workers}
shutdown_timeout_s = {shutdown_timeout_s}
[admin]
listen = "127.0.0.1:0"
[fill]
staging = "{tmp / "staging"}"
{extra}
"""
    )
    return path


def two_tier_config(tmp: Path, ssd: Path, hdd: Path, extra: str = "") -> Path:
    """A one-worker appliance config over an ssd and an hdd disk (made here if missing; a
    new, cold title goes to the hdd), with the index and fill staging under `tmp`."""
    for disk in (ssd, hdd):
        disk.mkdir(parents=True, exist_ok=True)
    path = tmp / "appliance.toml"
    path.write_text(f"""
[storage]
index = "{tmp / "index.sqlite"}"
disks = [ {{ path = "{ssd}", tier = "ssd" }}, {{ path = "{hdd}", tier = "hdd" }} ]
[serve]
listen = "127.0.0.1:0"
workers = 1
[admin]
listen = "127.0.0.1:0"
[fill]
staging = "{tmp / "staging"}"
{extra}
""")
    return path


def seam_env(tmp: Path, sitecustomize: str, **env: str) -> dict[str, str]:
    """The environment that makes every Python process the test starts (the daemon, its
    workers, the CLI) run `sitecustomize` first: a fault injected at a seam of ours, where
    this machine cannot make a disk fail (no FUSE or device-mapper in CI)."""
    seam = tmp / "seam"
    seam.mkdir(exist_ok=True)
    (seam / "sitecustomize.py").write_text(sitecustomize)
    return {"PYTHONPATH": os.pathsep.join([str(seam), str(REPO)]), **env}


def load_spread_title(tmp: Path, config: Path, title_id: str = "spread") -> None:
    """A title with enough files that rendezvous hashing puts some on each disk."""
    folder = tmp / "src" / title_id
    (folder / "v0").mkdir(parents=True)
    for i in range(12):
        (folder / "v0" / f"extra{i:02d}.m4s").write_bytes(bytes([i]) * 40_000)
    make_title(folder, title_id)  # writes the rest and a files.json over everything
    run_cli(["appliance", "load", "--config", str(config), "--title", title_id, "--from",
             str(folder)], check=True)  # fmt: skip


def files_on(disk: Path, title_id: str = "spread") -> list[str]:
    """The title's files on `disk`, from its folder and any version folder (`ID~TAG`, written
    by an update or a re-fill) beside it."""
    found = set()
    for top in [disk / "titles" / title_id, *(disk / "titles").glob(f"{title_id}~*")]:
        found |= {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()}
    return sorted(found)


def start_daemon(config: Path, env: dict[str, str] | None = None) -> Server:
    return start(["appliance", "run", "--config", str(config)], ("listening", "admin"), env)


def status(server: Server) -> dict[str, Any]:
    reply = httpx.get(server.urls["admin"] + "/status", timeout=10)
    assert reply.status_code == 200
    doc: dict[str, Any] = json.loads(reply.content)
    return doc


def poll(
    server: Server, cond: Callable[[dict[str, Any]], bool], timeout: float, step: float = 0.1
) -> dict[str, Any] | None:
    """The first /status document that satisfies `cond`, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = status(server)
        if cond(doc):
            return doc
        time.sleep(step)
    return None

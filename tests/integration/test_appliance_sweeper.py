"""The running daemon sweeps what a one-off command killed mid-way left on its disks (here an
unfinished version folder of `load --replace`) without a restart; a folder an update retired
moments ago is left to the process that retired it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.integration.daemon_support import load_spread_title, start_daemon, write_config


def test_an_abandoned_version_folder_goes_while_the_daemon_runs(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(
        config.read_text().replace("[storage]\n", "[storage]\nreconcile_interval_s = 0.5\n")
    )
    load_spread_title(tmp_path, config)
    server = start_daemon(config)
    try:
        titles = tmp_path / "d0" / "titles"
        # A `load --replace` killed two minutes ago, and one whose folder was made just now
        # (as an update's retired version is: it is deleted by its own process).
        abandoned, recent = titles / "spread~deadbeef", titles / "spread~cafe0001"
        for folder in (abandoned, recent):
            (folder / "v0").mkdir(parents=True)
            (folder / "v0" / "extra00.m4s").write_bytes(b"x" * 40_000)
        old = time.time() - 120
        os.utime(abandoned, (old, old))
        deadline = time.monotonic() + 20
        while abandoned.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not abandoned.exists()
        assert recent.exists()
        reply = httpx.get(f"{server.url}/titles/spread/v0/extra00.m4s", timeout=10)
        assert reply.status_code == 200 and reply.content == bytes([0]) * 40_000
    finally:
        assert server.stop() == 0

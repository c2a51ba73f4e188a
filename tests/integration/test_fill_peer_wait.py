"""Peer fill while the peer is itself still filling, with real processes on loopback: a real
`edgeflix origin serve`, appliance A's daemon serving while `appliance fill` brings it the
title from the origin (capped, so it takes seconds), and appliance B filling by a plan whose
sources are [A, origin]. B must wait for A rather than take the title from the origin too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from edgeflix import titlefiles
from tests.integration.serve_support import serving_origin, start
from tests.integration.test_fill import MiB, make_title, peer_pair, staged


def test_an_appliance_waits_for_its_peer_to_finish_filling(tmp_path: Path) -> None:
    store = tmp_path / "origin"
    make_title(store, "big", [3 * MiB, 3 * MiB, 2 * MiB], seed=2)
    digest = titlefiles.read(store / "titles/big")[1]
    a_config, b_config = peer_pair(tmp_path)
    a_dir, b_dir = a_config.parent, b_config.parent
    with b_config.open("a") as fh:  # waits of 1, 2, 4, 4... s: A needs about 8 s
        fh.write("peer_wait_s = 1\npeer_waits = 12\n")

    with serving_origin(store) as origin:
        peer = start(["appliance", "run", "--config", str(a_config)], ("listening", "admin"))
        a_fill = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", "appliance", "fill", "--config",
             str(a_config), "--from", origin.url, "--title", "big", "--cap-mbps", "8"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not staged(a_dir, "big", "*.part"):
                assert a_fill.poll() is None, "A's fill ended before it began downloading"
                time.sleep(0.05)
            plan = b_dir / "plan.json"
            title = {"id": "big", "digest": digest, "sources": [peer.url, origin.url]}
            plan.write_text(json.dumps({"titles": [title]}))
            b_fill = subprocess.run(
                [sys.executable, "-m", "edgeflix.cli", "appliance", "fill", "--config",
                 str(b_config), "--plan", str(plan), "--json"],
                capture_output=True,
                text=True,
                timeout=120,
            )  # fmt: skip
            _, a_err = a_fill.communicate(timeout=60)
        finally:
            if a_fill.poll() is None:
                a_fill.kill()
                a_fill.wait(10)
            peer.stop()

    assert a_fill.returncode == 0, a_err
    assert b_fill.returncode == 0, b_fill.stderr
    big = json.loads(b_fill.stdout)["titles"]["big"]
    assert big["state"] == "ready" and big["source"] == peer.url
    assert big["deferrals"] >= 1
    assert "fill.title_deferred" in b_fill.stderr
    assert "fill.source_failed" not in b_fill.stderr  # the origin was never B's fallback
    assert "fill.peer_bypassed" not in b_fill.stderr

"""`edgeflix demo --check`: the one-command product starts origin, fleet manager and appliance,
steering hands out a signed appliance URL that plays, and the daemons stop (the path
`make demo` takes)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import run_cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_check_serves_the_sample_through_the_appliance(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(5)]
    proc = run_cli(
        [
            "demo",
            "--var",
            str(tmp_path / "var"),
            "--check",
            "--origin-listen",
            f"127.0.0.1:{ports[0]}",
            "--appliance-listen",
            f"127.0.0.1:{ports[1]}",
            "--admin-listen",
            f"127.0.0.1:{ports[2]}",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    # The player's URL came from steering: the appliance, with a path token.
    assert f"play:       http://127.0.0.1:{ports[1]}/t/" in proc.stdout
    assert "/titles/bbb/master.m3u8" in proc.stdout
    assert (tmp_path / "var" / "origin" / "titles" / "bbb" / "files.json").is_file()
    # Nothing left listening: the demo stopped the daemons it started.
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0

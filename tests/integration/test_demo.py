"""`edgeflix demo --check`: the one-command product starts origin, fleet manager and appliance,
steering hands out a signed appliance URL that plays, and the daemons stop (the path
`make demo` takes)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
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
            "--fleet-grpc",
            f"127.0.0.1:{ports[3]}",
            "--fleet-http",
            f"127.0.0.1:{ports[4]}",
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


def demo_args(var: Path, ports: list[int]) -> list[str]:
    names = ("origin", "appliance", "admin", "fleet-grpc", "fleet-http")
    listen = [(f"--{n}-listen" if "fleet" not in n else f"--{n}") for n in names]
    args = [sys.executable, "-m", "edgeflix.cli", "demo", "--var", str(var)]
    for flag, port in zip(listen, ports, strict=True):
        args += [flag, f"127.0.0.1:{port}"]
    return args


def test_a_taken_port_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    """A demo left running (or anything else) on one of its ports would answer its checks:
    it refuses at once, naming the address."""
    ports = [free_port() for _ in range(5)]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[3]))
        holder.listen()
        proc = subprocess.run(
            [*demo_args(tmp_path / "var", ports), "--check"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: 127.0.0.1:{ports[3]} (fleet gRPC) is taken: Address already in use; another "
        "demo still running? stop it, or pass other addresses (see --help)"
    ]
    assert not (tmp_path / "var").exists()  # nothing ingested, nothing started


def test_sigterm_stops_every_daemon_the_demo_started(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(5)]
    proc = subprocess.Popen(
        demo_args(tmp_path / "var", ports), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        line = ""
        while not line.startswith("play:"):
            assert time.monotonic() < deadline and proc.poll() is None, line
            line = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0  # how a running demo is meant to end, as Ctrl-C
    for port in ports:  # stopped, not orphaned: nothing listens any more
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0

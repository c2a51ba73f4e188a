"""A new user's first steps, as real processes: the README's by-hand sequence top to bottom,
the appliance daemon as the systemd unit runs it (ProtectSystem=strict, emulated in a mount
namespace), `make demo DEMO_ARGS=…`, and the log settings through the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeflix.samples import sample_clip
from tests.edgeflix.test_newuser_fixes import UNIT, readme_by_hand, unit_settings
from tests.integration.serve_support import make_title
from tests.integration.test_demo import free_port

REPO = Path(__file__).resolve().parents[2]


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without the log settings (the tests set their own) and with `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLIX_LOG_")}
    return {**env, **extra}


# -- log settings through the CLI ------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [("EDGEFLIX_LOG_LEVEL", "verbose"), ("EDGEFLIX_LOG_JSON", "maybe")],
)
def test_a_bad_log_setting_is_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeflix.cli", "origin", "ls", "--store", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=cli_env(**{variable: value}),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()]  # one line, no traceback
    assert proc.stderr.startswith(f"error: {variable}={value!r} ")
    assert proc.stdout == ""


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_log_json_takes_the_usual_yes(tmp_path: Path, value: str) -> None:
    title = make_title(tmp_path / "src" / "t1", "t1")
    (tmp_path / "d0").mkdir()
    config = tmp_path / "appliance.toml"
    config.write_text(
        f'[storage]\nindex = "{tmp_path / "index.sqlite"}"\n'
        f'disks = [ {{ path = "{tmp_path / "d0"}", tier = "ssd" }} ]\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edgeflix.cli", "appliance", "load", "--config", str(config),
         "--title", "t1", "--from", str(title)],
        capture_output=True, text=True, timeout=120,
        env=cli_env(EDGEFLIX_LOG_JSON=value, EDGEFLIX_LOG_LEVEL="debug"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines
    events = [json.loads(line)["event"] for line in lines]  # every log line is JSON
    assert "title.loaded" in events


# -- make demo DEMO_ARGS=… ---------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_passes_demo_args() -> None:
    venv = Path(sys.executable).parent.parent
    make = ["make", "-s", "-C", str(REPO), f"VENV={venv}", f"PY={sys.executable}",
            "-o", f"{venv}/.installed-stamp", "demo"]  # fmt: skip
    # Dry run first: a Makefile that dropped DEMO_ARGS would start the whole demo.
    dry = subprocess.run([*make, "-n", "DEMO_ARGS=--help"], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert dry.stdout.strip().splitlines()[-1].endswith("-m edgeflix.demo --help"), dry.stdout
    proc = subprocess.run([*make, "DEMO_ARGS=--help"], capture_output=True, text=True,
                          timeout=60, env=cli_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--origin-listen" in proc.stdout and "[default: var/demo]" in proc.stdout


# -- the systemd unit, ProtectSystem=strict --------------------------------------------------


def namespace_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs tmpfs /mnt && mount -o remount,bind,ro /"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    return probe.returncode == 0


# In a mount namespace of its own (nothing outside it changes): /var/lib is an empty tmpfs
# holding the unit's StateDirectory, then / is read-only, as ProtectSystem=strict makes it
# (the tmpfs stays writable, as ReadWritePaths does); the daemon starts in the unit's
# WorkingDirectory (systemd's default: /).
AS_THE_UNIT = """set -e
mount -t tmpfs -o mode=0755 tmpfs /var/lib
mkdir -p "/var/lib/$1"
mount -o remount,bind,ro /
cd "$2"
shift 2
exec "$@"
"""


@pytest.mark.skipif(not namespace_works(), reason="needs root and mount namespaces")
def test_the_unit_starts_the_daemon_on_its_default_paths(tmp_path: Path) -> None:
    unit = unit_settings(UNIT)
    assert unit["ProtectSystem"] == ["strict"]
    state = unit["StateDirectory"][-1]
    workdir = unit.get("WorkingDirectory", ["/"])[-1]  # systemd's default: /
    serve, admin = free_port(), free_port()
    config = tmp_path / "appliance.toml"  # only addresses: every path is the default
    config.write_text(
        f'[serve]\nlisten = "127.0.0.1:{serve}"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
    )
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", AS_THE_UNIT, "sh",
         state, workdir, sys.executable, "-m", "edgeflix.cli", "appliance", "run",
         "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        env=cli_env(PYTHONDONTWRITEBYTECODE="1"),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        started, deadline = "", time.monotonic() + 60
        while "admin on" not in started and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            line = proc.stdout.readline().decode() if ready else ""
            if ready and not line:
                break  # exited
            started += line
        assert "admin on" in started, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the README's by-hand sequence -----------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's block uses curl")
def test_the_readme_by_hand_sequence_runs_top_to_bottom(tmp_path: Path) -> None:
    """The block as a user pastes it, in a fresh folder: only the ports are free ones, and
    `edgeflix` is this interpreter's. No command may fail but `appliance status`, whose exit
    status is the box's health (3 degraded, 4 failing: a busy test machine)."""
    origin, edge, admin = free_port(), free_port(), free_port()
    script = readme_by_hand().replace("8080", str(origin)).replace("8081", str(edge))
    assert script.startswith(". .venv/bin/activate\n")
    script = script.removeprefix(". .venv/bin/activate\n")
    # Every failing command is named on stderr; the block goes on, as in a terminal.
    script = "trap 'echo \"FAILED($?): $BASH_COMMAND\" >&2' ERR\n" + script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "edgeflix").write_text(f'#!/bin/sh\nexec {sys.executable} -m edgeflix.cli "$@"\n')
    (bin_dir / "edgeflix").chmod(0o755)
    shutil.copy(sample_clip("bigbuckbunny.mp4"), tmp_path / "movie.mp4")
    shutil.copy(sample_clip("bikes.mp4"), tmp_path / "trailer.mp4")
    env = cli_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        EDGEFLIX_APPLIANCE__ADMIN__LISTEN=f"127.0.0.1:{admin}",  # the block leaves it at 8082
    )
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=180)
        failed = [line for line in err.splitlines() if line.startswith("FAILED(")]
        assert all(re.match(r"FAILED\([34]\): edgeflix appliance status ", f) for f in failed), err[
            -3000:
        ]
        assert "movie\tA Movie" in out and "trailer\tA Trailer" in out  # origin ls
        assert "trailer\tready" in out  # filled over HTTP
        assert "movie\tready" in out  # loaded from the folder
        assert "#EXTM3U" in out  # the appliance served it
        assert "removed trailer" in out
        for port in (origin, edge, admin):  # `kill %1 %2`: both daemons drained and exited
            deadline = time.monotonic() + 30
            while listening(port):
                assert time.monotonic() < deadline, f"127.0.0.1:{port} still listens"
                time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what the block left, if anything
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.communicate()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0

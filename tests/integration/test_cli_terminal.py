"""The CLI under a real pseudo-terminal and in a pipe: progress bars only for a person,
log lines above the bars rather than through them, tables that turn into one block per
record on a terminal too narrow for them (no value cut short), no colour with NO_COLOR."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.appliance.storage_fixtures import make_title, storage_toml
from tests.conftest import run_cli
from tests.integration.serve_support import start
from tests.integration.tty_support import run_in_pty

ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-9]|9[0-7]|38;)[0-9;]*m")
BAR = "━"


def test_load_shows_a_bar_on_a_terminal_that_ends_at_100_and_logs_above_it(
    tmp_path: Path,
) -> None:
    config = storage_toml(tmp_path)
    source = make_title(tmp_path / "src", "tty", sizes=[300_000, 200_000, 5_000])
    args = ["appliance", "load", "--config", str(config), "--title", "tty", "--from", str(source)]
    run = run_in_pty(args)
    assert run.returncode == 0, run.output
    assert BAR in run.output and "100%" in run.output
    # The last frame's count: done equals total (files.json is part of what is copied).
    done, total = re.findall(r"([\d.]+)/([\d.]+) kB", run.output)[-1]
    assert done == total, run.output
    # Each redraw starts after a \r: a log line must never share one with the bar.
    for frame in re.split(r"[\r\n]", run.output):
        assert not ("load tty" in frame and "event=" in frame), repr(frame)

    narrow = run_in_pty([*args, "--replace"], columns=40)
    assert narrow.returncode == 0 and BAR in narrow.output, narrow.output
    for line in re.split(r"\r\n|\r", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", narrow.output)):
        # the bar fits: rich would otherwise wrap its columns onto a second line
        assert not line.startswith("load tty") or len(line) <= 40, repr(line)
        assert not line.strip().startswith("kB"), repr(line)

    piped = run_cli([*args, "--replace"], check=True)
    assert BAR not in piped.stdout + piped.stderr and "\x1b" not in piped.stdout + piped.stderr
    assert piped.stdout.startswith("loaded tty: ")


def test_tables_too_wide_for_the_terminal_become_records_and_no_color_has_none(
    tmp_path: Path,
) -> None:
    store = tmp_path / "origin"
    long_id = "a-rather-long-title-id-that-cannot-fit-forty-columns"
    make_title(store / "titles", long_id, sizes=[1_000])
    args = ["origin", "ls", "--store", str(store)]

    wide = run_in_pty(args, columns=200)
    assert wide.returncode == 0 and "┏" in wide.output and long_id in wide.output, wide.output
    narrow = run_in_pty(args, columns=40)
    assert narrow.returncode == 0, narrow.output
    # Wider than the terminal: one block per record, every value whole on its line (no '…',
    # no value folded over several table lines), still no table borders cut in half.
    assert "…" not in narrow.output and "┏" not in narrow.output, narrow.output
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in narrow.output.split("\r\n")]
    assert f"id  {long_id}" in lines, lines

    plain = run_in_pty([*args, "--nosuch"], env={"NO_COLOR": "1"})
    assert plain.returncode == 2 and "error:" in plain.output  # red on a terminal, but...
    assert not ANSI_COLOUR.search(plain.output), repr(plain.output)  # ...not with NO_COLOR


def sigint_default() -> None:
    """A command started from a background job inherits SIGINT ignored; a person's shell
    gives it the default, which is what these tests are about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_a_fill_is_one_line_and_no_title(tmp_path: Path) -> None:
    """SIGINT once the first bytes are staged (a 1 Mbit/s cap keeps the fill going): exit
    130 with one line, and the title is not on the appliance."""
    config = storage_toml(tmp_path)
    with config.open("a") as f:
        f.write(f'[fill]\nstaging = "{tmp_path / "staging"}"\n')
    make_title(tmp_path / "origin" / "titles", "slow", sizes=[1_500_000, 1_500_000])
    origin = start(["origin", "serve", "--store", str(tmp_path / "origin"),
                    "--listen", "127.0.0.1:0"], want=("listening",))  # fmt: skip
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", "appliance", "fill", "--config", str(config),
             "--from", origin.url, "--title", "slow", "--cap-mbps", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not any(tmp_path.rglob("*.part")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        origin.stop()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if "level=" not in line]
    assert lines == [
        "error: fill interrupted; downloaded parts are kept and the next fill resumes them"
    ]
    assert out == ""
    listing = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    assert json.loads(listing.stdout) == []


def test_bars_draw_on_stderr_so_json_on_stdout_stays_clean(tmp_path: Path) -> None:
    """`edgeflix ... --json > out.json` on a terminal (or `ssh -t`): the bar shows on the
    terminal, stdout holds the JSON alone."""
    import os
    import pty

    config = storage_toml(tmp_path)
    source = make_title(tmp_path / "src", "tty", sizes=[300_000, 200_000, 5_000])
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "EDGEFLIX_LOG_JSON")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", "appliance", "load", "--config", str(config),
         "--title", "tty", "--from", str(source), "--json"],
        stdout=subprocess.PIPE, stderr=slave, stdin=slave, env={**env, "TERM": "xterm"},
    )  # fmt: skip
    os.close(slave)
    seen: list[bytes] = []

    def drain() -> None:  # the terminal's side, read as it comes (a full pty would block)
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=120)
        reader.join(10)
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"\x1b" not in out and json.loads(out)["id"] == "tty"
    assert BAR in b"".join(seen).decode(errors="replace")

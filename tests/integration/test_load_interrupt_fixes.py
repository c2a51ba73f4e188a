"""Ctrl-C and SIGTERM during `appliance load` and `appliance rm` leave one whole version of a
title or none, and say which: the undo of an interrupted load, and a removal once begun, run
to their end whatever signal follows. And config sections such as `[fill]` in the appliance's
help read the same on a terminal (rich help) as in a pipe (plain help)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.diskclaim import is_marker
from tests.appliance.storage_fixtures import make_title, storage_toml
from tests.conftest import run_cli
from tests.integration.tty_support import run_in_pty

MIB = 1 << 20
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _edgeflix(*args: str) -> subprocess.Popen[str]:
    """`edgeflix ARGS` as a shell's foreground job runs it: Ctrl-C (SIGINT) in force, which a
    test runner may have ignored for its children."""
    env = dict(os.environ)
    env.pop("EDGEFLIX_LOG_JSON", None)
    return subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def _titles(config: Path) -> list[str]:
    """`appliance ls` in a pipe: one `id state …` line per title."""
    proc = run_cli(["appliance", "ls", "--config", str(config)], check=True)
    return proc.stdout.splitlines()[1:]


def _files_on_disks(tmp_path: Path) -> list[Path]:
    disks = [tmp_path / d for d in ("ssd0", "hdd1")]
    return sorted(p for d in disks for p in d.rglob("*") if p.is_file() and not is_marker(p.name))


def _load_under_way(tmp_path: Path, config: Path, source: Path) -> subprocess.Popen[str]:
    """A load of `huge` whose copy is under way: two of its segments are in place."""
    proc = _edgeflix(
        "appliance", "load", "--config", str(config), "--title", "huge", "--from", str(source)
    )
    folder = tmp_path / "hdd1" / "titles" / "huge"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and len(list(folder.rglob("*.m4s"))) >= 2:
            return proc
        time.sleep(0.002)
    proc.kill()
    raise AssertionError(f"the copy never got under way: {_finish(proc)}")


def test_a_double_ctrl_c_during_a_load_leaves_no_part_of_the_title(tmp_path: Path) -> None:
    """The second Ctrl-C of a double press used to land in the undo of the first (deleting
    the partial copy) and leave the title `removing` with hundreds of MB on the disk, while
    the command said nothing was kept."""
    config = storage_toml(tmp_path)
    source = make_title(tmp_path / "src", "huge", sizes=[48 * MIB] * 6)
    for gap in (0.0, 0.002, 0.005, 0.01, 0.02):
        proc = _load_under_way(tmp_path, config, source)
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        code, out, err = _finish(proc)
        assert code == 130 and out == "", (gap, code, out, err)
        assert err == "error: load interrupted; no part of huge was kept\n", (gap, err)
        assert _titles(config) == [], gap
        assert _files_on_disks(tmp_path) == [], gap


def test_sigterm_during_a_load_undoes_it_then_ends_the_process(tmp_path: Path) -> None:
    """SIGTERM (alone, or after a Ctrl-C) ends the command as it always did, but only once the
    partial copy is gone: it used to leave a `loading` (or `removing`) row and its files."""
    config = storage_toml(tmp_path)
    source = make_title(tmp_path / "src", "huge", sizes=[48 * MIB] * 6)
    for first in (None, signal.SIGINT):
        proc = _load_under_way(tmp_path, config, source)
        if first is not None:
            proc.send_signal(first)
            time.sleep(0.003)
        proc.send_signal(signal.SIGTERM)
        code, _, err = _finish(proc)
        assert code == -signal.SIGTERM, (first, code, err)
        assert _titles(config) == [], first
        assert _files_on_disks(tmp_path) == [], first


def test_ctrl_c_during_rm_finishes_the_removal_first_and_says_so(tmp_path: Path) -> None:
    """A Ctrl-C once the title is out of service (`removing`) used to stop the removal
    half-way: the title stayed `removing` with its files on the disk until a reconcile."""
    config = storage_toml(tmp_path)
    source = make_title(tmp_path / "src", "huge", sizes=[16 * MIB] * 16)
    index = tmp_path / "var" / "index.sqlite"
    hits = 0
    for _ in range(3):
        load = ["appliance", "load", "--config", str(config), "--title", "huge"]
        run_cli([*load, "--from", str(source)], check=True)
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, isolation_level=None)
        try:
            proc = _edgeflix("appliance", "rm", "--config", str(config), "--title", "huge")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                row = db.execute("SELECT state FROM titles WHERE id = 'huge'").fetchone()
                if row is not None and row[0] == "removing":
                    proc.send_signal(signal.SIGINT)
                    hits += 1
                    break
            code, out, err = _finish(proc)
        finally:
            db.close()
        if code == 0:  # done before the poll saw it: nothing to check this round
            assert out == "removed huge\n"
        else:
            assert code == 130 and out == "", (code, out, err)
            assert err == "error: rm interrupted, but not before huge was removed: it is gone\n"
        assert _titles(config) == []
        assert _files_on_disks(tmp_path) == []
    assert hits, "the Ctrl-C never landed during the removal"


def test_config_sections_in_the_appliance_help_show_on_a_terminal_and_in_a_pipe() -> None:
    """Rich help (a terminal) took `[fill]` for a style tag: "(--plan, or  plan)"."""
    tty = run_in_pty(["appliance", "fill", "--help"], columns=200)
    assert tty.returncode == 0, tty.output
    shown = ANSI.sub("", tty.output)
    assert "(--plan, or [fill] plan)" in shown and "(default: [fill] plan)" in shown, shown
    piped = run_cli(["appliance", "fill", "--help"], check=True)
    assert "(--plan, or [fill] plan)" in piped.stdout
    assert "(default: [fill] plan)" in piped.stdout
    assert "\\[" not in shown + piped.stdout


@pytest.mark.parametrize(
    "command", ["load", "ls", "rm", "reconcile", "verify", "run", "sign", "fill", "status"]
)
def test_every_bracketed_word_of_the_plain_help_is_on_the_terminal_too(command: str) -> None:
    piped = run_cli(["appliance", command, "--help"], check=True).stdout
    tty = run_in_pty(["appliance", command, "--help"], columns=200)
    assert tty.returncode == 0, tty.output
    shown = ANSI.sub("", tty.output)
    for tag in set(re.findall(r"\[[a-z][a-z_]*\]", piped)):
        assert tag in shown, (tag, shown)

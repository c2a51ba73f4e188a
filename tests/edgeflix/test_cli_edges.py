"""The command line's edges, the house rules where a hostile user pushes: closed standard
streams, argument bytes that are not text, empty names, absurd numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.edgeflix.test_cli import one_error_line


def _stdout_closed() -> None:
    os.close(1)  # as `edgeflix … >&-`: the process starts without a descriptor 1


@pytest.mark.parametrize(
    "args", [["--help"], ["fleet", "--help"], ["origin", "ls", "--store", "{tmp}", "--json"]]
)
def test_a_closed_stdout_drops_the_output_and_the_command_works(
    args: list[str], tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeflix.cli", *(a.format(tmp=tmp_path) for a in args)],
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        preexec_fn=_stdout_closed,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_a_closed_stdout_still_reports_a_mistake_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeflix.cli", "fleet", "ls", "--fleet", "ftp://x"],
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        preexec_fn=_stdout_closed,
    )
    assert proc.returncode == 1
    assert "ftp://x" in one_error_line(proc.stderr)


NOT_TEXT = [
    (["fleet", "steer", "--client-ip", "127.0.0.1", "--title", b"caf\xe9"], "--title"),
    (["fleet", "steer", "--client-ip", b"\xff", "--title", "movie"], "--client-ip"),
    (["fleet", "join-token", "--site", b"caf\xe9"], "--site"),
    (["fleet", "plan", "--site", b"\xff"], "--site"),
    (["fleet", "show", b"caf\xe9"], "NAME"),  # an argument, named as usage shows it
    (["fleet", "ls", "--fleet", b"http://127.0.0.1:9/\xff"], "--fleet"),
    (["appliance", "sign", "--title", b"caf\xe9"], "--title"),
    (["appliance", "fill", "--from", b"http://x\xff", "--title", "a"], "--from"),
    (["origin", "ingest", "x.mp4", "--id", b"a\xff", "--title", "a"], "--id"),
    (["origin", "serve", "--listen", b"\xff:1"], "--listen"),
]


@pytest.mark.parametrize("args,option", NOT_TEXT, ids=[o + " " + a[1] for a, o in NOT_TEXT])
def test_an_argument_that_is_not_text_is_a_usage_error_naming_it(
    args: list[str | bytes], option: str
) -> None:
    """Python passes undecodable argv bytes on as lone surrogates; they failed as a
    UnicodeEncodeError traceback where first encoded (a URL, a JSON body)."""
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"edgeflix.cli",
         *(a if isinstance(a, bytes) else a.encode() for a in args)],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    line = one_error_line(err)
    assert f"'{option}'" in line and "not UTF-8 text" in line and "--help" in line, line
    assert "\\x" in line  # the bytes as typed, escaped


def test_a_file_name_may_be_any_bytes(tmp_path: Path) -> None:
    """Paths are bytes on Linux: one that is not UTF-8 is taken, not refused as text."""
    store = os.fsencode(tmp_path) + b"/st\xe9re"
    os.mkdir(store)
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"edgeflix.cli", b"origin", b"ls", b"--store", store,
         b"--json"],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == b"[]"


@pytest.mark.parametrize("cap", ["1e308", "1000000.5"])
def test_an_absurd_fill_cap_is_a_usage_error(cap: str) -> None:
    """A cap above 1 Tbit/s: 1e308 Mbit/s passed the finite check and overflowed to bit/s."""
    args = ["appliance", "fill", "--from", "http://127.0.0.1:9", "--title", "movie", "--now"]
    proc = run_cli([*args, "--cap-mbps", cap], timeout=60)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "--cap-mbps" in line and "1000000" in line, line


@pytest.mark.parametrize(
    "args",
    [
        ["fill", "--now", "--site", ""],
        ["plan", "--site", ""],
        ["ls", "--fleet", ""],
        ["show", ""],
        ["drain", " "],
        ["undrain", ""],
        ["rm", ""],
        ["join-token", "--site", ""],
        ["steer", "--client-ip", "", "--title", "film"],
        ["steer", "--client-ip", "192.168.1.50", "--title", ""],
    ],
    ids=lambda args: " ".join(repr(a) if not a.strip() else a for a in args),
)
def test_an_empty_fleet_name_is_a_usage_error_not_every_name(args: list[str]) -> None:
    """`--site ""` told every site to fill; `--fleet ""` fell back to the default manager.
    Refused before any call: the manager given here does not answer."""
    extra = [] if "--fleet" in args else ["--fleet", "http://127.0.0.1:9"]
    proc = run_cli(["fleet", *args, *extra], timeout=60)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "must not be empty" in line and "--help" in line, line
    assert proc.stdout == ""

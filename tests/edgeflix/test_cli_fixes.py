"""The umbrella CLI where a hostile review pushed: a stdout that refuses writes (a full disk),
a big `--json` listing whose reader leaves mid-way, an override blamed on the wrong source,
and help that says what is not there."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import model_validator

from edgeflix import titlefiles
from edgeflix.cli import COMPONENTS
from edgeflix.config import load_config
from edgeflix.errors import ConfigError
from tests.conftest import run_cli
from tests.edgeflix.test_cli import BOX_OR_ANSI, one_error_line
from tests.edgeflix.test_config import Daemon, write

CLI = [sys.executable, "-m", "edgeflix.cli"]
# Python's stdout either writes each print at once (unbuffered, as containers and services
# often run it) or at the end (buffered): an output failure surfaces at either place.
STDOUT_MODES = {"unbuffered": "1", "buffered": None}


def cli_env(unbuffered: str | None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "EDGEFLIX_LOG_JSON")
    }
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    return env


def published_store(store: Path, count: int) -> Path:
    """`count` published titles (a playlist and files.json each), enough for a long listing."""
    for i in range(count):
        folder = store / "titles" / f"t{i:04d}"
        folder.mkdir(parents=True)
        (folder / "master.m3u8").write_text("#EXTM3U\n")
        files = titlefiles.scan(folder)
        model = titlefiles.TitleFiles(
            id=folder.name, title=f"Title {i} " + "x" * 200, duration=1.0,
            segment_seconds=1.0, created="2026-01-01T00:00:00Z", renditions=(),
            files=tuple(files), total_bytes=sum(f.size for f in files),
        )  # fmt: skip
        (folder / titlefiles.FILES_JSON).write_bytes(titlefiles.render(model))
    return store


# -- 1. a stdout that refuses writes ---------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("mode", list(STDOUT_MODES))
@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["fleet"],  # a group alone: its help, told by our usage-error handler
        ["origin", "ls", "--store", "{big}"],  # a table: left buffered until main's last flush
        ["origin", "ls", "--store", "{big}", "--json"],
        ["origin", "ls", "--store", "{empty}", "--json"],
    ],
    ids=" ".join,
)
def test_a_full_stdout_is_one_line_and_a_failure(
    args: list[str], mode: str, tmp_path: Path
) -> None:
    """`edgeflix … > /dev/full` ended in a traceback of OSError ENOSPC."""
    big = published_store(tmp_path / "big", 40) if "{big}" in args else tmp_path
    argv = [a.format(big=big, empty=tmp_path) for a in args]  # an empty listing: "[]"
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*CLI, *argv], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
            env=cli_env(STDOUT_MODES[mode]),
        )  # fmt: skip
    line = one_error_line(proc.stderr)
    assert line == "error: cannot write output: No space left on device", proc.stderr
    assert proc.returncode == 1


def test_output_still_gets_out_whole_when_nothing_fails(tmp_path: Path) -> None:
    store = published_store(tmp_path, 300)
    for mode in STDOUT_MODES.values():
        proc = subprocess.run(
            [*CLI, "origin", "ls", "--store", str(store), "--json"], capture_output=True,
            text=True, timeout=60, env=cli_env(mode),
        )  # fmt: skip
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert proc.stdout.count('"id"') == 300 and proc.stdout.endswith("]\n")


# -- 2. a reader that leaves in the middle of a long listing -------------------------------


@pytest.mark.parametrize("mode", list(STDOUT_MODES))
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_a_reader_leaving_mid_listing_ends_it_as_sigpipe_would(
    as_json: bool, mode: str, tmp_path: Path
) -> None:
    """`edgeflix origin ls --json | head -1` on a long listing: with an unbuffered stdout the
    JSON document went out in one write(2), cut short where the pipe filled, and the command
    exited 0 as if all of it had been read; the table got the SIGPIPE exit (141)."""
    store = published_store(tmp_path, 600)  # ~200 KiB of JSON: more than a pipe holds
    args = ["origin", "ls", "--store", str(store), *(["--json"] if as_json else [])]
    proc = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=cli_env(STDOUT_MODES[mode]),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # as `head -1`: one line, then gone
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert first.startswith(b"[" if as_json else b"id\t"), first
    assert proc.wait(timeout=60) == -signal.SIGPIPE, err
    assert err == ""


# -- 3. an environment override is named, not the file ---------------------------------------


def test_a_bad_override_names_its_variable_not_the_file(tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text("[serve]\nworkers = 2\n")
    env = {"EDGEFLIX_APPLIANCE__SERVE__WORKERS": "abc"}
    proc = run_cli(["appliance", "ls", "--config", str(config)], env=env, timeout=60)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2
    assert line.startswith("error: EDGEFLIX_APPLIANCE__SERVE__WORKERS: key 'serve.workers': ")
    assert str(config) not in line
    config.write_text('[serve]\nworkers = "abc"\n')  # the file's own mistake names the file
    proc = run_cli(["appliance", "ls", "--config", str(config)], timeout=60)
    assert one_error_line(proc.stderr).startswith(f"error: {config}: key 'serve.workers': ")


class Checked(Daemon):
    """A config with a check across tables, as ApplianceConfig has."""

    limit: int = 8

    @model_validator(mode="after")
    def _fits(self) -> Checked:
        if self.serve.workers > self.limit:
            raise ValueError("more workers than the limit")
        return self


@pytest.mark.parametrize(
    ("text", "env", "blamed"),
    [
        ("", {"EDGEFLIX__SERVE__WORKERS": "x"}, "EDGEFLIX__SERVE__WORKERS: key 'serve.workers'"),
        # a whole table given in the variable: the variable holds the bad key
        ("", {"EDGEFLIX__SERVE": '{workers = "x"}'}, "EDGEFLIX__SERVE: key 'serve.workers'"),
        ("", {"EDGEFLIX__SERVE__NOPE": "1"}, "EDGEFLIX__SERVE__NOPE: unknown key 'serve.nope'"),
        ('[serve]\nworkers = "x"\n', {"EDGEFLIX__NAME": "n"}, "d.toml: key 'serve.workers'"),
        # a check of the whole config: the file, and the variable that took part
        ("limit = 2\n", {"EDGEFLIX__SERVE__WORKERS": "3"},
         "d.toml with EDGEFLIX__SERVE__WORKERS: key '(top level)'"),
        (None, {"EDGEFLIX__LIMIT": "0"}, "defaults with EDGEFLIX__LIMIT: key '(top level)'"),
    ],
)  # fmt: skip
def test_a_validation_error_names_where_the_value_came_from(
    text: str | None, env: dict[str, str], blamed: str, tmp_path: Path
) -> None:
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as caught:
        load_config(Checked, path, env=env)
    message = str(caught.value).replace(str(tmp_path) + "/", "")
    assert message.startswith(blamed), message


# -- 4 and 5. help says what there is, and how to give it ------------------------------------


def test_the_summary_names_only_components_there_are() -> None:
    summary = run_cli(["--help"], check=True, timeout=60).stdout.splitlines()[2]
    assert summary.startswith("  Self-hostable video delivery:"), summary
    for word in ("services", "demo"):
        assert word not in summary or word in COMPONENTS, summary


HELP_ARGS = [
    ["origin", "ingest", "--help"],
    ["appliance", "fill", "--help"],
    ["appliance", "ls", "--help"],
    ["fleet", "keys", "revoke", "--help"],
    ["--help"],
]


def help_on_a_terminal(args: list[str]) -> str:
    """The help as a person sees it: rich panels on a terminal (a pty, 100 columns)."""
    main, child = pty.openpty()
    env = {**cli_env(None), "COLUMNS": "100", "LINES": "50", "TERM": "xterm", "NO_COLOR": "1"}
    proc = subprocess.Popen([*CLI, *args], stdout=child, stderr=child, env=env)
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child has closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(timeout=60) == 0
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
@pytest.mark.parametrize("args", HELP_ARGS, ids=" ".join)
def test_help_shows_no_value_after_a_flag_and_plain_argument_names(
    args: list[str], terminal: bool
) -> None:
    """typer 0.29 showed `--json <bool>` on a terminal, `{src}` in usage lines and
    `<list[str]>` for a repeatable option."""
    shown = help_on_a_terminal(args) if terminal else run_cli(args, check=True).stdout
    assert "--help" in shown and (BOX_OR_ANSI.search(shown) is not None) == terminal, shown
    assert "<bool>" not in shown and "list[" not in shown, shown
    usage = next(line for line in shown.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    if "ingest" in args:
        assert usage.split()[-1] == "SRC", usage
    if "revoke" in args:
        assert usage.split()[-1] == "KEY_ID", usage
    if "fill" in args:
        assert re.search(r"--from +<str>", shown) and re.search(r"--title +<str>", shown), shown

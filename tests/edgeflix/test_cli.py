from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeflix.cli import COMPONENTS, wanted_components
from tests.appliance.storage_fixtures import make_title, storage_toml
from tests.conftest import run_cli


def test_only_the_named_component_is_mounted() -> None:
    assert wanted_components(["appliance", "ls", "--json"]) == ["appliance"]
    assert wanted_components(["--help"]) == list(COMPONENTS)
    assert wanted_components(["nosuch"]) == list(COMPONENTS)
    assert wanted_components([]) == list(COMPONENTS)


def test_help_lists_every_component_and_unknown_command_fails() -> None:
    listing = run_cli(["--help"], check=True).stdout
    assert all(name in listing for name in COMPONENTS)
    assert run_cli(["nosuch"]).returncode == 2


# -- the house rules at the command line's edges, in a pipe -----------------------------------

BOX_OR_ANSI = re.compile(r"[\x1b─│╭╮╰╯┏┓┗┛━┃]")


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "level=" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert not BOX_OR_ANSI.search(stderr), stderr
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["origin", "ls", "--jsn"],
        ["appliance", "sign", "--title", "t", "--ttl", "abc"],
        ["fleet", "show"],
        ["nosuch"],
        ["origin", "ingest", "x.mp4", "--id", "a", "--title", "a", "--ladder", "fast"],
        ["origin", "ingest", "x.mp4", "--id", "a", "--title", "a", "--heights", "tall"],
        ["origin", "serve", "--header-timeout", "0"],
        ["appliance", "fill", "--from", "http://127.0.0.1:9", "--title", "a", "--cap-mbps", "-1"],
        ["fleet", "fill", "--fleet", "http://127.0.0.1:9"],
    ],
    ids=lambda args: " ".join(args),
)
def test_usage_mistakes_are_one_plain_line_and_exit_2(args: list[str]) -> None:
    proc = run_cli(args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--help" in one_error_line(proc.stderr)
    assert proc.stdout == ""


@pytest.mark.parametrize("args", [["fleet", "--help"], ["appliance", "load", "--help"], []])
def test_help_in_a_pipe_is_plain_text(args: list[str]) -> None:
    proc = run_cli(args, timeout=60)
    assert proc.returncode == (0 if args else 2)  # bare `edgeflix` shows help as a usage error
    assert proc.stdout.startswith("Usage: edgeflix"), proc.stdout
    assert not BOX_OR_ANSI.search(proc.stdout + proc.stderr), proc.stdout


def test_bad_fill_source_or_title_is_one_line(tmp_path: Path) -> None:
    config = storage_toml(tmp_path)
    for bad in (
        ["--from", "notaurl", "--title", "t"],
        ["--from", "http://127.0.0.1:9", "--title", "../t"],
    ):
        proc = run_cli(["appliance", "fill", "--config", str(config), *bad], timeout=60)
        assert proc.returncode == 1
        assert "notaurl" in one_error_line(proc.stderr) or "'../t'" in proc.stderr


def test_origin_serve_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["origin", "serve", "--store", str(tmp_path), "--listen", f"127.0.0.1:{port}"]
        proc = run_cli(args, timeout=60)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in one_error_line(proc.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["fleet", "--help"],
        ["fleet"],  # a group alone prints its help (as a usage error), outside click's care
        ["origin", "ls", "--store", "{tmp}", "--json"],
        ["origin", "ls", "--store", "{tmp}"],  # a table, left buffered until the exit
    ],
    ids=" ".join,
)
def test_a_pipe_whose_reader_has_gone_ends_the_command_as_sigpipe_would(
    args: list[str], tmp_path: Path
) -> None:
    """`edgeflix … | head -1` once head has gone: no word, and killed by SIGPIPE as `cat`
    would be (the shell's 141), not exit 1 as if the command had failed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", *(a.format(tmp=tmp_path) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == -signal.SIGPIPE, err
    assert err == ""


def test_ctrl_c_is_one_line_and_exit_130() -> None:
    """SIGINT while the command waits (on a manager that accepts and never answers)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(60)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", "fleet", "ls", "--fleet", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # as from a person's shell (a background job would inherit SIGINT ignored)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        conn, _ = silent.accept()  # the command is now waiting on its call
        with conn:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert one_error_line(err) == "error: interrupted"
    assert out == ""


def test_appliance_actions_take_json_too(tmp_path: Path) -> None:
    """load, sign and rm answer --json like every listing: JSON alone on stdout."""
    config = storage_toml(tmp_path)
    with config.open("a") as f:
        f.write('[auth]\nkeys = [ { id = "k1", secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0" } ]\n')
    source = make_title(tmp_path / "src", "js")
    base = ["--config", str(config), "--title", "js", "--json"]
    loaded = json.loads(
        run_cli(["appliance", "load", *base, "--from", str(source)], check=True).stdout
    )
    assert loaded["id"] == "js" and loaded["state"] == "ready" and loaded["bytes"] > 0
    signed = run_cli(["appliance", "sign", *base, "--ttl", "60"], check=True)
    doc = json.loads(signed.stdout)
    assert doc["key"] == "k1" and "/titles/js/master.m3u8" in doc["url"]
    assert "port 0" not in signed.stderr  # the fixture's default listen has a real port
    assert json.loads(run_cli(["appliance", "rm", *base], check=True).stdout) == {
        "id": "js",
        "removed": True,
    }


def test_every_command_and_parameter_has_help() -> None:
    """--help is complete: every command says what it does and every option and argument
    what it takes (walks the real command tree, all components mounted)."""
    import typer.main

    from edgeflix import cli

    if not cli.app.registered_groups:  # main() mounts them; this process has not run it
        cli._mount(list(COMPONENTS))
    missing: list[str] = []

    def walk(command: Any, path: str) -> None:
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if param.name != "help" and not (getattr(param, "help", None) or "").strip():
                missing.append(f"{path} {param.name}")
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    root = typer.main.get_command(cli.app)
    for name, sub in root.commands.items():  # type: ignore[attr-defined]
        walk(sub, name)
    assert missing == []


def test_origin_rm_removes_a_title_and_says_so_in_one_line_when_it_cannot(
    tmp_path: Path,
) -> None:
    from tests.origin.test_replaced import publish

    publish(tmp_path, "one")
    args = ["origin", "rm", "--id", "film", "--store", str(tmp_path)]
    done = json.loads(run_cli([*args, "--json"], check=True, timeout=60).stdout)
    assert done["id"] == "film" and done["removed"] is True and done["bytes"] > 0
    listing = run_cli(["origin", "ls", "--store", str(tmp_path), "--json"], check=True).stdout
    assert json.loads(listing) == []
    again = run_cli(args, timeout=60)
    assert again.returncode == 1
    assert "no title 'film'" in one_error_line(again.stderr)
    bad = run_cli(["origin", "rm", "--id", "../film", "--store", str(tmp_path)], timeout=60)
    assert bad.returncode == 1 and "../film" in one_error_line(bad.stderr)

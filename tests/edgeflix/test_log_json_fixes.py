"""JSON logs (EDGEFLIX_LOG_JSON=1) where a review found them short: a logged exception's
traceback and a stack dump were dropped, and the CLI's fatal error was a plain `error: …`
line among JSON lines, so a per-line JSON reader failed on the line saying why it ended."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from edgeflix.log import JsonFormatter, KeyValueFormatter
from tests.appliance.storage_fixtures import storage_toml

CLI = [sys.executable, "-m", "edgeflix.cli"]


def _record(**kwargs: object) -> logging.LogRecord:
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom.happened", (), None)
    record.__dict__.update(kwargs)
    return record


def _failed() -> logging.LogRecord:
    try:
        raise ValueError("the disk said no")
    except ValueError:
        return _record(exc_info=sys.exc_info(), edgeflix_fields={"disk": "d1"})


# -- 1. exc and stack in the JSON body --------------------------------------------------------


def test_json_lines_carry_the_traceback_on_one_line() -> None:
    line = JsonFormatter().format(_failed())
    assert "\n" not in line
    body = json.loads(line)
    assert body["event"] == "boom.happened" and body["disk"] == "d1"
    assert body["exc"].startswith("Traceback (most recent call last):")
    assert body["exc"].endswith("ValueError: the disk said no")


def test_json_lines_carry_a_stack_dump_on_one_line() -> None:
    line = JsonFormatter().format(_record(stack_info="Stack (most recent call last):\n  f()"))
    assert "\n" not in line
    assert json.loads(line)["stack"] == "Stack (most recent call last):\n  f()"


def test_both_formats_say_the_same() -> None:
    record = _failed()
    record.stack_info = "Stack (most recent call last):\n  f()"
    body = json.loads(JsonFormatter().format(record))
    kv = KeyValueFormatter().format(record)
    assert "\n" not in kv
    assert f"exc={json.dumps(body['exc'])}" in kv
    assert f"stack={json.dumps(body['stack'])}" in kv


def test_no_exc_or_stack_keys_without_them() -> None:
    body = json.loads(JsonFormatter().format(_record()))
    assert "exc" not in body and "stack" not in body


def test_a_process_logging_an_exception_writes_it_as_json(tmp_path: Path) -> None:
    script = (
        "import logging\n"
        "from edgeflix.log import setup_logging\n"
        "setup_logging()\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.getLogger('x').exception('it.failed')\n"
    )
    env = {**os.environ, "EDGEFLIX_LOG_JSON": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "ZeroDivisionError: division by zero" in json.loads(lines[0])["exc"]


# -- 2. the CLI's fatal error as a JSON line --------------------------------------------------


def _edgeflix(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLIX_")}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env={**full, **env}
    )


def _json_lines(stderr: str) -> list[dict[str, object]]:
    """Every stderr line parsed as JSON: fails on any line that is not."""
    return [json.loads(line) for line in stderr.splitlines()]


def test_a_fatal_error_in_json_mode_is_a_json_event(tmp_path: Path) -> None:
    config = storage_toml(tmp_path)  # no index yet: `verify` fails with a ConfigError-like line
    proc = _edgeflix(["appliance", "verify", "--config", str(config)], EDGEFLIX_LOG_JSON="1")
    assert proc.returncode == 1, proc.stderr
    last = _json_lines(proc.stderr)[-1]
    assert last["level"] == "error" and last["event"] == "cli.error"
    assert last["logger"] == "edgeflix.cli" and last["exit_code"] == 1
    assert str(last["message"]).startswith("no index at "), last


def test_cannot_listen_in_json_mode_is_a_json_event_even_at_level_critical(
    tmp_path: Path,
) -> None:
    """The daemon's last word, logged while the level hides errors: the plain line would be
    printed whatever the level, so the JSON one is too."""
    toml = tmp_path / "fleet.toml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        toml.write_text(
            f'[server]\ngrpc = "{address}"\nhttp = "127.0.0.1:0"\n'
            f'db = "{tmp_path / "fleet.sqlite"}"\n'
        )
        args = ["fleet", "serve", "--config", str(toml)]
        for level in ("info", "critical"):
            proc = _edgeflix(args, EDGEFLIX_LOG_JSON="1", EDGEFLIX_LOG_LEVEL=level)
            assert proc.returncode == 1, proc.stderr
            assert proc.stdout == ""
            last = _json_lines(proc.stderr)[-1]
            assert last["event"] == "cli.error", proc.stderr
            assert last["message"] == f"cannot listen on {address}: Address already in use"


def test_a_config_error_in_json_mode_keeps_its_exit_code(tmp_path: Path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text("[serve]\nworkers = 0\n")
    proc = _edgeflix(["appliance", "ls", "--config", str(toml)], EDGEFLIX_LOG_JSON="1")
    assert proc.returncode == 2
    (line,) = _json_lines(proc.stderr)
    assert line["exit_code"] == 2 and "serve.workers" in str(line["message"])


def test_without_json_the_fatal_error_stays_one_plain_line(tmp_path: Path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text("[serve]\nworkers = 0\n")
    for switch in ({}, {"EDGEFLIX_LOG_JSON": "0"}):
        proc = _edgeflix(["appliance", "ls", "--config", str(toml)], **switch)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr

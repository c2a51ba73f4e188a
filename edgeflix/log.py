"""Structured logging: one line per event on stderr, `key=value` (or JSON with EDGEFLIX_LOG_JSON=1).

Call `event(log, "title.published", id=..., bytes=...)`; the message is the event name and
the fields follow, quoted when they hold spaces, so lines stay grep- and parse-friendly.
EDGEFLIX_LOG_LEVEL and EDGEFLIX_LOG_JSON are read once, by `log_settings`: a value it does
not know is a ConfigError (one line, exit 2 at the CLI), not a traceback or a silent default.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeflix.errors import ConfigError

_FIELDS = "edgeflix_fields"


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return json.dumps(text)
    return text


def _trace(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, str]:
    """The traceback (`exc`, from `log.exception` or exc_info=) and the call stack (`stack`,
    from stack_info=True) a record carries, as text: both formats add them after the fields."""
    trace: dict[str, str] = {}
    if record.exc_info:
        trace["exc"] = formatter.formatException(record.exc_info)
    if record.stack_info:
        trace["stack"] = formatter.formatStack(record.stack_info)
    return trace


class KeyValueFormatter(logging.Formatter):
    """`2026-11-25T19:53:37Z level=info logger=origin event=x k=v`."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        parts = [stamp, f"level={record.levelname.lower()}", f"logger={record.name}"]
        parts.append(f"event={_quote(record.getMessage())}")
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
        parts.extend(f"{k}={_quote(v)}" for k, v in _trace(self, record).items())
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        body = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name}
        body["event"] = record.getMessage()
        body.update(fields)
        body.update(_trace(self, record))  # escaped newlines: still one line per event
        return json.dumps(body, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each line: while progress bars draw, rich puts a
    proxy there that prints the line above the bars instead of through them (edgeflix/ui.py)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always sys.stderr, looked up per line


LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,  # what logging itself took before the names were checked
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# The spellings a service manager, a .env file or a shell script use for a switch.
_YES = frozenset({"1", "true", "yes", "on"})
_NO = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class LogSettings:
    level: int = logging.INFO
    as_json: bool = False


def log_settings(env: Mapping[str, str], level: str | None = None) -> LogSettings:
    """The settings `env` asks for (`level`, when given, over EDGEFLIX_LOG_LEVEL). An empty
    variable counts as unset, as `EDGEFLIX_LOG_LEVEL= edgeflix …` means."""
    level_raw = level or env.get("EDGEFLIX_LOG_LEVEL", "")
    level_name = level_raw.strip().lower() or "info"
    if level_name not in LEVELS:
        raise ConfigError(
            f"EDGEFLIX_LOG_LEVEL={level_raw!r} is not a log level: "
            "use debug, info, warning, error or critical"
        )
    json_raw = env.get("EDGEFLIX_LOG_JSON", "")
    json_switch = json_raw.strip().lower()
    if json_switch and json_switch not in _YES | _NO:
        raise ConfigError(
            f"EDGEFLIX_LOG_JSON={json_raw!r} is neither yes nor no: use 1, true, yes or on "
            "for JSON lines; 0, false, no or off (or leave it unset) for key=value lines"
        )
    return LogSettings(level=LEVELS[level_name], as_json=json_switch in _YES)


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once per process; idempotent. Raises ConfigError, before
    anything is configured, on a log setting it does not know (see log_settings)."""
    settings = log_settings(os.environ, level)
    root = logging.getLogger()
    if _installed_handler() is not None:
        return
    handler = StderrHandler()
    handler._edgeflix = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if settings.as_json else KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(settings.level)


def _installed_handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger().handlers if getattr(h, "_edgeflix", False)), None)


def fatal_event(message: str, exit_code: int) -> bool:
    """In JSON mode, write the CLI's fatal error as one `cli.error` event at level error and
    return True; else return False, for the caller to print its plain `error: …` line. A
    per-line JSON reader then parses the line saying why the process ended, too. Written
    whatever the log level, as the plain line is: it is the command's last word."""
    handler = _installed_handler()
    if handler is None or not isinstance(handler.formatter, JsonFormatter):
        return False
    fields = {"message": message, "exit_code": exit_code}
    record = logging.LogRecord("edgeflix.cli", logging.ERROR, __file__, 0, "cli.error", (), None)
    setattr(record, _FIELDS, fields)
    handler.handle(record)  # the handler's own checks only: no logger level, no disable()
    return True


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS: fields})

"""Structured logging: one line per event on stderr, `key=value` (or JSON with EDGEFLIX_LOG_JSON=1).

Call `event(log, "title.published", id=..., bytes=...)`; the message is the event name and
the fields follow, quoted when they hold spaces, so lines stay grep- and parse-friendly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_FIELDS = "edgeflix_fields"


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """`2026-11-25T19:53:37Z level=info logger=origin event=x k=v`."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        parts = [stamp, f"level={record.levelname.lower()}", f"logger={record.name}"]
        parts.append(f"event={_quote(record.getMessage())}")
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        body = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name}
        body["event"] = record.getMessage()
        body.update(fields)
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


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once per process; idempotent."""
    root = logging.getLogger()
    if any(getattr(h, "_edgeflix", False) for h in root.handlers):
        return
    handler = StderrHandler()
    handler._edgeflix = True  # type: ignore[attr-defined]
    as_json = os.environ.get("EDGEFLIX_LOG_JSON") == "1"
    handler.setFormatter(JsonFormatter() if as_json else KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("EDGEFLIX_LOG_LEVEL", "info")).upper())


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS: fields})

"""Run `edgeflix ARGS` under a real pseudo-terminal, as a person at a shell would, for the
behaviour that depends on one (tables, colours, progress bars, rich help)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TtyRun:
    returncode: int
    output: str  # stdout and stderr together, as the terminal showed them (\r\n line ends)


def run_in_pty(
    args: Sequence[str],
    *,
    columns: int = 100,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> TtyRun:
    """`edgeflix ARGS` with stdin, stdout and stderr on one pty `columns` wide; bounded."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    full_env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color", **(env or {})}
    for name in ("NO_COLOR", "EDGEFLIX_LOG_JSON", "FORCE_COLOR"):
        if env is None or name not in env:
            full_env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=full_env,
        start_new_session=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the pty's other end has closed it
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return TtyRun(code, b"".join(chunks).decode(errors="replace"))

"""systemd's sd_notify protocol without a dependency: one AF_UNIX datagram to $NOTIFY_SOCKET.

The daemon (daemon.py) says READY=1 once it listens, WATCHDOG=1 every half WatchdogSec,
RELOADING=1/READY=1 around a SIGHUP reload and STOPPING=1 when it starts draining. Outside
systemd (no NOTIFY_SOCKET) every call is a no-op, so the same binary runs anywhere.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def socket_address(value: str) -> str | bytes:
    """`@name` is Linux's abstract namespace: a leading NUL byte, not a file."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=serving"); True when a socket took it.

    Failures are swallowed on purpose only in the sense of returning False: a daemon must
    keep serving if systemd's socket is gone, and the caller logs the False once.
    """
    target = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not target:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), socket_address(target))
    except OSError:
        return False
    return True


def ready(status: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""), env)


def watchdog(env: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", env)


def reloading(env: Mapping[str, str] | None = None, now_us: int | None = None) -> bool:
    """systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 to match the reload to its end."""
    usec = now_us if now_us is not None else time.monotonic_ns() // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", env)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    return notify(f"STATUS={text}", env)


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Half of WatchdogSec (systemd passes WATCHDOG_USEC, and WATCHDOG_PID for whom), or None
    when no watchdog is asked of this process."""
    environ = os.environ if env is None else env
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2

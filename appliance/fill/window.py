"""The appliance's fill windows: the plan's "02:00-06:00" in its zone, or in the box's own
("local": TZ as `date` reads it, else /etc/localtime). The window arithmetic, DST nights
included, is shared with the fleet manager: edgeflix/fillwindow.py.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edgeflix.fillwindow import FillWindow, iana_zone, parse_times
from edgeflix.log import event

log = logging.getLogger(__name__)


def parse_window(spec: str, zone: str = "local") -> FillWindow:
    """`"02:00-06:00"` in `zone`: an IANA name such as "Europe/Berlin", or "local" (the zone
    TZ names, else the system's: see `zone_from_env`)."""
    start, end = parse_times(spec)
    return FillWindow(start, end, resolve_zone(zone))


def resolve_zone(name: str) -> tzinfo:
    if name == "local":
        zone, problem = zone_from_env(os.environ)
        if problem is not None and problem not in _warned:
            _warned.add(problem)  # plans are re-read every tick: say it once, not per tick
            event(log, "fill.timezone_fallback", logging.WARNING, reason=problem)
        return zone
    return iana_zone(name)


_warned: set[str] = set()


def zone_from_env(
    env: Mapping[str, str], system: Callable[[], tzinfo] | None = None
) -> tuple[tzinfo, str | None]:
    """The "local" zone as `date` finds it, and a complaint to log when TZ is unusable.

    Containers set their zone with TZ, not /etc/localtime, so TZ comes first: unset is the
    system's zone (/etc/localtime); "" is UTC and ":" the system's (as glibc reads them);
    "name" or ":name" an IANA zone or an absolute path to a zone file; otherwise a POSIX rule
    such as "UTC0" or "CET-1CEST,M3.5.0,M10.5.0/3". Anything else: the system's zone.
    """
    system = system or _system_zone
    tz = env.get("TZ")
    if tz is None:
        return system(), None
    name = tz[1:] if tz.startswith(":") else tz
    if tz == "":
        return UTC, None
    if name == "":
        return system(), None
    try:
        if name.startswith("/"):
            with open(name, "rb") as fh:
                return ZoneInfo.from_file(fh, key=name), None
        return ZoneInfo(name), None
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    if not tz.startswith(":"):  # ":" always means a file, never a rule
        try:
            return _posix_rule(tz), None
        except ValueError:
            pass
    shown = tz if len(tz) <= 40 else tz[:40] + "..."
    return system(), f"TZ={shown!r} names no time zone; fill windows use the system's zone"


def _posix_rule(rule: str) -> tzinfo:
    """A zone following a POSIX TZ rule, read by zoneinfo's own parser: a zone file with no
    transitions whose footer is the rule. ValueError when the rule does not parse."""
    if not rule.isascii() or "\n" in rule or len(rule) > 100:
        raise ValueError("not a POSIX TZ rule")
    v1 = b"TZif2" + bytes(15) + struct.pack(">6l", 0, 0, 0, 0, 1, 1) + bytes(6) + b"\0"
    return ZoneInfo.from_file(io.BytesIO(v1 + v1 + b"\n" + rule.encode() + b"\n"), key=rule)


def _system_zone() -> tzinfo:
    """The host's zone with its DST rules (/etc/localtime); a fixed offset only as a fallback."""
    try:
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return datetime.now().astimezone().tzinfo or UTC

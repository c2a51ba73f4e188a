"""Run one FileServer process on uvloop until SIGTERM/SIGINT, then stop it gracefully.

Shared by `origin serve` and each `appliance run` worker; `tick` runs periodically (a worker
publishes its counters there) and once more after the stop. `install_signals` is the one way
a long-running process here takes SIGTERM/SIGINT/SIGHUP: no signal ends one ungracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
import signal
import socket
from collections.abc import Callable

import uvloop

from edgeflix.http.server import FileServer, ServerSettings, Site
from edgeflix.http.stats import ServerStats
from edgeflix.log import event

log = logging.getLogger("edgeflix.http")


# Descriptors a worker needs beside its client connections: listening socket, the index,
# files being sent (one per connection at most, counted in), logs, the counters file.
FD_RESERVE = 64


def nofile_plan(max_connections: int, soft: int, hard: int, open_files: int = 0) -> tuple[int, int]:
    """(the soft descriptor limit to ask for, the connection cap that fits in it). Each
    connection holds a socket and, while sending, a file, and the file cache keeps up to
    `open_files` more open: the soft limit is raised toward the hard one (a shell's 1024 is
    common); where the hard limit is lower, the cap is lowered to fit, so a crowd gets 503s
    rather than failed accepts."""
    infinite = resource.RLIM_INFINITY
    fixed = FD_RESERVE + open_files
    wanted = 2 * max_connections + fixed
    if soft == infinite or soft >= wanted:
        return soft, max_connections
    raised = wanted if hard == infinite else max(soft, min(wanted, hard))
    if raised >= wanted:
        return raised, max_connections
    return raised, max(1, (raised - fixed) // 2)


def fit_connections(settings: ServerSettings) -> ServerSettings:
    """Apply nofile_plan to this process and `settings`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cached = settings.open_files
    new_soft, cap = nofile_plan(settings.max_connections, soft, hard, cached)
    if new_soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        except (OSError, ValueError):
            new_soft, cap = soft, nofile_plan(settings.max_connections, soft, soft, cached)[1]
    if cap == settings.max_connections:
        return settings
    configured = settings.max_connections
    event(log, "serve.max_connections.lowered", logging.WARNING, configured=configured,
          now=cap, nofile=new_soft)  # fmt: skip
    return dataclasses.replace(settings, max_connections=cap)


def install_signals(
    loop: asyncio.AbstractEventLoop,
    stop: asyncio.Event,
    reload: Callable[[], object] | None = None,
) -> None:
    """SIGTERM and SIGINT set `stop` (the caller drains); SIGHUP calls `reload`, or, for a
    process with nothing to reload, says so in one line: its default action would end the
    process on the spot, cutting every response in flight (a `systemctl reload` or a HUP
    sent to a whole process group does that)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload or _reload_unsupported)


def _reload_unsupported() -> None:
    event(log, "reload.unsupported", logging.WARNING,
          detail="reload not supported; restart to apply changes")  # fmt: skip


class _Ticker:
    """`tick` that outlives a failure: a full or vanished run folder must not end the
    worker (and every connection on it); logged once per failing spell."""

    def __init__(self, tick: Callable[[ServerStats], None]) -> None:
        self.tick = tick
        self.failing = False

    def __call__(self, stats: ServerStats) -> None:
        try:
            self.tick(stats)
        except OSError as exc:
            if not self.failing:
                event(log, "tick.failed", logging.WARNING, error=exc.strerror or str(exc))
            self.failing = True
        else:
            self.failing = False


def serve_forever(
    site: Site,
    settings: ServerSettings,
    sock: socket.socket,
    *,
    ready: Callable[[], None],
    stop_timeout_s: float = 10.0,
    tick: Callable[[ServerStats], None] | None = None,
    tick_s: float = 0.5,
    refresh: Callable[[], object] | None = None,
) -> None:
    settings = fit_connections(settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = FileServer(site, settings, refresh=refresh)
        stop = asyncio.Event()
        install_signals(loop, stop)
        server.serve(sock)
        ready()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick_s)
            if ticker is not None:
                ticker(server.stats)
        await server.stop(stop_timeout_s)
        if ticker is not None:
            ticker(server.stats)

    ticker = _Ticker(tick) if tick is not None else None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())

"""Run one FileServer process on uvloop until SIGTERM/SIGINT, then stop it gracefully.

Shared by `origin serve` and each `appliance run` worker; `tick` runs periodically (a worker
publishes its counters there) and once more after the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable

import uvloop

from edgeflix.http.server import FileServer, ServerSettings, Site
from edgeflix.http.stats import ServerStats


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
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = FileServer(site, settings, refresh=refresh)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server.serve(sock)
        ready()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick_s)
            if tick is not None:
                tick(server.stats)
        await server.stop(stop_timeout_s)
        if tick is not None:
            tick(server.stats)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())

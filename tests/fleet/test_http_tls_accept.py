"""fleet/http_protocol.py `TlsHandshake`: HTTPS accepted as plain TCP, the handshake run with
`loop.start_tls`, the connection counted against the cap from its accept, on a loop in this
process, asyncio's and uvloop's (they differ in what they hand up around the handshake)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.server import ServerState

from fleet.http import create_app, steering_protocol
from fleet.http_protocol import TlsHandshake
from fleet.tls import CA_CERT, CertAuthority, https_context
from tests.fleet.test_exhaustion_fixes_http import closed, response
from tests.fleet.test_http import ADMIN, service

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: f\r\n\r\n"


@contextlib.asynccontextmanager
async def serving(
    folder: Path, max_connections: int, handshake_s: float = 5
) -> AsyncIterator[tuple[int, ssl.SSLContext, ServerState]]:
    """The manager's HTTPS listener on a loopback port: (port, a client's context, state)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    authority = CertAuthority.load_or_create(folder)
    server_context = https_context(authority.server_identity(("127.0.0.1",)), folder)
    svc = service(folder)
    cls = steering_protocol(svc, max_connections=max_connections)
    config = uvicorn.Config(create_app(svc, ADMIN), http=cls, log_level="critical",
                            access_log=False, lifespan="off")  # fmt: skip
    config.load()
    state = ServerState()

    def accept() -> TlsHandshake:
        app = cls(config=config, server_state=state, app_state={})  # type: ignore[call-arg]
        return TlsHandshake(app, server_context, handshake_s)

    server = await loop.create_server(accept, "127.0.0.1", 0)
    client = ssl.create_default_context(cafile=str(folder / CA_CERT))
    try:
        yield server.sockets[0].getsockname()[1], client, state
    finally:
        for proto in list(state.connections):
            proto.shutdown()  # type: ignore[attr-defined]
        server.close()
        await asyncio.sleep(0.1)
    assert errors == [], errors


def run(loop: str, body: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(body())  # type: ignore[arg-type]


async def healthz(port: int, client: ssl.SSLContext) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    writer.write(HEALTHZ)  # right behind the handshake: it may come with the client's Finished
    try:
        return (await response(reader))[0]
    finally:
        writer.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_clients_are_answered_over_the_handshake_run_here(tmp_path: Path, loop: str) -> None:
    async def body() -> None:
        async with serving(tmp_path, max_connections=10) as (port, client, state):
            for _ in range(20):  # the hello and the request each arrive early or late
                assert await healthz(port, client) == 200
            await asyncio.sleep(0.1)
            assert not state.connections

    run(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_handshakes_count_against_the_cap_and_the_oldest_yields(tmp_path: Path, loop: str) -> None:
    async def body() -> None:
        async with serving(tmp_path, max_connections=3) as (port, client, state):
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
            await asyncio.sleep(0.2)
            assert len(state.connections) <= 3
            # The two oldest made room for the three after them, and those for a player.
            assert [await closed(reader, 0.5) for reader, _ in silent[:2]] == [True, True]
            assert await healthz(port, client) == 200
            assert await closed(silent[2][0], 0.5)
            assert not any([await closed(reader, 0.1) for reader, _ in silent[3:]])
            for _, writer in silent:
                writer.close()
            await asyncio.sleep(0.2)
            assert not state.connections  # the failed handshakes are uncounted too

    run(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_handshake_that_times_out_is_uncounted(tmp_path: Path, loop: str) -> None:
    async def body() -> None:
        async with serving(tmp_path, max_connections=3, handshake_s=0.3) as (port, _, state):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.1)
            assert len(state.connections) == 1
            assert await closed(reader, 2)
            await asyncio.sleep(0.1)
            assert not state.connections
            writer.close()

    run(loop, body)

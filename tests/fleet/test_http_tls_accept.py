"""fleet/http_protocol.py `TlsHandshake`: HTTPS accepted as plain TCP, the handshake run with
`loop.start_tls`, the connection counted against the cap from its accept, on a loop in this
process, asyncio's and uvloop's (they differ in what they hand up around the handshake).
At the cap, a newcomer closes one connection for its room, not two; with no room, it is still
answered 503 (a bounded number at once); an idle connection does not hold a shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.server import ServerState

from fleet import http_protocol
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
# A request in flight: its body owed (admin access is loopback's, the body is read first).
POSTING = (
    b"POST /join-tokens HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{"
)
AT_LIMIT = b'{"error":"the fleet manager is at its connection limit: retry shortly"}'
OK = b'{"status":"ok"}'
Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


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


async def opened(port: int, client: ssl.SSLContext, request: bytes) -> Client:
    """A TLS connection that sent `request`: answered (an idle keep-alive one) unless it is
    POSTING (in flight)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    writer.write(request)
    if request != POSTING:
        assert (await response(reader))[0] == 200
    await asyncio.sleep(0.05)
    return reader, writer


async def closed_count(clients: list[Client]) -> int:
    await asyncio.sleep(0.2)
    return sum([await closed(reader, 0.05) for reader, _ in clients])


async def unresponsive(port: int, client: ssl.SSLContext) -> ssl.SSLSocket:
    """An idle keep-alive connection whose client reads nothing more, so never answers the
    server's close_notify: a TLS close of it lingers (as the review's clients' did)."""

    def connect() -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        tls = client.wrap_socket(sock, server_hostname="127.0.0.1")
        tls.sendall(HEALTHZ)
        assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")
        return tls

    return await asyncio.to_thread(connect)


async def evicted(socks: list[ssl.SSLSocket]) -> int:
    """How many of `socks` the server has closed (its close_notify or EOF waits unread)."""
    await asyncio.sleep(0.2)
    return len(select.select(socks, [], [], 0)[0])


async def answer(port: int, client: ssl.SSLContext) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    writer.write(HEALTHZ)
    try:
        return await response(reader)
    finally:
        writer.close()


def hang_up(clients: list[Client]) -> None:
    for _, writer in clients:
        writer.transport.abort()  # no close_notify to wait for: this loop's test is done


@pytest.mark.parametrize("loop", LOOPS)
def test_a_newcomer_at_the_cap_closes_one_idle_connection(tmp_path: Path, loop: str) -> None:
    """Given its room at its accept, a newcomer was checked again once its handshake was
    done, and the connection closed for it still counted (its TLS close awaited the client's
    close_notify, 30 s): it closed a second one. One newcomer at a full cap, one closed."""

    async def body() -> None:
        async with serving(tmp_path, max_connections=4) as (port, client, _):
            idle = [await unresponsive(port, client) for _ in range(4)]
            assert await evicted(idle) == 0
            for n in (1, 2):
                assert await answer(port, client) == (200, OK)
                assert await evicted(idle) == n
                # The one closed for it is aborted unanswered in 0.2 s (its descriptor back,
                # not in 30 s) and the newcomer has gone: the cap is filled again.
                await asyncio.sleep(0.5)
                idle.append(await unresponsive(port, client))
                assert await evicted(idle) == n
            for sock in idle:
                sock.close()

    run(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_newcomer_that_made_room_is_served(tmp_path: Path, loop: str) -> None:
    """One idle connection and the rest in flight: the newcomer closed the idle one for its
    room at its accept, then, checked again, was answered 503 for want of room."""

    async def body() -> None:
        async with serving(tmp_path, max_connections=3) as (port, client, _):
            idle = [await unresponsive(port, client)]
            posting = [await opened(port, client, POSTING) for _ in range(2)]
            assert await answer(port, client) == (200, OK)
            assert await evicted(idle) == 1
            assert await closed_count(posting) == 0
            idle[0].close()
            hang_up(posting)

    run(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_https_newcomers_with_every_slot_busy_hear_503(
    tmp_path: Path, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection in flight: a newcomer finishes its handshake and hears why it is
    refused, as over plain HTTP (it was reset, said nothing). At most MAX_TLS_REFUSALS do at
    once; those beyond are aborted, and the busy ones are never closed for them."""
    monkeypatch.setattr(http_protocol, "MAX_TLS_REFUSALS", 2, raising=False)

    async def body() -> None:
        async with serving(tmp_path, max_connections=2) as (port, client, state):
            posting = [await opened(port, client, POSTING) for _ in range(2)]
            for _ in range(3):
                assert await answer(port, client) == (503, AT_LIMIT)
            # Two silent ones in their handshake are the refusals at once: a third is cut.
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.1)
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await answer(port, client)
            assert len(state.connections) == 4
            hang_up(silent)
            await asyncio.sleep(0.1)
            assert await answer(port, client) == (503, AT_LIMIT)
            assert await closed_count(posting) == 0
            hang_up(posting)

    run(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_refused_newcomer_is_served_if_room_came_during_its_handshake(
    tmp_path: Path, loop: str
) -> None:
    async def body() -> None:
        async with serving(tmp_path, max_connections=1) as (port, client, state):
            posting = await opened(port, client, POSTING)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.1)  # accepted past the cap: a refusal, in its handshake
            hang_up([posting])  # and now there is room
            await asyncio.sleep(0.1)
            assert len(state.connections) == 1
            await writer.start_tls(client, server_hostname="127.0.0.1")
            writer.write(HEALTHZ)
            assert await response(reader) == (200, OK)
            hang_up([(reader, writer)])

    run(loop, body)


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_connections_do_not_hold_a_shutdown(tmp_path: Path, loop: str) -> None:
    """uvicorn's shutdown closes idle connections and waits for them to go: a TLS close
    awaits the client's close_notify, which an idle client never sends (30 s)."""

    async def body() -> None:
        async with serving(tmp_path, max_connections=10) as (port, client, state):
            idle = [await unresponsive(port, client) for _ in range(3)]
            await asyncio.sleep(0.1)
            assert len(state.connections) == 3
            for proto in list(state.connections):
                proto.shutdown()  # type: ignore[attr-defined]
            async with asyncio.timeout(2):
                while state.connections:
                    await asyncio.sleep(0.05)
            for sock in idle:
                sock.close()

    run(loop, body)

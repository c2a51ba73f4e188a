"""`GET /steer` answered inline by SteeringHttpProtocol (fleet/http.py), over real loopback
sockets with the protocol served by an asyncio loop in this process, so the test can look
at what the connection holds: a closed connection leaves no error behind, and a client
that pipelines and never reads cannot make the manager buffer answers without bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from fleet.http import SteeringHttpProtocol, create_app, steering_protocol
from fleet.service import FleetService
from tests.fleet.test_http import ADMIN, service

STEER = b"GET /steer?client_ip=192.168.1.7&title=film HTTP/1.1\r\nHost: f\r\n\r\n"


class Serving:
    def __init__(self, port: int, state: ServerState, errors: list[dict[str, Any]]) -> None:
        self.port = port
        self.state = state
        self.errors = errors

    def protocol(self) -> SteeringHttpProtocol:
        (proto,) = self.state.connections
        assert isinstance(proto, SteeringHttpProtocol)
        return proto


@contextlib.asynccontextmanager
async def serving(svc: FleetService) -> AsyncIterator[Serving]:
    """The manager's HTTP protocol on a loopback port; what the loop's exception handler
    saw (errors raised in protocol callbacks) in `errors`."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    config = uvicorn.Config(create_app(svc, ADMIN), http=steering_protocol(svc),
                            log_level="warning", access_log=False, lifespan="off")  # fmt: skip
    config.load()
    state = ServerState()
    cls = config.http_protocol_class
    server = await loop.create_server(
        lambda: cls(config=config, server_state=state, app_state={}),  # type: ignore[call-arg]
        "127.0.0.1",
        0,
    )
    try:
        yield Serving(server.sockets[0].getsockname()[1], state, errors)
    finally:
        for proto in list(state.connections):
            proto.shutdown()
        server.close()
        await server.wait_closed()


async def until(cond: Any, what: str, rounds: int = 3000) -> None:
    """Let the loop run until `cond()` holds (bounded in rounds, not a timing assertion)."""
    for _ in range(rounds):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


def read_response(f: Any) -> tuple[int, bytes]:
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline().rstrip(b"\r\n")) != b"":
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, f.read(length)


def test_a_connection_closed_after_an_inline_answer_leaves_no_error(tmp_path: Path) -> None:
    """uvicorn's connection_lost wakes the request cycle's event: the stand-in an inline
    answer leaves must have one, or every player's closed connection logged a traceback."""
    svc = service(tmp_path)

    async def main() -> None:
        async with serving(svc) as srv:
            for request in (STEER, STEER.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")):
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                writer.write(request)
                assert (await reader.readline()).startswith(b"HTTP/1.1 200")
                writer.close()
                await until(lambda: not srv.state.connections, "connection gone")
            assert srv.errors == [], srv.errors

    asyncio.run(main())


def test_a_client_that_pipelines_and_never_reads_is_held_back(tmp_path: Path) -> None:
    """Inline answers honour the connection's flow control as uvicorn's own cycle does:
    once the client stops reading, the manager stops answering (requests queue as behind
    any request in flight) rather than buffering an answer per request without bound.
    Every request is still answered, in order, once the client reads."""
    svc = service(tmp_path)
    count = 30_000  # ~15 MB of answers: far past what loopback's socket buffers take

    async def main() -> None:
        async with serving(svc) as srv:
            client = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            sender = threading.Thread(target=client.sendall, args=(STEER * count,), daemon=True)
            sender.start()
            await until(lambda: len(srv.state.connections) == 1, "connection seen")
            proto = srv.protocol()
            raw = proto.transport._transport  # type: ignore[attr-defined]
            biggest = 0

            def held_back() -> bool:
                nonlocal biggest
                biggest = max(biggest, raw.get_write_buffer_size())
                assert biggest < 4 << 20, f"{biggest} bytes of answers buffered"
                # Waiting for the client: answers queue (uvicorn's pipeline) behind one
                # that waits for the client to read.
                return proto.flow.write_paused and bool(proto.pipeline or proto.flow.read_paused)

            await until(held_back, "answers held back for a client that does not read")
            f = client.makefile("rb")
            answers = await asyncio.get_running_loop().run_in_executor(
                None, lambda: [read_response(f) for _ in range(count)]
            )
            sender.join(60)
            assert not sender.is_alive()
            assert {status for status, _ in answers} == {200}
            assert all(json.loads(body)["title"] == "film" for _, body in answers[:: count // 7])
            client.close()
            await until(lambda: not srv.state.connections, "connection gone")
            assert srv.errors == [], srv.errors

    asyncio.run(main())

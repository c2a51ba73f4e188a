"""What one client may make the fleet manager hold or do (fleet/http.py, fleet/steering.py):
a bounded request head (414/431), a head timeout, a connection cap that closes idle
connections first, and a `/steer` answer that names no appliance it does not offer.

The protocol tests serve SteeringHttpProtocol from an asyncio loop in this process over
real loopback sockets, with a short head timeout so they need not wait the default's 10 s
(tests/integration/test_exhaustion_fixes_fleet_http.py runs the real `fleet serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.server import ServerState

from edgeflix.proto import auth
from fleet import steering
from fleet.http import SteeringHttpProtocol, create_app, steering_protocol
from fleet.model import SERVING_STATES, Appliance, FleetSnapshot, HeldTitle, Site
from fleet.service import FleetService
from fleet.steering import SteeringPolicy, exclusion_reason, may_serve, steer
from tests.fleet.test_http import ADMIN, get, service

STEER = b"GET /steer?client_ip=192.168.1.7&title=film HTTP/1.1\r\nHost: f\r\n\r\n"
TIMEOUT_S = 0.4  # the head timeout of the protocol under test

# -- `excluded`: only for an admin's probe, and not even made otherwise ------------------------


def silent_boxes(svc: FleetService, count: int) -> None:
    """Enrolled appliances that never beat: left out of every answer."""
    for i in range(count):
        key = auth.public_key(auth.new_private_key())
        svc.enrol("", f"quiet{i}", f"http://quiet{i}:8081", key)


def test_a_player_s_answer_names_no_appliance_it_does_not_offer(tmp_path: Path) -> None:
    svc = service(tmp_path)
    silent_boxes(svc, 40)
    _, _, body = get(svc, "/steer?client_ip=192.168.1.7&title=film", client="203.0.113.9")
    out = json.loads(body)
    assert "excluded" not in out and b"quiet" not in body
    assert sorted(c["name"] for c in out["candidates"])[:2] == ["h1", "h2"]
    # A probe is no way around it: the list is for who may read GET /appliances.
    probe = "/steer?client_ip=192.168.1.7&title=film&probe=1"
    _, _, body = get(svc, probe, client="203.0.113.9")
    assert "excluded" not in json.loads(body) and b"quiet" not in body


def test_an_admin_s_probe_still_explains_who_was_left_out(tmp_path: Path) -> None:
    """What `edgeflix fleet steer` shows ("left out: …") and prints with --json."""
    svc = service(tmp_path)
    silent_boxes(svc, 3)
    probe = "/steer?client_ip=192.168.1.7&title=film&probe=1"
    bearer = ((b"authorization", b"Bearer " + ADMIN.token),)
    for client, headers in (("127.0.0.1", ()), ("203.0.113.9", bearer)):
        _, _, body = get(svc, probe, client=client, headers=headers)
        out = json.loads(body)
        assert out["urls"] and sorted(out["excluded"]) == [
            f"quiet{i}: unreachable" for i in range(3)
        ], out


def test_steering_makes_no_reason_unless_one_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The player's path: no "name: reason" per ineligible appliance (thousands of them)."""
    calls: list[str] = []

    def counted(a: Appliance, *args: Any) -> str | None:
        calls.append(a.name)
        return exclusion_reason(a, *args)

    monkeypatch.setattr(steering, "exclusion_reason", counted)
    home = Site.build("home", ["10.0.0.0/8"])
    boxes = tuple(
        Appliance(f"b{i}", "home", f"http://b{i}", titles={f"t{i % 5}": HeldTitle("d")})
        for i in range(50)
    )
    decision = steer(FleetSnapshot(sites=(home,), appliances=boxes), "10.0.0.1", "t1")
    assert len(decision.candidates) == 3 and calls == []
    assert len(decision.excluded) == 40 and len(calls) == 50  # worked out when read
    assert "b0: title not held" in decision.excluded


@given(
    state=st.sampled_from(["ok", "degraded", "failing", "drained", "unreachable", "new"]),
    keys=st.integers(0, 3),
    held=st.sampled_from(["none", "partial", "complete"]),
    capacity=st.sampled_from([0.0, 1e9, math.inf]),
    load=st.sampled_from([0.0, 5e8, 8.99e8, 9e8, 2e9, math.inf]),
    min_keys=st.integers(0, 3),
)
def test_may_serve_is_exclusion_reason_without_words(
    state: str, keys: int, held: str, capacity: float, load: float, min_keys: int
) -> None:
    titles = {} if held == "none" else {"t": HeldTitle("d", complete=held == "complete")}
    box = Appliance("b", "home", "http://b", capacity_bps=capacity, load_bps=load)
    box = replace(box, state=state, keys_version=keys, titles=titles)  # type: ignore[arg-type]
    policy = SteeringPolicy()
    assert may_serve(box, "t", policy, min_keys) == (
        exclusion_reason(box, "t", policy, min_keys) is None
    )
    assert state in SERVING_STATES or not may_serve(box, "t", policy, min_keys)


# -- the HTTP protocol's bounds, on a loop in this process -----------------------------------


@contextlib.asynccontextmanager
async def serving(svc: FleetService, max_connections: int = 100) -> AsyncIterator[int]:
    """The manager's HTTP protocol, head timeout TIMEOUT_S, on a loopback port."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    bound = steering_protocol(svc, max_connections=max_connections)
    cls = type("Short", (bound,), {"header_timeout_s": TIMEOUT_S})
    config = uvicorn.Config(create_app(svc, ADMIN), http=cls, log_level="critical",
                            access_log=False, lifespan="off")  # fmt: skip
    config.load()
    state = ServerState()
    server = await loop.create_server(
        lambda: cls(config=config, server_state=state, app_state={}),  # type: ignore[call-arg]
        "127.0.0.1",
        0,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for proto in list(state.connections):
            assert isinstance(proto, SteeringHttpProtocol)
            proto.shutdown()
        server.close()
        await server.wait_closed()
    assert errors == [], errors


async def response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response: (status, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(v) for n, _, v in (ln.partition(": ") for ln in lines) if n == "content-length"
    )
    return int(lines[0].split()[1]), await asyncio.wait_for(reader.readexactly(length), 5)


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within `within` seconds (what it sends
    before is dropped)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def run(svc: FleetService, body: Callable[[int], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with serving(svc, **kw) as port:
            await body(port)

    asyncio.run(main())


async def steer_ok(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(STEER)
    assert (await response(reader))[0] == 200
    writer.close()


@pytest.mark.parametrize(
    ("start", "pad", "status"),
    [
        (b"GET /steer?client_ip=192.168.1.7&title=film&x=", b"a" * 4096, 414),
        (b"GET /healthz HTTP/1.1\r\nHost: f\r\nX-Pad: ", b"a" * 4096, 431),
        (b"GET /healthz HTTP/1.1\r\nHost: f\r\n", b"X-A: b\r\n" * 16, 431),
        (b"GET /healthz HTTP/1.1\r\n", b"X-" + b"a" * 4000 + b": b\r\n", 431),
    ],
)
def test_a_head_past_16_kib_is_refused_and_the_connection_closed(
    tmp_path: Path, start: bytes, pad: bytes, status: int
) -> None:
    """As the appliance and origin refuse one (edgeflix/http): uvicorn kept every byte of
    it, growing the URL by copying it for each read."""

    async def body(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(start)
        with contextlib.suppress(ConnectionError):
            for _ in range(64):  # 256 KiB at most: the refusal comes at 16
                writer.write(pad)
                await writer.drain()
        got, answer = await response(reader)
        assert got == status, answer
        assert await closed(reader, 5)
        await steer_ok(port)

    run(service(tmp_path), body)


def test_more_than_100_header_fields_are_refused(tmp_path: Path) -> None:
    async def body(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: f\r\n" + b"X-A: b\r\n" * 100 + b"\r\n")
        status, answer = await response(reader)
        assert status == 431 and b"100 header fields" in answer
        assert await closed(reader, 5)

    run(service(tmp_path), body)


def test_heads_within_the_limits_are_answered_however_they_arrive(tmp_path: Path) -> None:
    """A 15 KiB head, and 4,000 pipelined requests (~250 KiB, many heads per read) sent
    at once: each head is counted on its own."""

    async def body(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        big = STEER.replace(b"Host: f\r\n", b"Host: f\r\nX-Pad: " + b"a" * 15_000 + b"\r\n")
        writer.write(big + b"GET /healthz HTTP/1.1\r\nHost: f\r\n" + b"X-A: b\r\n" * 99 + b"\r\n")
        assert [(await response(reader))[0] for _ in range(2)] == [200, 200]
        writer.write(STEER * 4000)
        statuses = {(await response(reader))[0] for _ in range(4000)}
        assert statuses == {200}
        writer.close()

    run(service(tmp_path), body)


def test_silent_and_slow_heads_are_closed_after_the_head_timeout(tmp_path: Path) -> None:
    """A connection that sends nothing, one that sends a header line now and then
    (slowloris), and one that starts its next request after an answer and stalls: each
    is closed once its head is TIMEOUT_S late, not before."""

    async def body(port: int) -> None:
        silent = await asyncio.open_connection("127.0.0.1", port)
        slow = await asyncio.open_connection("127.0.0.1", port)
        again = await asyncio.open_connection("127.0.0.1", port)
        slow[1].write(b"GET /steer?client_ip=192.168.1.7&title=film HTTP/1.1\r\n")
        again[1].write(STEER)
        assert (await response(again[0]))[0] == 200
        again[1].write(b"GET /healthz HTTP/1.1\r\n")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(int(4 * TIMEOUT_S / 0.05)):
                    slow[1].write(b"X-A: b\r\n")
                    await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        assert not await closed(silent[0], TIMEOUT_S / 2)
        results = await asyncio.gather(
            *(closed(r, 3 * TIMEOUT_S) for r, _ in (silent, slow, again))
        )
        assert results == [True, True, True]
        trickling.cancel()

    run(service(tmp_path), body)


def test_a_busy_keep_alive_connection_is_not_timed_out(tmp_path: Path) -> None:
    """The head timeout runs only while a head is owed: a player asking again and again on
    one connection, for longer than the timeout, is answered every time."""

    async def body(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        until = loop.time() + 4 * TIMEOUT_S
        count = 0
        while loop.time() < until:
            writer.write(STEER[:20])  # a head in two parts, the second soon after
            await asyncio.sleep(0.01)
            writer.write(STEER[20:])
            assert (await response(reader))[0] == 200
            count += 1
            await asyncio.sleep(TIMEOUT_S / 4)
        assert count >= 10
        writer.close()

    run(service(tmp_path), body)


def test_a_newcomer_at_the_cap_closes_the_longest_idle_then_the_longest_owing(
    tmp_path: Path,
) -> None:
    """At the cap (what the descriptor limit fits) a newcomer is served: a crowd of silent
    connections cannot keep players from /steer, as it did until each timed out."""

    async def body(port: int) -> None:
        first = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.open_connection("127.0.0.1", port)
        for reader, writer in (first, second):
            writer.write(STEER)
            assert (await response(reader))[0] == 200
        third = await asyncio.open_connection("127.0.0.1", port)
        assert await closed(first[0], 2)  # idle longest: closed to make room
        third[1].write(STEER)
        assert (await response(third[0]))[0] == 200
        second[1].write(STEER)  # still served
        assert (await response(second[0]))[0] == 200
        # Both owe a head now, none is idle: the one owing longest makes room.
        for _, writer in (second, third):
            writer.write(b"GET /steer")
            await asyncio.sleep(0.05)
        fourth = await asyncio.open_connection("127.0.0.1", port)
        assert await closed(second[0], 2)
        fourth[1].write(STEER)
        assert (await response(fourth[0]))[0] == 200
        assert not await closed(third[0], TIMEOUT_S / 4)

    run(service(tmp_path), body, max_connections=2)


def test_a_newcomer_gets_503_when_every_connection_has_a_request_in_flight(
    tmp_path: Path,
) -> None:
    held = (
        b"POST /join-tokens HTTP/1.1\r\nHost: f\r\ncontent-type: application/json\r\n"
        b"content-length: 100\r\n\r\n"  # the handler waits for the body
    )

    async def body(port: int) -> None:
        busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in busy:
            writer.write(held)
        await asyncio.sleep(0.1)
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        status, answer = await response(reader)
        assert status == 503 and b"connection limit" in answer
        assert await closed(reader, 2)

    run(service(tmp_path), body, max_connections=2)

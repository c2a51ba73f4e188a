"""The fleet's public HTTP port as a transport: uvicorn's httptools protocol, with a response's
head and body leaving in one send (_CoalescingTransport), and every connection bounded as the
appliance and the origin bound theirs (edgeflix/http, same defaults): head size, head time,
number of connections (BoundedHttpToolsProtocol), counted from the accept with HTTPS too
(TlsHandshake). fleet/http.py builds the steering protocol on it; fleet/server.py listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edgeflix.http.connection import LINGER_S
from edgeflix.http.request import MAX_HEADER_COUNT, MAX_TARGET_BYTES
from edgeflix.http.server import ServerSettings

LIMITS = ServerSettings()  # the appliance's and origin's defaults: the same threats
# How many HTTPS connections past the cap may finish their handshake at once to hear the 503
# (the handshake timeout bounds each): a few descriptors past the cap, well within what
# edgeflix.http.runner leaves (FD_RESERVE, and two a connection where this uses one), never
# a flood's worth. Those beyond are aborted unanswered.
MAX_TLS_REFUSALS = 16
# How long an idle TLS connection closed at shutdown may wait for the client's close_notify
# (the TLS layer waits 30 s): a plain one is gone at once.
SHUTDOWN_TLS_CLOSE_S = 0.2
encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class _CoalescingTransport:
    """A transport whose writes made in one loop step leave in one send: uvicorn writes a
    response's head and body separately, and on loopback each send costs a delivery and a
    wake-up of the reader, worth more than the whole /steer decision."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)

    def get_write_buffer_size(self) -> int:
        # What is not yet sent includes what waits here for the flush.
        return self._pending_bytes + self._transport.get_write_buffer_size()

    def _flush(self) -> None:
        if self._pending:
            data, self._pending, self._pending_bytes = b"".join(self._pending), [], 0
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()  # a close after a write (Connection: close) must still send it
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a _CoalescingTransport (`uvicorn.Config(http=…)`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]


class _HeadRefused(Exception):
    """Raised in a parser callback to stop parsing a head we refuse (`send_400_response`)."""


class BoundedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """What one client may make the manager hold, bounded as the appliance and the origin
    bound it (edgeflix/http, same defaults), since uvicorn bounds none of it: `/steer` is
    public, and this loop also serves every appliance's gRPC.

    - A request head of at most `max_header_bytes` and MAX_HEADER_COUNT fields, else 414
      (the target) or 431, then close: uvicorn keeps every header, and grows the URL a
      chunk at a time (quadratic in its length).
    - A head finished within `header_timeout_s` of the connection opening or of bytes
      arriving with no request in flight, else the connection closes: silent and slowloris
      connections held descriptors for good. Idle after an answer, uvicorn's keep-alive
      timer applies.
    - At most `max_connections` connections: a newcomer at the cap closes the one idle
      longest (answered, nothing since), else the one that has owed a head longest (a
      player's head takes a round trip: a crowd of silent connections yields first), and
      is answered 503 when every other has a request in flight. With HTTPS, a connection
      counts from its accept, owing its head while its handshake runs (TlsHandshake); one
      with no room at its accept finishes its handshake to hear the 503 (MAX_TLS_REFUSALS
      at once, the rest aborted), without a place of its own meanwhile.
    """

    header_timeout_s: float = LIMITS.header_timeout_s
    max_header_bytes: int = LIMITS.max_header_bytes
    max_connections: int = LIMITS.max_connections
    # The server's idle connections, longest idle first, and those owing a head, longest
    # owing first: one of each per bound class, as a class is bound per server
    # (`steering_protocol`).
    idle: ClassVar[OrderedDict[BoundedHttpToolsProtocol, None]] = OrderedDict()
    owing: ClassVar[OrderedDict[BoundedHttpToolsProtocol, None]] = OrderedDict()
    # TLS connections accepted past the cap, from their accept until they are gone (or find
    # room when their handshake is done): among `connections` (descriptors), but taking no
    # place under the cap. One per class (__init_subclass__), as `idle` and `owing`.
    refusing: ClassVar[set[BoundedHttpToolsProtocol]] = set()
    # Set while `transport` is the raw TCP one of a TLS handshake in progress (tls_accepted).
    _handshaking = False
    # Set once tls_accepted gave the connection its place: connection_made keeps it.
    _admitted = False
    _tls = False  # set once the HTTP protocol has a TLS transport
    _abort_timer: asyncio.TimerHandle | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "refusing" not in cls.__dict__:
            cls.refusing = set()

    def tls_accepted(self, raw: asyncio.Transport) -> bool:
        """A TLS connection accepted, its handshake about to run (TlsHandshake): counted
        against the cap from now on, as owing its head, and closed over `raw` if a newcomer
        needs its room; connection_made keeps its place. At the cap with every other
        connection busy, it is one of the `refusing` (its handshake done, connection_made
        answers 503 unless room came meanwhile), or past MAX_TLS_REFUSALS of those, `raw`
        is aborted and False returned: nothing can be said before the handshake."""
        self.transport, self._handshaking = raw, True
        self.connections.add(self)
        if not self._over_cap() or self._make_room():
            self._admitted = True
            self.owing[self] = None
            return True
        if len(self.refusing) < MAX_TLS_REFUSALS:
            self.refusing.add(self)
            return True
        self.tls_failed()
        raw.abort()
        return False

    def tls_failed(self) -> None:
        """The handshake of a `tls_accepted` connection failed (or it was closed meanwhile):
        connection_made and connection_lost will never come, so it is uncounted here."""
        self.connections.discard(self)
        self.owing.pop(self, None)
        self.refusing.discard(self)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._handshaking = False
        self._tls = transport.get_extra_info("ssl_object") is not None
        self._in_head = True  # reading a request head (or waiting for one)
        self._head_bytes = 0
        self._refusal: tuple[int, str] | None = None
        self._refused = False
        # Since when the client owes us the rest of a head; None while it owes nothing.
        # Checked by one timer per connection, not one armed per request: /steer is hot.
        # (The handshake has its own timeout: the head's time starts after it.)
        self._waiting_since: float | None = self.loop.time()
        self.owing[self] = None
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._check_head)
        # A TLS connection given its place at its accept keeps it: checked again, it would
        # close a second connection for its room, or be refused, as the one closed for it
        # is still among `connections` (its TLS close awaits the client's close_notify).
        if not self._admitted and self._over_cap() and not self._make_room():
            self._refuse(503, "the fleet manager is at its connection limit: retry shortly")
        else:
            self.refusing.discard(self)  # room came during its handshake

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._forget()  # the connection is the websocket protocol's from here on
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        """The server's shutdown: as uvicorn's, but a TLS connection it closes (an idle one)
        is aborted if its client has not answered our close_notify shortly: an idle client
        does not, and the TLS layer would hold the shutdown 30 s (all of its grace)."""
        if not self._tls:
            super().shutdown()
            return
        if not self.transport.is_closing():  # asyncio's TLS transport closed twice cannot abort
            super().shutdown()
        if self.transport.is_closing():
            self._abort_later(SHUTDOWN_TLS_CLOSE_S)

    def _abort_later(self, delay_s: float) -> None:
        """Abort the (closing) transport in `delay_s` unless the connection is gone by then."""
        if self._abort_timer is None:
            self._abort_timer = self.loop.call_later(delay_s, self.transport.abort)

    def _forget(self) -> None:
        self.idle.pop(self, None)
        self.owing.pop(self, None)
        self.refusing.discard(self)
        self._head_timer.cancel()
        if self._abort_timer is not None:
            self._abort_timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: what comes is read and dropped
        self.idle.pop(self, None)
        if self._waiting_since is None and (self.cycle is None or self.cycle.response_complete):
            self._waiting_since = self.loop.time()
            self.owing[self] = None
        # Fed in pieces that end where the head in progress would pass its limit: one still
        # unfinished there is refused. (A head that begins in a piece after a request ended
        # counts from the next piece on: at most one piece more.)
        while self._in_head and len(data) > (room := self.max_header_bytes - self._head_bytes):
            if room > 0:
                self._head_bytes += room
                super().data_received(data[:room])
                data = data[room:]
                if self._refused or self.transport.is_closing():
                    return
                if not self._in_head or self._head_bytes < self.max_header_bytes:
                    continue  # the head ended in this piece
            self._refuse_head()
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)

    def on_message_complete(self) -> None:
        self._in_head = True  # what comes next is the next request's head
        self._head_bytes = 0
        super().on_message_complete()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_HEADER_COUNT:
            self._refusal = (431, f"more than {MAX_HEADER_COUNT} header fields")
            raise _HeadRefused  # stops the parser; uvicorn then calls send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._waiting_since = None
        self.owing.pop(self, None)
        self.on_request_head()

    def on_request_head(self) -> None:
        """A head within the limits, complete: uvicorn's request cycle takes it."""
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle: answered, nothing pipelined
            self.idle[self] = None
            self.idle.move_to_end(self)

    def _refuse_head(self) -> None:
        """414 when the target alone outgrew the limit (nginx's and the appliance's choice)."""
        if len(getattr(self, "url", b"")) > MAX_TARGET_BYTES:
            self._refuse(414, "request target too long")
        else:
            self._refuse(431, "request header fields too large")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` and close, dropping whatever else the client sends meanwhile."""
        self._refused = True
        self._waiting_since = None
        self.owing.pop(self, None)
        if self.cycle is not None and not self.cycle.response_complete:
            # A request in flight answers first, and alone: the connection closes after it.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.write_json(status, encode_json({"error": message}).encode(), close=True)
        if status == 503:
            self.transport.close()  # at the connection cap: the descriptor back at once
            if self in self.refusing:  # a TLS one, past the cap: not 30 s of close_notify
                self._abort_later(LINGER_S)
            return
        # Half-close, then drop input until the client closes (or LINGER_S): closing with
        # its request unread would reset the connection and could destroy the answer.
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def write_json(self, status: int, body: bytes, close: bool) -> None:
        out = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            out += [name, b": ", value, b"\r\n"]
        out += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode()]
        out += [b"\r\nconnection: close\r\n\r\n" if close else b"\r\n\r\n", body]
        self.transport.write(b"".join(out))

    def _check_head(self) -> None:
        """The connection's timer: close it once the client owed a head for too long."""
        since, now = self._waiting_since, self.loop.time()
        if since is not None and now - since >= self.header_timeout_s:
            self.transport.close()
            return
        wait = self.header_timeout_s if since is None else since + self.header_timeout_s - now
        self._head_timer = self.loop.call_later(wait, self._check_head)

    def _over_cap(self) -> bool:
        """Whether this connection takes the server past its cap, counting every connection
        but the `refusing` (this one aside): they are bounded apart, and brief."""
        others_refusing = len(self.refusing) - (self in self.refusing)
        return len(self.connections) - others_refusing > self.max_connections

    def _make_room(self) -> bool:
        """Close the connection idle longest, else the one owing a head longest (never
        this newcomer), for a newcomer at the cap."""
        for waiting in (self.idle, self.owing):
            for other in waiting:
                if other is not self and not other.transport.is_closing():
                    waiting.pop(other)
                    if other._handshaking:
                        other.transport.abort()  # nothing said yet that a close would flush
                    else:
                        other.transport.close()
                        if other._tls:  # its close_notify unanswered, it holds a descriptor
                            other._abort_later(SHUTDOWN_TLS_CLOSE_S)
                    return True
        return False


class TlsHandshake(asyncio.Protocol):
    """A connection of the HTTPS listener from its accept: the listener accepts plain TCP
    and the handshake runs here (`loop.start_tls`), the HTTP protocol (`app`) given the TLS
    transport once it is done. A listener made with `ssl=` makes its protocol only after the
    handshake, so the cap never counted connections in one: 420 silent connects held every
    descriptor of a manager at `ulimit -n 400` until their handshake timed out. Here each
    counts from its accept (`BoundedHttpToolsProtocol.tls_accepted`).

    Until `app` takes over, what the TLS layer hands up is kept for it, in order: asyncio's
    passes the first data on as the handshake ends, before start_tls returns."""

    def __init__(
        self, app: BoundedHttpToolsProtocol, context: ssl.SSLContext, timeout_s: float
    ) -> None:
        self.app = app
        self._context = context
        self._timeout_s = timeout_s
        self._raw: asyncio.Transport | None = None
        self._hello: list[bytes] = []  # read off the raw transport before start_tls took it
        self._early: list[Callable[[], object]] | None = []  # None once `app` has taken over
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = raw = cast(asyncio.Transport, transport)
        # The hello waits for start_tls (uvloop starts reading after this returns, though:
        # what it reads meanwhile is kept in _hello).
        raw.pause_reading()
        if self.app.tls_accepted(raw):
            self._task = asyncio.get_running_loop().create_task(self._handshake(raw))

    async def _handshake(self, raw: asyncio.Transport) -> None:
        tls: asyncio.Transport | None = None
        if not raw.is_closing():  # else closed for room, or reset, before this step
            loop = asyncio.get_running_loop()
            # A TLS close waits for the client's close_notify: 30 s by default, a descriptor
            # and a place under the cap held that long by every client that goes quiet (the
            # keep-alive and head timeouts close them): ~cap of them locked players out.
            start: Awaitable[asyncio.Transport | None] = loop.start_tls(
                raw,
                self,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._timeout_s,
                ssl_shutdown_timeout=LINGER_S,
            )
            if self._hello:
                start = asyncio.ensure_future(start)
                await asyncio.sleep(0)  # start_tls has taken `raw`, its connection_made queued
                loop.call_soon(_hand_on, raw, b"".join(self._hello))  # next after it
            # A client's failure (ssl.SSLError, a reset, the timeout's ConnectionAbortedError)
            # is its own: dropped unsaid, as a listener made with `ssl=` drops it. Anything
            # else the loop raises (a RuntimeError on a transport closed meanwhile) ends the
            # same way: a connection left counted would hold its place under the cap.
            with contextlib.suppress(Exception):
                tls = await start
        # A connection closed in its handshake (for room, say) may still "complete" it: with
        # no transport (asyncio's), or a closed one (uvloop's).
        if tls is None or tls.is_closing():
            self.app.tls_failed()
            raw.abort()
            return
        tls.set_protocol(self.app)
        self.app.connection_made(tls)
        early, self._early = self._early or [], None
        for call in early:
            call()

    def _raw_phase(self) -> bool:
        """Whether a call comes from the raw transport (not yet start_tls's)."""
        return self._raw is not None and self._raw.get_protocol() is self

    def _hand_up(self, call: Callable[[], object]) -> None:
        if self._early is None:
            call()
        else:
            self._early.append(call)

    def data_received(self, data: bytes) -> None:
        if self._raw_phase():
            assert self._raw is not None
            self._hello.append(data)
            self._raw.pause_reading()
            return
        self._hand_up(functools.partial(self.app.data_received, data))

    def eof_received(self) -> bool | None:
        if not self._raw_phase():
            self._hand_up(self.app.eof_received)
        return None  # the raw transport's: it closes, and the handshake fails with it

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._raw_phase():  # the raw transport's: the handshake fails with it
            self._hand_up(functools.partial(self.app.connection_lost, exc))


def _hand_on(raw: asyncio.Transport, data: bytes) -> None:
    """Give `data` to the protocol start_tls put on `raw`, as `raw` would have: TLS
    protocols are buffered ones (asyncio.BufferedProtocol)."""
    protocol = raw.get_protocol()
    view = memoryview(data)
    while view and not raw.is_closing():
        buffer = protocol.get_buffer(len(view))  # type: ignore[attr-defined]
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)  # type: ignore[attr-defined]
        view = view[n:]

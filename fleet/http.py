"""The HTTP/JSON shell (FastAPI) for the CLI and the services: registry, steering, plans,
keys and `/metrics`. Handlers are `async` so they run on the loop that also serves gRPC,
and FleetService is only ever touched from that one thread.

`GET /steer` is the one hot route (players ask it per session, thousands a second). The
HTTP protocol answers it straight from the parser's callback (SteeringHttpProtocol): no
ASGI request cycle, task, event or header re-validation, which together cost more than the
decision itself. Whatever that path does not take (another HTTP version, a request queued
behind one in flight, an operator's probe) reaches a plain ASGI handler in front of
FastAPI, with the same answer; every other route goes to FastAPI. The port is public, so
every connection is bounded in head size, head time and number (BoundedHttpToolsProtocol).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import httptools
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edgeflix.http.connection import LINGER_S
from edgeflix.http.request import MAX_HEADER_COUNT, MAX_TARGET_BYTES
from edgeflix.http.server import ServerSettings
from fleet.admin import AdminAccess, Refusal
from fleet.errors import FleetError, FleetInputError, UnknownNameError
from fleet.model import Appliance
from fleet.planning import Planning
from fleet.registry import Beat
from fleet.service import FleetService

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = (b"content-type", b"application/json")
# `excluded` names every appliance, as this admin route does: a probe gets it only from a
# caller who may read that route.
EXPLAIN_AS = "/appliances"
_LIMITS = ServerSettings()  # the appliance's and origin's defaults: the same threats
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class JoinTokenRequest(BaseModel):
    site: str


def steer_json(
    svc: FleetService, client_ip: str, title: str, probe: bool = False, explain: bool = False
) -> bytes:
    """The /steer answer: `urls` best first, plus each candidate and why (the CLI shows it).
    `probe` (`&probe=1`, what `fleet steer` sends): an operator asking, not a session, so
    neither the outcome counters nor the demand the planner sees count it. `explain` adds
    `excluded`, every appliance left out and why: only for a probe by an admin (it names
    the whole fleet, and at a few thousand appliances outweighs the rest of the answer)."""
    decision, urls = svc.steer(client_ip, title, count=not probe)
    body = {
        "urls": list(urls.urls),
        "candidates": [
            {"name": c.name, "site": c.site, "url": u, "reason": c.reason, "kind": c.kind}
            for c, u in zip(decision.candidates, urls.urls, strict=True)
        ],
        "outcome": decision.outcome,
        "client_ip": decision.client_ip,
        "client_site": decision.client_site,
        "title": decision.title_id,
        "expires": urls.expires,
    }
    if explain:
        body["excluded"] = list(decision.excluded)
    return _encode(body).encode()


def steer_params(query_string: bytes) -> tuple[str, str, bool]:
    """`client_ip`, `title` and `probe` from a query string; the last one wins, as in
    FastAPI."""
    params = dict(parse_qsl(query_string.decode("latin-1")))
    missing = [p for p in ("client_ip", "title") if not params.get(p)]
    if missing:
        raise FleetInputError(f"/steer needs the query parameter(s) {', '.join(missing)}")
    return params["client_ip"], params["title"], params.get("probe") in ("1", "true")


class SteerFastPath:
    """`GET /steer` answered here, every other request passed on to the FastAPI app."""

    def __init__(self, svc: FleetService, api: FastAPI, admin: AdminAccess) -> None:
        self.svc = svc
        self.api = api
        self.admin = admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/steer":
            if scope["type"] == "http" and await self._refused(scope, send):
                return
            await self.api(scope, receive, send)
            return
        headers = [_JSON_HEADERS]
        try:
            if scope["method"] != "GET":
                headers.append((b"allow", b"GET"))
                status, body = 405, _encode({"error": "/steer only answers GET"}).encode()
            else:
                client_ip, title, probe = steer_params(scope["query_string"])
                explain = probe and self._admin(scope, EXPLAIN_AS) is None
                status, body = 200, steer_json(self.svc, client_ip, title, probe, explain)
        except FleetError as exc:
            status, body = exc.http_status, _encode({"error": str(exc)}).encode()
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _admin(self, scope: Scope, path: str) -> Refusal | None:
        """Why this caller may not use `path` as an admin, or None (fleet/admin.py)."""
        client = scope.get("client")
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        return self.admin.check(path, client[0] if client else None, auth)

    async def _refused(self, scope: Scope, send: Send) -> bool:
        """Answer 401 when the admin API is not this caller's to use."""
        refusal = self._admin(scope, scope["path"])
        if refusal is None:
            return False
        body = _encode({"error": refusal.message}).encode()
        headers = [
            _JSON_HEADERS,
            (b"www-authenticate", b'Bearer realm="edgeflix-fleet"'),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True


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
      is answered 503 when every other has a request in flight.
    """

    header_timeout_s: float = _LIMITS.header_timeout_s
    max_header_bytes: int = _LIMITS.max_header_bytes
    max_connections: int = _LIMITS.max_connections
    # The server's idle connections, longest idle first, and those owing a head, longest
    # owing first: one of each per bound class, as a class is bound per server
    # (`steering_protocol`).
    idle: ClassVar[OrderedDict[BoundedHttpToolsProtocol, None]] = OrderedDict()
    owing: ClassVar[OrderedDict[BoundedHttpToolsProtocol, None]] = OrderedDict()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True  # reading a request head (or waiting for one)
        self._head_bytes = 0
        self._refusal: tuple[int, str] | None = None
        self._refused = False
        # Since when the client owes us the rest of a head; None while it owes nothing.
        # Checked by one timer per connection, not one armed per request: /steer is hot.
        self._waiting_since: float | None = self.loop.time()
        self.owing[self] = None
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._check_head)
        if len(self.connections) > self.max_connections and not self._make_room():
            self._refuse(503, "the fleet manager is at its connection limit: retry shortly")

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._forget()  # the connection is the websocket protocol's from here on
        super().handle_websocket_upgrade()

    def _forget(self) -> None:
        self.idle.pop(self, None)
        self.owing.pop(self, None)
        self._head_timer.cancel()

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
        self.write_json(status, _encode({"error": message}).encode(), close=True)
        if status == 503:
            self.transport.close()  # at the connection cap: the descriptor back at once
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

    def _make_room(self) -> bool:
        """Close the connection idle longest, else the one owing a head longest (never
        this newcomer), for a newcomer at the cap."""
        for waiting in (self.idle, self.owing):
            for other in waiting:
                if other is not self and not other.transport.is_closing():
                    waiting.pop(other)
                    other.transport.close()
                    return True
        return False


class _NoEvent:
    def set(self) -> None:
        pass


class _Answered:
    """Stands in for uvicorn's request cycle after a request answered inline: complete,
    so the parser's later callbacks for it (body, message complete) have nothing to do.
    connection_lost still wakes its `message_event` and reads `disconnected`."""

    response_complete = True
    keep_alive = True
    disconnected = False
    message_event = _NoEvent()


_ANSWERED = _Answered()


class SteeringHttpProtocol(BoundedHttpToolsProtocol):
    """Answers `GET /steer` inline when nothing else is in flight on the connection
    (see the module's docstring); made per service by `steering_protocol`."""

    svc: FleetService

    def on_request_head(self) -> None:
        if not self._answer_steer():
            super().on_request_head()

    def _answer_steer(self) -> bool:
        parser = self.parser
        if parser.get_method() != b"GET" or parser.get_http_version() != "1.1":
            return False
        if (self.cycle is not None and not self.cycle.response_complete) or self.pipeline:
            return False  # answers leave in request order: queue behind the one in flight
        if self.flow.write_paused or self.transport.get_write_buffer_size() > HIGH_WATER_LIMIT:
            # The client does not read: uvicorn's cycle waits for it to, and queues (and
            # stops reading) what comes next, where answering inline would buffer without end.
            return False
        url = httptools.parse_url(self.url)
        if url.path != b"/steer":
            return False
        try:
            client_ip, title, probe = steer_params(url.query or b"")
            if probe:
                return False  # an operator's: SteerFastPath knows whether to explain
            status, body = 200, steer_json(self.svc, client_ip, title)
        except FleetError as exc:
            status, body = exc.http_status, _encode({"error": str(exc)}).encode()
        keep_alive = parser.should_keep_alive()
        self.write_json(status, body, close=not keep_alive)
        self.cycle = _ANSWERED  # type: ignore[assignment]
        if keep_alive:
            self.on_response_complete()  # re-arms the keep-alive timer, as uvicorn's own
        else:
            self.server_state.total_requests += 1
            self.transport.close()
        return True


def steering_protocol(
    svc: FleetService, max_connections: int = _LIMITS.max_connections
) -> type[SteeringHttpProtocol]:
    """The protocol class for `uvicorn.Config(http=…)`, bound to this service (and to
    `max_connections`, what the descriptor limit fits: edgeflix.http.runner)."""
    bound = {
        "svc": svc,
        "max_connections": max_connections,
        "idle": OrderedDict(),
        "owing": OrderedDict(),
    }
    return type("BoundSteeringHttpProtocol", (SteeringHttpProtocol,), bound)


def _silence(svc: FleetService, beat: Beat | None) -> float | None:
    """Seconds since the appliance's last beat arrived, on the clock liveness uses
    (monotonic: a wall clock stepped back does not make it negative)."""
    if beat is None:
        return None
    if beat.seen is None:
        return round(svc.clock() - beat.at, 1)
    return round(svc.monotonic() - beat.seen, 1)


def appliance_json(svc: FleetService, a: Appliance) -> dict[str, Any]:
    beat = svc.beats.get(a.name)
    current = svc.current_plan
    planned = current.for_appliance(a.name) if current else None
    return {
        "name": a.name,
        "site": a.site,
        "url": a.url,
        "state": a.state,
        "capacity_bps": a.capacity_bps,
        "load_bps": a.load_bps,
        "connections": a.connections,
        "titles": sum(1 for t in a.titles.values() if t.complete),
        "disk_bytes": a.disk_bytes,
        "last_seen_s": _silence(svc, beat),
        "health_detail": beat.health_detail if beat else "",
        "plan_version": beat.plan_version if beat else 0,
        "keys_version": beat.keys_version if beat else 0,
        "planned_titles": len(planned.titles) if planned else 0,
    }


def plan_json(svc: FleetService, site: str | None) -> dict[str, Any]:
    if site is not None and svc.snapshot().site(site) is None:
        known = ", ".join(s.name for s in svc.sites) or "none configured"
        raise UnknownNameError(f"no site named '{site}' (sites: {known})")
    current = svc.current_plan
    entries = [] if current is None else list(current.appliances.values())
    return {
        "version": current.version if current else 0,
        "appliances": [
            {
                "name": p.appliance,
                "site": p.site,
                "planned_bytes": p.planned_bytes,
                "titles": [dataclasses.asdict(t) for t in p.titles],
                "diff": dataclasses.asdict(p.diff),
            }
            for p in entries
            if site is None or p.site == site
        ],
    }


def create_app(
    svc: FleetService, admin: AdminAccess, planning: Planning | None = None
) -> SteerFastPath:
    return SteerFastPath(svc, create_api(svc, planning or Planning(svc, in_process=True)), admin)


def create_api(svc: FleetService, planning: Planning) -> FastAPI:
    """Every route but the hot `GET /steer` (see SteerFastPath)."""
    app = FastAPI(title="Edgeflix fleet manager", version="1")

    @app.exception_handler(FleetError)
    async def _fleet_error(request: Request, exc: FleetError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.http_status)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return svc.metrics()

    @app.get("/appliances")
    async def appliances() -> list[dict[str, Any]]:
        return [appliance_json(svc, a) for a in svc.snapshot().appliances]

    @app.get("/appliances/{name}")
    async def appliance(name: str) -> dict[str, Any]:
        svc.record(name)
        a = next(a for a in svc.snapshot().appliances if a.name == name)
        current = svc.current_plan
        planned = current.for_appliance(name) if current else None
        return {
            **appliance_json(svc, a),
            "held": {t: dataclasses.asdict(h) for t, h in sorted(a.titles.items())},
            "plan": [dataclasses.asdict(t) for t in planned.titles] if planned else [],
        }

    @app.post("/appliances/{name}/drain")
    async def drain(name: str) -> dict[str, Any]:
        svc.set_drained(name, True)
        return {"name": name, "drained": True}

    @app.post("/appliances/{name}/undrain")
    async def undrain(name: str) -> dict[str, Any]:
        svc.set_drained(name, False)
        return {"name": name, "drained": False}

    @app.delete("/appliances/{name}")
    async def remove(name: str) -> dict[str, Any]:
        svc.remove(name)
        return {"name": name, "removed": True}

    @app.get("/sites")
    async def sites() -> list[dict[str, Any]]:
        snap = svc.snapshot()
        now = svc.clock()
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        return [
            {
                "name": s.name,
                "prefixes": [str(p) for p in s.prefixes],
                "fill_window": str(s.fill_window),
                "timezone": s.timezone,
                "in_fill_window": s.in_fill_window(moment),
                "appliances": len(snap.in_site(s.name)),
            }
            for s in snap.sites
        ]

    @app.get("/plan")
    async def get_plan(site: str | None = None) -> dict[str, Any]:
        return plan_json(svc, site)

    @app.post("/plan")
    async def replan(site: str | None = None) -> dict[str, Any]:
        plan_json(svc, site)  # an unknown site is refused before any work
        await planning.replan()
        return plan_json(svc, site)

    @app.post("/fill-now")
    async def fill_now(site: str | None = None) -> dict[str, Any]:
        return {"appliances": svc.request_fill_now(site)}

    @app.post("/join-tokens")
    async def join_token(body: JoinTokenRequest) -> dict[str, Any]:
        return {"site": body.site, "token": svc.join_token(body.site)}

    @app.post("/keys/rotate")
    async def rotate_keys(immediate: bool = False) -> dict[str, Any]:
        svc.rotate_keys(immediate=immediate)
        return {"version": svc.keys.version, "keys": [k.id for k in svc.keys.keys]}

    @app.post("/keys/{key_id}/revoke")
    async def revoke_key(key_id: str) -> dict[str, Any]:
        svc.revoke_key(key_id)
        keys = [k.id for k in svc.keys.keys]
        return {"revoked": key_id, "version": svc.keys.version, "keys": keys}

    return app

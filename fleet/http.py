"""The HTTP/JSON shell (FastAPI) for the CLI and the services: registry, steering, plans,
keys and `/metrics`. Handlers are `async` so they run on the loop that also serves gRPC,
and FleetService is only ever touched from that one thread.

`GET /steer` is the one hot route (players ask it per session, thousands a second). The
HTTP protocol answers it straight from the parser's callback (SteeringHttpProtocol): no
ASGI request cycle, task, event or header re-validation, which together cost more than the
decision itself. Whatever that path does not take (another HTTP version, a request queued
behind one in flight, an operator's probe) reaches a plain ASGI handler in front of
FastAPI, with the same answer; every other route goes to FastAPI. The port is public, so
every connection is bounded in head size, head time and number (fleet/http_protocol.py).

A title the catalogue does not list (published since the last poll, say) is the one /steer
that waits: it goes the ASGI way, which has the catalogue read (`CatalogueMisses`, shared
and rate-limited: fleet/ticker.py) and asks steering once more, or answers 404 at once when
no read may start yet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import parse_qsl

import httptools
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from edgeflix.metrics import Sample, render
from fleet.admin import AdminAccess, Refusal
from fleet.catalogue import CatalogueMisses
from fleet.errors import FleetError, FleetInputError, UnknownNameError
from fleet.http_protocol import LIMITS, BoundedHttpToolsProtocol, encode_json
from fleet.model import Appliance
from fleet.planning import Planning
from fleet.registry import Beat
from fleet.service import FleetService
from fleet.steering import UnlistedTitleError
from fleet.store import StoreError
from fleet.ticker import store_changes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = (b"content-type", b"application/json")
# `excluded` names every appliance, as this admin route does: a probe gets it only from a
# caller who may read that route.
EXPLAIN_AS = "/appliances"


class JoinTokenRequest(BaseModel):
    site: str


class ManagerHealth(Protocol):
    """What /healthz and /metrics say of the manager's own work (ticker.TickHealth), told
    here of the admin API's writes too."""

    def problem(self) -> str | None: ...

    def store_writable(self) -> bool: ...

    def write_failed(self, error: str, changes: int, what: str) -> None: ...

    def wrote(self, changes: int) -> None: ...


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
    return encode_json(body).encode()


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

    def __init__(
        self,
        svc: FleetService,
        api: FastAPI,
        admin: AdminAccess,
        misses: CatalogueMisses | None = None,
    ) -> None:
        self.svc = svc
        self.api = api
        self.admin = admin
        self.misses = misses

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
                status, body = 405, encode_json({"error": "/steer only answers GET"}).encode()
            else:
                client_ip, title, probe = steer_params(scope["query_string"])
                explain = probe and self._admin(scope, EXPLAIN_AS) is None
                try:
                    body = steer_json(self.svc, client_ip, title, probe, explain)
                except UnlistedTitleError:
                    # Published since the last read? Once more after a fresh one, if one
                    # may start (or is under way) and lands in time; else the 404 stands.
                    if self.misses is None or not await self.misses.after_miss():
                        raise
                    body = steer_json(self.svc, client_ip, title, probe, explain)
                status = 200
        except FleetError as exc:
            status, body = exc.http_status, encode_json({"error": str(exc)}).encode()
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
        body = encode_json({"error": refusal.message}).encode()
        headers = [
            _JSON_HEADERS,
            (b"www-authenticate", b'Bearer realm="edgeflix-fleet"'),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True


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
    misses: CatalogueMisses | None

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
        except UnlistedTitleError as exc:
            if self.misses is not None and self.misses.may_help():
                return False  # SteerFastPath has the catalogue read, and asks again
            status, body = exc.http_status, encode_json({"error": str(exc)}).encode()
        except FleetError as exc:
            status, body = exc.http_status, encode_json({"error": str(exc)}).encode()
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
    svc: FleetService,
    max_connections: int = LIMITS.max_connections,
    misses: CatalogueMisses | None = None,
) -> type[SteeringHttpProtocol]:
    """The protocol class for `uvicorn.Config(http=…)`, bound to this service (and to
    `max_connections`, what the descriptor limit fits: edgeflix.http.runner, and to the
    catalogue reads /steer's misses may ask for)."""
    bound: dict[str, object] = {
        "svc": svc,
        "misses": misses,
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
        # Complete (servable) titles; `titles_held` counts the incomplete ones too.
        "titles": sum(1 for t in a.titles.values() if t.complete),
        "titles_held": len(a.titles),
        "disk_bytes": a.disk_bytes,
        "last_seen_s": _silence(svc, beat),
        "health_detail": beat.health_detail if beat else "",
        "plan_version": beat.plan_version if beat else 0,
        "keys_version": beat.keys_version if beat else 0,
        "planned_titles": len(planned.titles) if planned else 0,
        # The plan it runs: its bytes held and in all (FillProgress), and how many titles its
        # last fill run failed (`fill_failures` in /appliances/NAME says which and why).
        "fill_bytes_done": beat.fill_done if beat else 0,
        "fill_bytes_total": beat.fill_total if beat else 0,
        "fill_failed": len(beat.fill_failures) if beat else 0,
        **clock_json(svc, a.name),
    }


def clock_json(svc: FleetService, name: str) -> dict[str, Any]:
    """How far off the appliance's clock was seen (its less ours, None: not seen off) and
    whether its calls are refused for it (else it signs with a correction it learned)."""
    seen = svc.clocks.get(name)
    return {
        "clock_offset_s": round(seen.offset_s, 1) if seen else None,
        "clock_refused": seen.refused if seen else False,
    }


def appliance_detail(svc: FleetService, a: Appliance) -> dict[str, Any]:
    """`/appliances/NAME`: its row, its disks, what it holds, its plan and its failures."""
    beat = svc.beats.get(a.name)
    current = svc.current_plan
    planned = current.for_appliance(a.name) if current else None
    return {
        **appliance_json(svc, a),
        "tiers": [dataclasses.asdict(t) for t in a.tiers],
        "held": {t: dataclasses.asdict(h) for t, h in sorted(a.titles.items())},
        "plan": [dataclasses.asdict(t) for t in planned.titles] if planned else [],
        "fill_failures": [dataclasses.asdict(f) for f in beat.fill_failures] if beat else [],
    }


def failed_titles(beat: Beat | None) -> list[str]:
    """What the appliance's last fill run failed, as its last beat says."""
    return [f.title_id for f in beat.fill_failures] if beat else []


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
                "fill_failed": failed_titles(svc.beats.get(p.appliance)),
            }
            for p in entries
            if site is None or p.site == site
        ],
    }


def create_app(
    svc: FleetService,
    admin: AdminAccess,
    planning: Planning | None = None,
    health: ManagerHealth | None = None,
    misses: CatalogueMisses | None = None,
) -> SteerFastPath:
    api = create_api(svc, planning or Planning(svc, in_process=True), health)
    return SteerFastPath(svc, api, admin, misses)


def health_metrics(health: ManagerHealth | None) -> str:
    writable = 1 if health is None or health.store_writable() else 0
    help_text = ("1 while the fleet database takes writes; 0 from a failed write until one "
                 "goes through (a full disk: plans, keys and counts are not saved).")  # fmt: skip
    return render([("edgeflix_fleet_store_writable", "gauge", help_text, [Sample({}, writable)])])


def create_api(
    svc: FleetService, planning: Planning, health: ManagerHealth | None = None
) -> FastAPI:
    """Every route but the hot `GET /steer` (see SteerFastPath)."""
    app = FastAPI(title="Edgeflix fleet manager", version="1")

    @app.exception_handler(FleetError)
    async def _fleet_error(request: Request, exc: FleetError) -> JSONResponse:
        if isinstance(exc, StoreError) and health is not None:
            # An operator's change the database refused (a full disk): /healthz says so
            # too, not only this answer.
            what = f"{request.method} {request.url.path}"
            health.write_failed(str(exc), store_changes(svc), what)
        return JSONResponse({"error": str(exc)}, status_code=exc.http_status)

    def saved() -> None:
        """An admin change the database took: it takes writes again (TickHealth.wrote)."""
        if health is not None:
            health.wrote(store_changes(svc))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        # "degraded" with a 200, not a 503: steering and beats still work, and a probe that
        # restarts or unroutes a manager on a 503 would take those away without freeing a
        # byte. As an appliance's /healthz stays 200 for its full disk (its 503 is for a
        # serving worker down); monitoring alerts on the status, or on the gauge below.
        problem = health.problem() if health is not None else None
        return {"status": "ok"} if problem is None else {"status": "degraded", "reason": problem}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return svc.metrics() + health_metrics(health)

    @app.get("/appliances")
    async def appliances() -> list[dict[str, Any]]:
        return [appliance_json(svc, a) for a in svc.snapshot().appliances]

    @app.get("/appliances/{name}")
    async def appliance(name: str) -> dict[str, Any]:
        svc.record(name)
        a = next(a for a in svc.snapshot().appliances if a.name == name)
        return appliance_detail(svc, a)

    @app.post("/appliances/{name}/drain")
    async def drain(name: str) -> dict[str, Any]:
        svc.set_drained(name, True)
        saved()
        return {"name": name, "drained": True}

    @app.post("/appliances/{name}/undrain")
    async def undrain(name: str) -> dict[str, Any]:
        svc.set_drained(name, False)
        saved()
        return {"name": name, "drained": False}

    @app.delete("/appliances/{name}")
    async def remove(name: str) -> dict[str, Any]:
        svc.remove(name)
        saved()
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
        saved()
        return plan_json(svc, site)

    @app.post("/fill-now")
    async def fill_now(site: str | None = None) -> dict[str, Any]:
        return {"appliances": svc.request_fill_now(site)}

    @app.post("/join-tokens")
    async def join_token(body: JoinTokenRequest) -> dict[str, Any]:
        token = svc.join_token(body.site)
        saved()
        return {"site": body.site, "token": token}

    @app.get("/keys")
    async def keys() -> dict[str, Any]:
        return dataclasses.asdict(svc.keyring.listing())

    @app.post("/keys/rotate")
    async def rotate_keys(immediate: bool = False) -> dict[str, Any]:
        svc.rotate_keys(immediate=immediate)
        saved()
        return {"version": svc.keys.version, "keys": [k.id for k in svc.keys.keys]}

    @app.post("/keys/{key_id}/revoke")
    async def revoke_key(key_id: str) -> dict[str, Any]:
        svc.revoke_key(key_id)
        saved()
        keys = [k.id for k in svc.keys.keys]
        return {"revoked": key_id, "version": svc.keys.version, "keys": keys}

    return app

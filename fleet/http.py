"""The HTTP/JSON shell (FastAPI) for the CLI and the services: registry, steering, plans,
keys and `/metrics`. Handlers are `async` so they run on the loop that also serves gRPC,
and FleetService is only ever touched from that one thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from fleet.errors import FleetError
from fleet.model import Appliance
from fleet.service import FleetService


class JoinTokenRequest(BaseModel):
    site: str


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
        "last_seen_s": round(svc.clock() - beat.at, 1) if beat else None,
        "health_detail": beat.health_detail if beat else "",
        "plan_version": beat.plan_version if beat else 0,
        "keys_version": beat.keys_version if beat else 0,
        "planned_titles": len(planned.titles) if planned else 0,
    }


def plan_json(svc: FleetService, site: str | None) -> dict[str, Any]:
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


def create_app(svc: FleetService) -> FastAPI:
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

    @app.get("/steer")
    async def steer(client_ip: str = Query(...), title: str = Query(...)) -> Response:
        # The hot path: encoded here, skipping FastAPI's generic response validation.
        decision, urls = svc.steer(client_ip, title)
        body = {
            "urls": list(urls.urls),
            "candidates": [
                {**dataclasses.asdict(c), "url": u}
                for c, u in zip(decision.candidates, urls.urls, strict=True)
            ],
            "outcome": decision.outcome,
            "client_ip": decision.client_ip,
            "client_site": decision.client_site,
            "title": decision.title_id,
            "expires": urls.expires,
            "excluded": list(decision.excluded),
        }
        return Response(json.dumps(body).encode(), media_type="application/json")

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
        svc.replan()
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

    return app

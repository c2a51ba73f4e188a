"""The HTTP shell's hot route: `GET /steer` answered by the plain ASGI handler in front of
FastAPI (same answer, counted at /metrics), and every other request still reaching FastAPI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from edgeflix.proto import auth
from fleet.admin import AdminAccess
from fleet.config import FleetConfig, SiteConfig
from fleet.http import create_app
from fleet.model import HeldTitle
from fleet.registry import Beat
from fleet.service import FleetService
from fleet.store import Store

ADMIN = AdminAccess("loopback", b"secret-admin-token")


def service(tmp_path: Path) -> FleetService:
    cfg = FleetConfig.model_validate(
        {
            "server": {"db": str(tmp_path / "fleet.sqlite"), "enrolment": "open"},
            "sites": [SiteConfig(name="home", prefixes=("192.168.1.0/24",)).model_dump()],
            "origin": {"url": "http://127.0.0.1:9"},
        }
    )
    svc = FleetService(cfg, Store(cfg.server.db), lambda: 1_000_000.0)
    svc.maybe_rotate_keys()
    for name in ("h1", "h2"):
        svc.enrol("", name, f"http://{name}:8081", auth.public_key(auth.new_private_key()))
        beat = Beat(
            at=svc.clock(),
            sequence=1,
            capacity_bps=1e9,
            titles={"film": HeldTitle("d")},
            keys_version=svc.keys.version,
        )
        svc.heartbeat(name, beat, {})
    return svc


def get(
    svc: FleetService,
    target: str,
    method: str = "GET",
    client: str = "127.0.0.1",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> tuple[int, dict[str, str], bytes]:
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"fleet"), *headers],
        "client": (client, 40000),
        "server": ("127.0.0.1", 7080),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(create_app(svc, ADMIN)(scope, receive, send))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body


def test_steer_answers_ranked_signed_urls_and_counts_the_outcome(tmp_path: Path) -> None:
    svc = service(tmp_path)
    status, headers, body = get(svc, "/steer?client_ip=192.168.1.7&title=film")
    assert status == 200 and headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    out = json.loads(body)
    assert out["outcome"] == "in_site" and out["client_site"] == "home"
    assert out["client_ip"] == "192.168.1.7" and out["title"] == "film"
    assert sorted(c["name"] for c in out["candidates"]) == ["h1", "h2"]
    assert [c["url"] for c in out["candidates"]] == out["urls"]
    assert all(u.endswith("/titles/film/master.m3u8") and "/t/" in u for u in out["urls"])
    assert set(out["candidates"][0]) == {"name", "site", "url", "reason", "kind"}
    assert out["expires"] == 1_000_000 + svc.config.steering.token_ttl_s
    # An IPv6 client arrives percent-encoded; a title held nowhere goes to the origin.
    _, _, body = get(svc, "/steer?client_ip=2001%3Adb8%3A%3A7&title=other")
    assert json.loads(body)["outcome"] == "origin"
    # `fleet steer` probes: answered the same, counted nowhere.
    _, _, body = get(svc, "/steer?client_ip=192.168.1.7&title=film&probe=1")
    assert json.loads(body)["outcome"] == "in_site"
    _, _, metrics = get(svc, "/metrics")
    assert 'edgeflix_fleet_steering_total{outcome="in_site"} 1' in metrics.decode()
    assert 'edgeflix_fleet_steering_total{outcome="origin"} 1' in metrics.decode()


def test_bad_or_missing_parameters_are_a_400_with_a_message(tmp_path: Path) -> None:
    svc = service(tmp_path)
    status, _, body = get(svc, "/steer?client_ip=not-an-ip&title=film")
    assert status == 400 and "not an IPv4 or IPv6 address" in json.loads(body)["error"]
    status, _, body = get(svc, "/steer?title=film")
    assert status == 400 and "client_ip" in json.loads(body)["error"]
    assert sum(svc.outcomes.values()) == 0


def test_other_routes_and_methods_reach_fastapi(tmp_path: Path) -> None:
    svc = service(tmp_path)
    assert get(svc, "/healthz")[0] == 200
    assert get(svc, "/steer?client_ip=192.168.1.7&title=film", method="POST")[0] == 405
    status, _, body = get(svc, "/appliances")
    assert status == 200 and {a["name"] for a in json.loads(body)} == {"h1", "h2"}

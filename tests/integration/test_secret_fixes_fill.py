"""A peer fill through the real processes shows its URL tokens nowhere. Appliance A (tokens
required) holds "film"; appliance B's daemon fills by a plan whose peer sources are signed
as the fleet link signs them (`PEER/t/<token>`, valid for any client). B takes film from A,
is stopped mid-file and resumes it; A's proxy refuses "show" (403: the peer fails, the
origin serves it) and A lacks "clip" (404: deferred, then bypassed). Every failure path
that used to quote the source ran, yet no token is in B's log, in its /status, in
`appliance status --json`, nor in any file under B's folder (state.json, validators).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.fleetlink_keys import FleetKey, sign_peer_sources
from edgeflix import titlefiles
from tests.conftest import run_cli
from tests.integration import faultproxy as fp
from tests.integration.daemon_support import write_config
from tests.integration.faultproxy import Fault, FaultProxy
from tests.integration.serve_support import Server, serving_origin, start
from tests.integration.test_fill import make_title

MiB = 1 << 20
SECRET = b"peer-fill-secret-0123456789"
TUNING = """read_timeout_s = 5
head_timeout_s = 5
retry_base_s = 0.02
retry_max_s = 0.1
peer_wait_s = 0.3
peer_waits = 1"""
# A path token shown as it is (anything after /t/ but the placeholder).
_SHOWN_TOKEN = re.compile(r"/t/(?!<redacted>)[^/\s\"']")


def _daemon(config: Path, log: Path) -> Server:
    with log.open("ab") as err:
        return start(
            ["appliance", "run", "--config", str(config)], ("listening", "admin"), None, err
        )


def _status(server: Server) -> tuple[str, dict[str, Any]]:
    reply = httpx.get(server.urls["admin"] + "/status", timeout=10)
    assert reply.status_code == 200
    return reply.text, reply.json()


def _titles(doc: dict[str, Any]) -> dict[str, Any]:
    got: dict[str, Any] = (doc.get("fill") or {}).get("titles") or {}
    return got


def _until(server: Server, seen: list[str], cond: Callable[[dict[str, Any]], bool]) -> Any:
    """Poll /status (keeping every document in `seen`) until `cond`; bounded."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text, doc = _status(server)
        seen.append(text)
        if cond(doc):
            return doc
        time.sleep(0.1)
    raise AssertionError(f"not within 90 s: {seen[-1]}")


def _files_text(root: Path, skip: Path) -> Iterator[tuple[Path, str]]:
    for path in root.rglob("*"):
        if path.is_file() and path != skip:
            yield path, path.read_bytes().decode("latin-1")


@pytest.fixture()
def peer_a(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    store = tmp_path / "origin"
    make_title(store, "film", [MiB] * 4, seed=31)
    make_title(store, "show", [200_000, 100_000], seed=32)
    make_title(store, "clip", [150_000], seed=33)
    a_dir = tmp_path / "a"
    secret = base64.b64encode(SECRET).decode()
    auth = f'[auth]\ntokens = "required"\nkeys = [ {{ id = "k1", secret = "{secret}" }} ]\n'
    a_config = write_config(a_dir, extra=auth)
    film = str(store / "titles/film")
    load = ["appliance", "load", "--config", str(a_config), "--title", "film", "--from", film]
    run_cli(load, check=True)
    peer = _daemon(a_config, a_dir / "log")
    try:
        yield peer, store
    finally:
        peer.stop()


def test_a_peer_fill_shows_its_tokens_nowhere(peer_a: tuple[Server, Path], tmp_path: Path) -> None:
    peer, store = peer_a
    b_dir, plan, log = tmp_path / "b", tmp_path / "plan.json", tmp_path / "b.log"
    b_config = write_config(b_dir, extra=f'{TUNING}\nplan = "{plan}"')
    with serving_origin(store) as origin, FaultProxy(peer.url) as proxy:
        proxy.set(Fault(fp.STATUS, status=403, match="/titles/show/"))
        titles = [
            {
                "id": t,
                "digest": titlefiles.read(store / "titles" / t)[1],
                "sources": [proxy.url, origin.url],
            }
            for t in ("film", "show", "clip")
        ]
        doc = {"titles": titles, "cap_bps": 4_000_000, "prune": False}
        # As the fleet link hands the plan to the fill: peer sources signed for 48 h.
        keys = (FleetKey("k1", SECRET, 0.0, 0.0, 0.0),)
        signed = sign_peer_sources(doc, keys, time.time(), 2 * 86_400.0)
        tokens = {s.split("/t/")[1] for t in signed["titles"] for s in t["sources"][:-1]}
        assert len(tokens) == 3
        plan.write_text(json.dumps(signed))
        seen: list[str] = []

        # Film from the peer, stopped mid-file: a .part and its validator stay behind.
        b = _daemon(b_config, log)
        try:
            _until(b, seen, lambda d: _titles(d).get("film", {}).get("source") is not None)
            deadline = time.monotonic() + 30
            while not list(b_dir.rglob("*.validator")) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert list(b_dir.rglob("*.validator")), "no validator beside a .part"
            on_disk = dict(_files_text(b_dir, plan))
        finally:
            b.stop()
        assert list(b_dir.rglob("*.part"))

        # Again: film resumes from its .part, show and clip come from the origin.
        b = _daemon(b_config, log)
        try:
            states = ("ready", "failed")
            done = _until(
                b,
                seen,
                lambda d: all(
                    _titles(d).get(t, {}).get("state") in states for t in ("film", "show", "clip")
                ),
            )
            status_cli = run_cli(["appliance", "status", "--config", str(b_config), "--json"])
        finally:
            b.stop()
        on_disk.update(_files_text(b_dir, plan))

    got = _titles(done)
    assert {t: p["state"] for t, p in got.items()} == dict.fromkeys(
        ("film", "show", "clip"), "ready"
    )
    assert got["film"]["source"] == f"{proxy.url}/t/<redacted>"
    assert 0 < got["film"]["downloaded"] < got["film"]["total"]  # resumed, not started over
    assert got["show"]["source"] == got["clip"]["source"] == origin.url
    stderr = log.read_text()
    for name in (
        "fill.file_failed",
        "fill.source_failed",
        "fill.title_deferred",
        "fill.peer_bypassed",
    ):
        assert f"event={name}" in stderr, name  # each path that named the source ran
    assert "/t/<redacted>" in stderr and "/t/<redacted>" in got["show"]["last_failure"]

    shown = {"stderr": stderr, "status --json": status_cli.stdout + status_cli.stderr}
    shown.update({f"/status #{i}": text for i, text in enumerate(seen)})
    shown.update({str(path): text for path, text in on_disk.items()})
    assert any(p.endswith("state.json") for p in shown) and any(
        p.endswith(".validator") for p in shown
    )
    for where, text in shown.items():
        for token in tokens:
            assert token not in text, f"a peer token in {where}"
        assert not _SHOWN_TOKEN.search(text), f"a path token in {where}: {text[:2000]}"

"""Two races from the concurrency review.

The origin: right after `ingest --replace` swapped a title, until the server's next look at
the store (~10 ms), a name only the old version has was routed to the live folder; opening
it failed, and the server looked again and asked the site to relocate it, which never did:
404 for a segment kept for exactly that case. Driven here through the server's own request
path (FileServer.prepare) with the swap made by the store's code between the server's last
look and the request, as the race has it, without waiting for a 1-in-thousands timing.

The fleet: `fleet rm` answered while `fleet plan --now` ran, and the plan it answered and
stored still listed the removed appliance (the round was planned from the fleet as it was).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeflix.http.request import RequestHead
from edgeflix.http.server import FileServer, FileTarget, ServerSettings
from origin.server import OriginSite
from tests.conftest import run_cli
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import FLEET_TOML, ApplianceClient
from tests.origin.test_replaced import publish

# -- origin ----------------------------------------------------------------------------------


def _head(rel: str) -> RequestHead:
    path = f"/titles/film/{rel}"
    return RequestHead("GET", path, path, "", 1, {}, True)


def _body(server: FileServer, rel: str) -> tuple[int, bytes]:
    """The status the server answers a plain GET with, and the bytes of the file it sends."""
    prepared = server.prepare(_head(rel), "127.0.0.1")
    if prepared.file is None:
        return prepared.status, b""
    try:
        with open(prepared.file.path, "rb") as f:
            return prepared.status, f.read()
    finally:
        server.files.release(prepared.file)


def test_a_name_only_the_replaced_version_has_answers_before_the_next_storage_check(
    tmp_path: Path,
) -> None:
    now = time.time()
    old = publish(tmp_path, "one", shared="same", now=now)
    site = OriginSite(tmp_path)

    async def run() -> None:
        # The next storage check an hour away: every request below comes "within 10 ms" of
        # the swap, routed with the kept map of before it.
        server = FileServer(site, ServerSettings(storage_check_s=3600.0), refresh=site.refresh)
        server.fresh()  # the server's look at the store, before the swap
        assert _body(server, "master.m3u8") == (200, old["master.m3u8"])
        new = publish(tmp_path, "two", shared="same", now=now + 1)
        gone = sorted(set(old) - set(new))
        assert gone and all(rel.startswith("v0/") for rel in gone)
        for rel in gone:
            assert _body(server, rel) == (200, old[rel]), rel
        for rel in sorted(new):
            assert _body(server, rel) == (200, new[rel]), rel

    asyncio.run(run())


def test_relocate_answers_only_with_a_kept_copy(tmp_path: Path) -> None:
    """What FileServer._open asks after a failed open and a fresh look: the kept file of a
    name the live version lacks; nothing for a name no version keeps, nor when the kept copy
    is itself the file that vanished (it would only fail again)."""
    now = time.time()
    old = publish(tmp_path, "one", shared="same", now=now)
    site = OriginSite(tmp_path)
    gone = [rel for rel in old if rel.startswith("v0/")]
    before = {rel: site.route(_head(rel), ("titles", "film", *rel.split("/")), "::1")
              for rel in gone}  # fmt: skip
    publish(tmp_path, "two", shared="same", now=now + 1)
    site.refresh()
    for rel, target in before.items():
        assert isinstance(target, FileTarget)
        moved = site.relocate(target)
        assert moved is not None and moved.path != target.path, rel
        assert (moved.rel_path, moved.title_id) == (rel, "film")
        assert Path(moved.path).read_bytes() == old[rel]
        assert site.relocate(moved) is None  # the copy itself gone: nothing more to try
    missing = FileTarget(str(tmp_path / "titles/film/v0/nope.m4s"), "v0/nope.m4s", "film")
    assert site.relocate(missing) is None


# -- fleet ---------------------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Server]:
    config = tmp_path / "fleet.toml"
    toml = FLEET_TOML.format(db=tmp_path / "fleet.sqlite")
    config.write_text(toml.replace("[server]\n", '[server]\nenrolment = "open"\n', 1))
    server = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    yield server
    server.stop()


def _plan_now(fleet: Server) -> subprocess.Popen[str]:
    args = ["fleet", "plan", "--now", "--json", "--fleet", fleet.urls["http"]]
    return subprocess.Popen(
        [sys.executable, "-m", "edgeflix.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _names(plan: dict[str, Any]) -> set[str]:
    """Every appliance a `fleet plan --json` answer names: parts, and sources of titles."""
    parts = plan["appliances"]
    return {p["name"] for p in parts} | {t["source"] for p in parts for t in p["titles"]}


def test_no_plan_names_an_appliance_once_its_rm_answered(fleet: Server) -> None:
    """The reviewer's steps: two `plan --now` in the background, `rm c1` 50 ms later. Both
    answers (and the plan stored) listed c1 until the next tick. Now neither they, nor the
    plan shown right after the rm, name it: as a part, nor as a peer's source."""
    # Thousands of titles (the catalogue is what the appliances report: the origin is not
    # reachable) make a round last most of a second, so the rm lands inside one.
    titles = {f"t{i:05d}": 10**6 for i in range(6_000)}
    boxes = [
        ApplianceClient(fleet.urls["grpc"], f"c{n}", f"http://127.0.0.{n + 10}:8081")
        for n in (1, 2, 3)
    ]
    for box in boxes:
        assert box.enrol("").appliance == box.name
        box.beat(titles)
    http = fleet.urls["http"]
    first = json.loads(run_cli(["fleet", "plan", "--now", "--json", "--fleet", http],
                               check=True, timeout=120).stdout)  # fmt: skip
    assert "c1" in _names(first)
    rounds = [_plan_now(fleet), _plan_now(fleet)]
    time.sleep(0.05)
    run_cli(["fleet", "rm", "c1", "--fleet", http], check=True, timeout=60)
    shown = json.loads(run_cli(["fleet", "plan", "--json", "--fleet", http],
                               check=True, timeout=60).stdout)  # fmt: skip
    assert "c1" not in _names(shown)
    for proc in rounds:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "c1" not in _names(json.loads(out))
    stored = json.loads(run_cli(["fleet", "plan", "--json", "--fleet", http],
                                check=True, timeout=60).stdout)  # fmt: skip
    assert "c1" not in _names(stored) and stored["version"] > first["version"]

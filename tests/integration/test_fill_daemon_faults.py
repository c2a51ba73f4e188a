"""The fill under faults through the real processes: `edgeflix appliance fill` and the
appliance daemon's fill scheduler, with a sick peer (faultproxy.py in front of a real origin)
before the origin. What an operator sees: the CLI's report and exit code, the daemon's
/status and /metrics; and the daemon keeps serving while a fill hammers its disks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.integration import faultproxy as fp
from tests.integration.daemon_support import (
    load_spread_title,
    poll,
    start_daemon,
    write_config,
)
from tests.integration.faultproxy import Fault, FaultProxy
from tests.integration.serve_support import serving_origin
from tests.integration.test_fill import make_title

MiB = 1 << 20
# Short timeouts and backoff so a sick source costs seconds, not minutes.
TUNING = """read_timeout_s = 2
head_timeout_s = 2
low_speed_bps = 16384
low_speed_s = 1.5
retry_base_s = 0.02
retry_max_s = 0.1"""


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    store = tmp_path_factory.mktemp("origin")
    make_title(store, "film", [2 * MiB] * 8, seed=21)
    make_title(store, "short", [300_000, 200_000], seed=22)
    with serving_origin(store) as server:
        yield server.url, store


@pytest.fixture()
def proxy(origin: tuple[str, Path]) -> Iterator[FaultProxy]:
    with FaultProxy(origin[0]) as p:
        yield p


def fill(config: Path, *args: str) -> Any:
    return run_cli(["appliance", "fill", "--config", str(config), "--json", *args], timeout=120)


def test_cli_leaves_a_trickling_peer_for_the_origin(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    url, _ = origin
    config = write_config(tmp_path, extra=TUNING)
    proxy.set(Fault(fp.TRICKLE, rate=1024, match=".m4s"))
    proc = fill(config, "--from", proxy.url, "--from", url, "--title", "short")
    assert proc.returncode == 0, proc.stderr
    short = json.loads(proc.stdout)["titles"]["short"]
    assert short["state"] == "ready" and short["source"] == url
    assert short["retries"] >= 1 and "too slow" in short["last_failure"]
    assert "fill.source_failed" in proc.stderr


def test_cli_reports_a_corrupt_only_source(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    config = write_config(tmp_path, extra=TUNING)
    proxy.set(Fault(fp.FLIP, after=77, match="seg001"))
    proc = fill(config, "--from", proxy.url, "--title", "short")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "short" in last and "SHA-256 mismatch" in last
    short = json.loads(proc.stdout)["titles"]["short"]
    assert short["state"] == "failed" and short["digest_failures"] == 3
    ls = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    assert json.loads(ls.stdout) == []


def _window_open_now() -> str:
    now = datetime.now(UTC)
    return f"{now - timedelta(minutes=5):%H:%M}-{now + timedelta(hours=2):%H:%M}"


def test_daemon_fills_past_a_corrupt_peer_reports_it_and_keeps_serving(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    url, store = origin
    plan = tmp_path / "plan.json"  # written once the daemon serves; it follows the file
    config = write_config(tmp_path, extra=f'{TUNING}\nplan = "{plan}"')
    load_spread_title(tmp_path, config)  # what the daemon serves while it fills
    proxy.set(Fault(fp.FLIP, after=1000, match="seg003"))
    server = start_daemon(config)
    latencies: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def play() -> None:
        # A player fetching segments the whole time the fill runs.
        with httpx.Client(timeout=10) as client:
            while not stop.is_set() and len(latencies) < 20_000:
                started = time.monotonic()
                reply = client.get(f"{server.url}/titles/spread/v0/seg1.m4s")
                latencies.append(time.monotonic() - started)
                if reply.status_code != 200 or len(reply.content) != 300_000:
                    errors.append(f"{reply.status_code} {len(reply.content)}")

    player = threading.Thread(target=play, daemon=True)
    try:
        player.start()
        body = {
            "titles": [{"id": "film", "sources": [proxy.url, url]}],
            "window": _window_open_now(),
            "timezone": "UTC",
            "prune": False,
        }
        plan.write_text(json.dumps(body))

        def film(doc: dict[str, Any]) -> dict[str, Any]:
            got: dict[str, Any] = ((doc.get("fill") or {}).get("titles") or {}).get("film", {})
            return got

        doc = poll(server, lambda d: film(d).get("state") in ("ready", "failed"), 90, 0.2)
        assert doc is not None, "the fill did not finish"
        prog = film(doc)
        assert prog["state"] == "ready", prog
        assert prog["digest_failures"] == 3 and prog["source"] == url
        assert doc["daemon"]["fill_schedule"]["last_error"] is None
        metrics = httpx.get(server.urls["admin"] + "/metrics", timeout=10).text
        assert 'edgeflix_appliance_fill_hash_failures{title="film"} 3' in metrics
        assert 'edgeflix_appliance_fill_titles{state="ready"} 1' in metrics
        reply = httpx.get(f"{server.url}/titles/film/v0/seg003.m4s", timeout=10)
        assert reply.content == (store / "titles/film/v0/seg003.m4s").read_bytes()
        debris = [p for d in ("d0", "d1") for p in (tmp_path / d / ".staging").rglob("*")]
        assert debris == []
    finally:
        stop.set()
        player.join(15)
        server.stop()
    assert errors == []
    assert len(latencies) > 10
    # Loose sanity, not a benchmark: no request waits behind the fill's disk writes.
    assert max(latencies) < 2.0, sorted(latencies)[-5:]

"""A disk whose data writes fail (EIO) while its canary passes, under a real daemon and the
real `appliance fill` against a real `edgeflix origin serve` on loopback: the fill puts the
titles on the other disk, the daemon's health counts the failed writes against the disk and
after the second says it takes no new writes (in /status, so in heartbeats), and a later
fill never writes it again. No FUSE: a `sitecustomize` seam in the child processes fails
the fill's stream writes on that disk (EDGEFLIX_TEST_EIO_UNDER), as a write() to a failing
disk does, naming no file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.integration.daemon_support import poll, seam_env, start_daemon, two_tier_config
from tests.integration.serve_support import serving_origin
from tests.integration.test_fill import make_title

SEAM = """
import errno, os
_under = os.environ.get("EDGEFLIX_TEST_EIO_UNDER")
if _under:
    from appliance.fill import stream

    _real = stream._write_all

    def _write_all(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(_under + os.sep):
            raise OSError(errno.EIO, "Input/output error")
        _real(fd, data)

    stream._write_all = _write_all
"""
BOUND_S = 40


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("origin")
    for seed, title in enumerate(("a", "b", "c"), 1):
        make_title(store, title, [120_000, 80_000, 30_000], seed=seed)
    with serving_origin(store) as server:
        yield server.url


def _setup(tmp: Path) -> tuple[Path, Path, Path, dict[str, str]]:
    """A config with an ssd and an hdd disk (cold titles go to the hdd first), and the env
    that makes the hdd's data writes fail."""
    ssd, hdd = tmp / "ssd", tmp / "hdd"
    config = two_tier_config(tmp, ssd, hdd, f'plan = "{tmp / "plan.json"}"')
    env = seam_env(tmp, SEAM, EDGEFLIX_TEST_EIO_UNDER=str(hdd.resolve()))
    return config, ssd, hdd, env


def _plan(tmp: Path, origin: str, titles: list[str]) -> None:
    body = {"titles": [{"id": t, "sources": [origin]} for t in titles], "prune": False}
    tmp_plan = tmp / "plan.json.tmp"
    tmp_plan.write_text(json.dumps(body))
    os.replace(tmp_plan, tmp / "plan.json")


def _stored_on(disk: Path) -> set[str]:
    titles = disk / "titles"
    return {p.name for p in titles.iterdir()} if titles.is_dir() else set()


def _ready(doc: dict[str, Any], titles: list[str]) -> bool:
    fill = (doc.get("fill") or {}).get("titles") or {}
    schedule = doc["daemon"]["fill_schedule"] or {}
    done = all((fill.get(t) or {}).get("state") in ("ready", "held") for t in titles)
    return done and not schedule.get("running")


def _disk(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in doc["metrics"]["disks"] if d["path"] == str(path))
    return found


def test_the_daemon_fills_around_a_disk_whose_writes_fail_and_says_so(
    tmp_path: Path, origin: str
) -> None:
    config, ssd, hdd, env = _setup(tmp_path)
    hdd_id = str(hdd.resolve())
    _plan(tmp_path, origin, ["a"])
    daemon = start_daemon(config, env)
    try:
        # The first failed write: the title goes to the other disk, the disk is counted.
        doc = poll(daemon, lambda d: _ready(d, ["a"]), BOUND_S)
        assert doc is not None, "title a was not filled"
        assert doc["fill"]["titles"]["a"]["state"] == "ready"
        counted = poll(daemon, lambda d: _disk(d, hdd.resolve())["write_errors"] == 1, BOUND_S)
        assert counted is not None
        assert _disk(counted, hdd.resolve())["writable"] is True  # one error: shown only

        # The second (the next plan's title tries the disk again): no new writes there.
        _plan(tmp_path, origin, ["a", "b"])
        doc = poll(daemon, lambda d: _ready(d, ["a", "b"]), BOUND_S)
        assert doc is not None, "title b was not filled"
        held_back = poll(
            daemon, lambda d: any(f"disk {hdd_id} not writable" in r
                                  for r in d["health"]["reasons"]), BOUND_S,
        )  # fmt: skip
        assert held_back is not None, "health never said the disk takes no writes"
        assert held_back["health"]["state"] == "degraded"
        disk = _disk(held_back, hdd.resolve())
        assert disk["writable"] is False and disk["in_service"] is True
        assert disk["write_errors"] == 2

        # A later fill places nothing there: no third error.
        _plan(tmp_path, origin, ["a", "b", "c"])
        doc = poll(daemon, lambda d: _ready(d, ["a", "b", "c"]), BOUND_S)
        assert doc is not None, "title c was not filled"
        assert _disk(doc, hdd.resolve())["write_errors"] == 2
        assert doc["daemon"]["fill_schedule"]["last_error"] is None
    finally:
        assert daemon.stop() == 0
    assert _stored_on(ssd) >= {"a", "b", "c"} and _stored_on(hdd) == set()
    assert list((hdd / ".staging").glob("*/*")) == []  # its partial staging dropped


def test_the_command_line_fill_puts_the_titles_on_the_other_disk(
    tmp_path: Path, origin: str
) -> None:
    config, ssd, hdd, env = _setup(tmp_path)
    done = run_cli(
        ["appliance", "fill", "--config", str(config), "--from", origin,
         "--title", "a", "--title", "b", "--json"],
        env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {t: p["state"] for t, p in report["titles"].items()} == {"a": "ready", "b": "ready"}
    assert _stored_on(ssd) == {"a", "b"} and _stored_on(hdd) == set()
    assert f"disk={hdd.resolve()}" in done.stderr  # the log names the failing disk

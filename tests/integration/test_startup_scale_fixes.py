"""The daemon serves before its start-up walk over every stored file is over: the walk (a stat
per file, seconds at 500k files warm and far longer cold) runs in the background, /status says
so, files it has not reached yet are still never served wrong (a cut-short or missing file is
a 404), and what it finds is logged and counted once it is over.

To hold the walk back without timing, the test holds the index's write lock, as any other
process writing the index does: the walk needs it for its first write and waits there, while
nothing before serving needs it. The old daemon walked before it opened the port, so with the
lock held its port stayed closed (TIMER_S releases it, so that the old code fails on an
assertion rather than a hang).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from edgeflix import titlefiles
from tests.conftest import run_cli
from tests.integration.daemon_support import poll, status, write_config
from tests.integration.serve_support import Server, make_title, start

FILLER_TITLES, FILLER_FILES = 400, 50  # 20,000 stored files besides the damaged titles
TIMER_S = 25.0  # under the index's 30 s busy timeout: the old daemon starts after all


class IndexGate:
    """The index's write lock, held by this process (the daemon's writers wait for it)."""

    def __init__(self, index: Path) -> None:
        self.conn = sqlite3.connect(index, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")
        self._lock = threading.Lock()
        self.held = True

    def release(self) -> None:
        with self._lock:
            if self.held:
                self.conn.execute("ROLLBACK")
                self.conn.close()
                self.held = False


def write_fillers(disk: Path) -> None:
    """Many small titles written straight onto a disk, each with its files.json: the daemon's
    walk adopts nothing here, an `appliance reconcile` beforehand adopts them all (one
    command instead of a load per title)."""
    body = b"m" * 64
    digest = hashlib.sha256(body).hexdigest()
    for t in range(FILLER_TITLES):
        top = disk / "titles" / f"filler{t:04d}"
        (top / "v0").mkdir(parents=True)
        entries = []
        for i in range(FILLER_FILES - 1):
            rel = f"v0/seg{i:04d}.m4s"
            (top / rel).write_bytes(body)
            entries.append(titlefiles.FileEntry(path=rel, size=len(body), sha256=digest))
        model = titlefiles.TitleFiles(
            id=top.name,
            title=top.name,
            duration=4.0,
            segment_seconds=4.0,
            created="2026-01-01T00:00:00Z",
            renditions=(),
            files=tuple(entries),
            total_bytes=len(body) * len(entries),
        )
        (top / titlefiles.FILES_JSON).write_bytes(titlefiles.render(model))


def stored(tmp: Path, title_id: str, rel: str) -> Path:
    found = [p for p in (tmp / d / "titles" / title_id / rel for d in ("d0", "d1")) if p.exists()]
    assert len(found) == 1, found
    return found[0]


def damaged_store(tmp: Path) -> Path:
    """A store of 20k+ files where, since the last start, zz-cut's v0/seg1.m4s was cut short
    and zz-gone's deleted. Named last, so the sorted walk reaches them last."""
    config = write_config(tmp)
    for title_id in ("zz-cut", "zz-gone"):
        folder = make_title(tmp / "src" / title_id, title_id)
        run_cli(["appliance", "load", "--config", str(config), "--title", title_id,
                 "--from", str(folder)], check=True)  # fmt: skip
    write_fillers(tmp / "d0")
    adopted = run_cli(["appliance", "reconcile", "--config", str(config)])
    assert adopted.returncode == 0, adopted.stderr
    os.truncate(stored(tmp, "zz-cut", "v0/seg1.m4s"), 1000)
    stored(tmp, "zz-gone", "v0/seg1.m4s").unlink()
    return config


@contextmanager
def gated_daemon(config: Path, tmp: Path) -> Iterator[tuple[Server, IndexGate, Path]]:
    """The daemon started while this process holds the index's write lock; stopped, and the
    lock released, whatever the test found. Its log is the third item."""
    gate = IndexGate(tmp / "index.sqlite")
    log = tmp / "daemon.log"
    timer = threading.Timer(TIMER_S, gate.release)
    timer.start()
    try:
        with log.open("wb") as err:
            server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"),
                           stderr=err)  # fmt: skip
        timer.cancel()
        try:
            yield server, gate, log
        finally:
            server.stop()
    finally:
        timer.cancel()
        gate.release()


def check_of(doc: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = doc["daemon"].get("startup_check") or {}
    return found


def get(server: Server, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(server.url + path, headers=headers, timeout=10)


def findings_logged(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "storage.findings" in line]


def test_the_port_serves_while_the_start_up_walk_runs_and_damage_is_never_served(
    tmp_path: Path,
) -> None:
    config = damaged_store(tmp_path)
    source = tmp_path / "src" / "zz-cut"
    with gated_daemon(config, tmp_path) as (server, gate, log):
        # The walk has not got past its first write: the port serves all the same.
        assert gate.held, "the port opened only once the index was free: walked first"
        check = check_of(status(server))
        assert check.get("state") == "running", check
        # Not reached by the walk: a file cut short or gone is a 404, never wrong bytes.
        for path in ("/titles/zz-cut/v0/seg1.m4s", "/titles/zz-gone/v0/seg1.m4s"):
            for headers in (None, {"Range": "bytes=0-99"}):
                assert get(server, path, headers).status_code == 404, (path, headers)
            head = httpx.head(server.url + path, timeout=10)
            assert head.status_code == 404 and head.headers["content-length"] != "300000"
        poster = get(server, "/titles/zz-cut/poster.jpg")
        assert poster.status_code == 200 and poster.content == (source / "poster.jpg").read_bytes()
        assert get(server, "/titles/filler0399/v0/seg0048.m4s").content == b"m" * 64
        assert check_of(status(server))["state"] == "running"
        assert findings_logged(log) == []  # what the walk finds is said once it has

        gate.release()
        done = poll(server, lambda doc: check_of(doc).get("state") != "running", 20)
        assert done is not None, "the start-up check never ended"
        check = check_of(done)
        assert check["state"] == "done", check
        assert (check["findings"], check["lost"]) == (2, 2), check
        assert check["checked_files"] >= FILLER_TITLES * FILLER_FILES
        assert check["titles_checked"] == check["titles"] == FILLER_TITLES + 2
        for path in ("/titles/zz-cut/v0/seg1.m4s", "/titles/zz-gone/v0/seg1.m4s"):
            assert get(server, path).status_code == 404
        assert get(server, "/titles/zz-gone/poster.jpg").status_code == 200
        assert server.stop() == 0
    lines = log.read_text().splitlines()
    found = {line.partition("title=")[2].split()[0]: line for line in findings_logged(log)}
    assert "size 1000 != 300000" in found["zz-cut"] and "v0/seg1.m4s" in found["zz-cut"]
    assert "missing from its disk" in found["zz-gone"]
    started = next(i for i, line in enumerate(lines) if "appliance.started" in line)
    assert all(lines.index(line) > started for line in found.values())  # after serving began
    reconciled = [line for line in lines if "store.reconciled" in line]
    assert len(reconciled) == 1 and "findings=2 lost=2 titles=2" in reconciled[0], reconciled
    listing = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True)
    states = {t["id"]: t["state"] for t in json.loads(listing.stdout)}
    assert states["zz-cut"] == states["zz-gone"] == "incomplete"
    assert states["filler0000"] == "ready"


def test_a_sigterm_during_the_start_up_walk_stops_the_daemon_at_once(tmp_path: Path) -> None:
    """The walk of a large store must not hold up a stop (an upgrade's restart): it ends where
    it is, and the next start checks everything again."""
    config = write_config(tmp_path)
    folder = make_title(tmp_path / "src" / "movie", "movie")
    run_cli(["appliance", "load", "--config", str(config), "--title", "movie",
             "--from", str(folder)], check=True)  # fmt: skip
    stored(tmp_path, "movie", "v0/seg1.m4s").unlink()
    with gated_daemon(config, tmp_path) as (server, gate, log):
        assert gate.held, "the port opened only once the index was free: walked first"
        assert check_of(status(server)).get("state") == "running"
        assert server.stop(timeout=15) == 0
    assert "appliance.stopped" in log.read_text()
    assert findings_logged(log) == []  # the walk never got to it: nothing half-said

    again = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    try:
        done = poll(again, lambda doc: check_of(doc).get("state") == "done", 20)
        assert done is not None and check_of(done)["lost"] == 1, done
    finally:
        assert again.stop() == 0

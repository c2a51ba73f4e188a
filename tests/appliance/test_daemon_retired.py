"""The supervisor's memory of replaced serving workers (appliance/supervisor.py): their counters
keep the totals from going backwards, in one running sum however many restarts and reloads a
box sees over months, not one snapshot per replaced worker."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.config import ApplianceConfig
from appliance.supervisor import Supervisor, Worker, fold_retired


def _dead_worker(tmp_path: Path, n: int) -> Worker:
    counters = tmp_path / f"worker-{n}.json"
    snap = {
        "requests": [[200, "bunny", 3, 3000], [404, "-", 1, 0], [200, f"title{n % 5}", 1, 10]],
        "open_connections": 7,  # its last file, written before it died with connections open
        "connections_total": 2,
        "rejected_connections": 1,
        "header_timeouts": 0,
        "sendfile_errors": 0,
        "token_rejections": {"expired": 1},
    }
    counters.write_text(json.dumps(snap))
    return Worker(0, {"counters": str(counters)})  # never spawned: not alive


def test_replaced_workers_fold_into_one_running_sum(tmp_path: Path) -> None:
    sup = Supervisor(ApplianceConfig(), tmp_path)
    restarts = 400
    for n in range(restarts):
        sup._retire(_dead_worker(tmp_path, n))
    # As small after 400 restarts as after 5: one entry per (status, title), not per worker.
    assert len(sup.retired["requests"]) == 2 + 5
    view = sup.view()
    assert view.stats.requests[(200, "bunny")] == [3 * restarts, 3000 * restarts]
    assert view.stats.requests[(404, "-")] == [restarts, 0]
    assert sum(c[0] for (s, t), c in view.stats.requests.items() if t.startswith("title")) == 400
    assert view.stats.connections_total == 2 * restarts
    assert view.stats.rejected_connections == restarts
    assert view.stats.open_connections == 0  # a dead worker holds no connection
    assert view.token_rejections == {"expired": restarts}


def test_fold_of_nothing_is_the_snapshot() -> None:
    snap = {"requests": [[200, "a", 1, 5]], "connections_total": 1, "token_rejections": {}}
    folded = fold_retired({}, snap)
    assert folded["requests"] == [[200, "a", 1, 5]]
    assert folded["connections_total"] == 1
    assert fold_retired(folded, {})["requests"] == [[200, "a", 1, 5]]


def test_aborted_responses_survive_a_worker_replacement(tmp_path: Path) -> None:
    sup = Supervisor(ApplianceConfig(), tmp_path)
    for n in range(3):
        worker = _dead_worker(tmp_path, n)
        snap = json.loads(Path(worker.spec["counters"]).read_text())
        snap["aborted"] = {"bunny": 2}
        Path(worker.spec["counters"]).write_text(json.dumps(snap))
        sup._retire(worker)
    assert sup.view().stats.aborted == {"bunny": 6}

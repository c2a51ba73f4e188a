"""Totals that never fall (appliance/supervisor.py, appliance/fleetlink_core.CountLedger).

view() is read by the health monitor's and the fleet link's threads while the main loop
retires dead workers, replaces hung ones and a reload swaps them. A view taken halfway
through a move counted a worker twice (its old file and `retired`) or not at all, and the
fleet link's ledger took the fall that followed for a reset: a title's lifetime demand sent
again. Each move is held halfway here, on a hook, while another thread takes a view; and
real workers are SIGKILLed and restarted under load while a thread takes views.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path, PosixPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import ApplianceConfig
from appliance.fleetlink_core import CountLedger
from appliance.index import connect_writer
from appliance.server import AdminView
from appliance.supervisor import WORKER_SILENT_S, Supervisor, Worker
from edgeflix.proto.codec import Counts

HOLD_S = 5.0  # the longest a hook waits: a bound, never reached when the test passes
VIEW_GRACE_S = 0.5  # how long a view gets to finish while a move is held halfway


def _counters(path: Path, requests: int) -> Path:
    path.write_text(json.dumps({"requests": [[200, "film", requests, requests * 100]]}))
    return path


def _requests(view: AdminView) -> int:
    return sum(c[0] for c in view.stats.requests.values())


def _view_while_held(sup: Supervisor, held: threading.Event, go: threading.Event) -> int:
    """A view from another thread while a move waits at `held`; `go` lets the move finish.
    The view's total is returned: one taken halfway shows the half-done move."""
    assert held.wait(HOLD_S), "the move never reached its hook"
    views: list[int] = []
    viewer = threading.Thread(target=lambda: views.append(_requests(sup.view())))
    viewer.start()
    viewer.join(VIEW_GRACE_S)  # under the lock the view waits for the move instead
    go.set()
    viewer.join(HOLD_S)
    assert len(views) == 1
    return views[0]


class Move:
    """A supervisor's move run in a thread of its own (the loop, a reload), joined with its
    error raised here."""

    def __init__(self, target: Callable[[], object]) -> None:
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(target,))
        self.thread.start()

    def _run(self, target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:  # raised again in the test's thread by join()
            self.errors.append(exc)

    def join(self) -> None:
        self.thread.join(HOLD_S)
        assert not self.thread.is_alive()
        if self.errors:
            raise self.errors[0]


# -- each move, held halfway ------------------------------------------------------------------


class HeldPath(PosixPath):
    """A counters file deleted only once the test says so: the moment between a worker's
    counts joining `retired` and its file going."""

    held: threading.Event
    go: threading.Event

    def unlink(self, missing_ok: bool = False) -> None:
        self.held.set()
        self.go.wait(HOLD_S)
        super().unlink(missing_ok)


def test_a_view_never_counts_a_restarting_worker_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that died is restarted in its slot, its counts retired first."""
    held, go = threading.Event(), threading.Event()
    sup = Supervisor(ApplianceConfig(), tmp_path)
    dead = Worker(0, {"counters": str(_counters(tmp_path / "w.json", 5))})
    dead.proc = subprocess.Popen(["true"])
    dead.proc.wait()
    dead.started = time.monotonic() - 5  # past the restart backoff
    dead.counters = HeldPath(dead.counters)
    dead.counters.held, dead.counters.go = held, go
    sup.workers.append(dead)
    monkeypatch.setattr(Worker, "spawn", lambda w: None)  # the successor has no counts yet
    loop = Move(sup.check_workers)
    assert _view_while_held(sup, held, go) == 5  # was 10: the file and `retired`
    loop.join()
    assert not dead.counters.exists() and _requests(sup.view()) == 5


class HeldRead(Worker):
    """A drained worker whose counters the thread named `viewer` reads, then waits at `go`:
    a view held halfway, between the workers' files and `retired`."""

    def __init__(self, counters: Path, held: threading.Event, go: threading.Event) -> None:
        super().__init__(0, {"counters": str(counters), "stop_timeout_s": 10})
        self.held, self.go = held, go

    def snapshot(self) -> dict[str, Any]:
        data = super().snapshot()
        if threading.current_thread().name == "viewer":
            self.held.set()
            self.go.wait(HOLD_S)
        return data


def test_a_view_never_counts_a_reaped_worker_twice(tmp_path: Path) -> None:
    """A drained worker's process is gone: the loop reaps it, its counts retired."""
    held, go = threading.Event(), threading.Event()
    sup = Supervisor(ApplianceConfig(), tmp_path)
    sup.draining.append(HeldRead(_counters(tmp_path / "w.json", 5), held, go))
    views: list[int] = []
    viewer = threading.Thread(target=lambda: views.append(_requests(sup.view())), name="viewer")
    viewer.start()
    assert held.wait(HOLD_S)
    loop = Move(sup.check_workers)
    loop.thread.join(VIEW_GRACE_S)  # under the lock the reaping waits for the view instead
    go.set()
    viewer.join(HOLD_S)
    loop.join()
    assert views == [5]  # was 10: its file read, then `retired` holding the same counts
    assert sup.draining == [] and _requests(sup.view()) == 5


def test_a_view_never_counts_a_hung_worker_twice(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    held, go = threading.Event(), threading.Event()

    def held_spawn(worker: Worker) -> None:  # the successor starting: the old one moved
        held.set()
        go.wait(HOLD_S)
        worker.started = worker.heard = time.monotonic()

    sup = Supervisor(ApplianceConfig(), tmp_path)
    hung = Worker(0, {"counters": str(_counters(tmp_path / "w.json", 5)), "stop_timeout_s": 10})
    hung.proc, hung.ready = sleeper, True
    hung.started = time.monotonic() - WORKER_SILENT_S - 5
    hung.listen(hung.started)  # its file last rewritten that long ago
    sup.workers.append(hung)
    monkeypatch.setattr(Worker, "spawn", held_spawn)
    loop = Move(sup.check_workers)
    assert _view_while_held(sup, held, go) == 5  # was 10: in `workers` and `draining`
    loop.join()
    assert hung.killed and sup.workers[0] is not hung
    assert _requests(sup.view()) == 5


class HeldDrain(Worker):
    """A worker a reload replaces, told to drain only once the test says so: the moment
    between leaving `workers` and joining `draining`."""

    def __init__(self, counters: Path, held: threading.Event, go: threading.Event) -> None:
        super().__init__(0, {"counters": str(counters), "stop_timeout_s": 10})
        self.held, self.go = held, go

    def drain(self) -> None:
        self.held.set()
        self.go.wait(HOLD_S)


class NoSpawn(Supervisor):
    """A reload's new workers, taken as started without a process (they have no counts)."""

    @staticmethod
    def _started(worker: Worker) -> bool:
        return True


def test_a_view_never_misses_a_worker_a_reload_replaces(tmp_path: Path) -> None:
    held, go = threading.Event(), threading.Event()
    previous = ApplianceConfig.model_validate({"serve": {"workers": 1}})
    config = ApplianceConfig.model_validate({"serve": {"workers": 1, "sendfile": False}})
    sup = NoSpawn(previous, tmp_path)
    old = HeldDrain(_counters(tmp_path / "w.json", 5), held, go)
    sup.workers.append(old)
    reload = Move(lambda: sup.reshape(config, previous))
    assert _view_while_held(sup, held, go) == 5  # was 0: in neither list
    reload.join()
    assert sup.draining == [old] and _requests(sup.view()) == 5


# -- real workers, killed under load --------------------------------------------------------


def test_totals_never_fall_while_real_workers_are_killed_and_restarted(tmp_path: Path) -> None:
    """The reviewer's run, bounded: 3 workers serving a stream of requests, one SIGKILLed
    every ~1.2 s and restarted by check_workers as the daemon's loop calls it, while a
    thread takes views as the health monitor and the fleet link do. Before the fix most
    kills made the total jump by a worker's counts and fall back."""
    index = tmp_path / "index.sqlite"
    connect_writer(index).close()
    config = ApplianceConfig.model_validate(
        {"storage": {"index": str(index)}, "serve": {"workers": 3}}
    )
    run = tmp_path / "run"
    run.mkdir()
    sup = Supervisor(config, run)
    reserve = socket.socket()
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", 0))  # the port, held as the daemon holds it
    port = reserve.getsockname()[1]
    stop = threading.Event()
    falls: list[tuple[int, int]] = []
    views = [0]

    def viewer() -> None:
        last = 0
        while not stop.is_set():
            total = _requests(sup.view())
            views[0] += 1
            if total < last:
                falls.append((last, total))
            last = total

    def load() -> None:
        while not stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                for _ in range(50):
                    conn.request("GET", "/titles/none/master.m3u8")  # a 404: counted too
                    conn.getresponse().read()
                conn.close()
            except (OSError, http.client.HTTPException):
                time.sleep(0.02)  # its worker was killed mid-request

    threads = [threading.Thread(target=viewer), threading.Thread(target=load)]
    try:
        sup.start_workers("127.0.0.1", port)
        for t in threads:
            t.start()
        kills = 0
        for n in range(4):
            time.sleep(0.6)  # every worker has written counts since its start
            worker = sup.workers[n % len(sup.workers)]
            if worker.proc is not None and worker.alive():
                os.kill(worker.proc.pid, signal.SIGKILL)
                kills += 1
            for _ in range(12):  # the restart backoff (1 s) passes, as in the daemon's loop
                sup.check_workers()
                time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join(5)
        sup.stop_workers()
        reserve.close()
    assert kills >= 4 and views[0] > 100
    assert _requests(sup.view()) > 0
    assert not falls, f"{len(falls)} falls in {views[0]} views after {kills} kills: {falls[:5]}"


# -- the ledger's rule ----------------------------------------------------------------------


def test_a_fall_counts_nothing_until_the_total_passes_its_high() -> None:
    """The reviewer's readings: 1000, 1010, 1005 made 2015 pending (the fall re-added the
    whole total); a fall is a reading that missed a worker's counts."""
    ledger = CountLedger()
    for requests in (1000, 1010, 1005):
        ledger.observe({"a": (requests, requests * 10)})
    assert ledger.unsent() == {"a": Counts(1010, 10100)}
    ledger.observe({"a": (1008, 10080)})  # still below the high: nothing
    ledger.observe({"a": (1020, 10200)})
    assert ledger.unsent() == {"a": Counts(1020, 10200)}


def test_a_title_missing_from_one_reading_is_not_counted_again() -> None:
    """Its only counts were in a file the reading missed: when they come back they are the
    same requests, not new ones."""
    ledger = CountLedger()
    ledger.observe({"a": (10, 100), "b": (3, 30)})
    ledger.observe({"a": (12, 120)})
    ledger.observe({"a": (12, 120), "b": (4, 40)})
    assert ledger.unsent() == {"a": Counts(12, 120), "b": Counts(4, 40)}


def test_requests_and_bytes_keep_their_own_high() -> None:
    ledger = CountLedger()
    ledger.observe({"a": (10, 1000)})
    ledger.observe({"a": (9, 1500)})  # cannot happen in one reading; each counts alone
    ledger.observe({"a": (11, 1500)})
    assert ledger.unsent() == {"a": Counts(11, 1500)}


# Each step: requests served to the title on each of 3 workers, and which workers' counts a
# reading missed (their file unreadable at that moment).
readings = st.lists(
    st.tuples(st.tuples(*[st.integers(0, 9)] * 3), st.sets(st.integers(0, 2))), max_size=40
)


@settings(max_examples=200, deadline=None)
@given(readings)
def test_readings_missing_workers_never_change_the_sum(
    steps: list[tuple[tuple[int, ...], set[int]]],
) -> None:
    ledger = CountLedger()
    served = [0, 0, 0]
    for new, missed in steps:
        served = [s + n for s, n in zip(served, new, strict=True)]
        seen = sum(s for i, s in enumerate(served) if i not in missed)
        ledger.observe({"a": (seen, seen * 7)})
    ledger.observe({"a": (sum(served), sum(served) * 7)})  # a whole reading at last
    total = sum(served)
    assert ledger.unsent() == ({"a": Counts(total, total * 7)} if total else {})

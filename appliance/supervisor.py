"""The appliance's serving workers and their supervisor: fresh interpreters running
appliance/worker.py (their spec as JSON on stdin, sharing the port by SO_REUSEPORT), started,
restarted when they die, replaced when their loop stops turning (a worker rewrites its
counters file twice a second), reshaped to a new config on a reload, drained on stop.
appliance/daemon.py runs one Supervisor.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from appliance.config import ApplianceConfig
from appliance.keyfile import KeySet, write_keys
from appliance.server import AdminView
from edgeflix.errors import EdgeflixError
from edgeflix.http.stats import merge
from edgeflix.log import event

log = logging.getLogger("appliance.daemon")  # the daemon's own lines, as before the split
READY_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = 1.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
KEYS_ACK_TIMEOUT_S = 10.0
# A worker rewrites its counters file every 0.5 s from its event loop (edgeflix/http/runner.py);
# this long without a rewrite its loop is not turning: stopped, or stuck in a blocking call such
# as a read from a dying disk. Twenty write periods, so a loop merely held up (a CPU-starved
# box, a slow journal commit under the rename, a page-in after swap) is never taken for hung.
WORKER_SILENT_S = 10.0
# Before it says `ready` a worker is still starting (imports, the index): the start-up bound.
FIRST_WRITE_S = READY_TIMEOUT_S + WORKER_SILENT_S
# SIGTERM to a worker's exit: its shutdown_timeout_s and this much for the last counters.
DRAIN_SLACK_S = 2.0


class DaemonError(EdgeflixError):
    """The daemon could not start (port taken, worker failed to start, bad store)."""


def serving_spec(config: ApplianceConfig) -> dict[str, Any]:
    """What a worker is started with that only a new worker can change. Keys and the token
    switch reach running workers through the key file; `serve.workers` is how many run."""
    s = config.serve
    return {
        "settings": {
            "header_timeout_s": s.header_timeout_s,
            "keepalive_timeout_s": s.keepalive_timeout_s,
            "max_connections": s.max_connections,
            "max_header_bytes": s.max_header_bytes,
            "use_sendfile": s.sendfile,
            "disk_timeout_s": s.disk_timeout_s,
            "disk_threads": s.disk_threads,
        },
        "stop_timeout_s": s.shutdown_timeout_s,
    }


def worker_spec(
    config: ApplianceConfig, host: str, port: int, counters: Path, keys_file: Path | None = None
) -> dict[str, Any]:
    """Everything a worker needs, as plain JSON (workers never load pydantic: memory)."""
    return {
        "host": host,
        "port": port,
        "counters": str(counters),
        "index": str(config.storage.index),
        **serving_spec(config),
        "tokens_required": config.auth.tokens == "required",
        "keys": {k.id: k.secret for k in config.auth.keys},
        "keys_file": str(keys_file) if keys_file else None,
    }


def key_set(
    config: ApplianceConfig,
    generation: int,
    fleet_keys: Mapping[str, bytes] | None = None,
    clock_correction: float = 0.0,
) -> KeySet:
    # The fleet's keys (appliance/fleetlink.py) join the configured ones; with them, the
    # correction its link learned of this box's clock (token expiries are the fleet's).
    keys = {**{k.id: k.secret_bytes() for k in config.auth.keys}, **(fleet_keys or {})}
    return KeySet(generation, config.auth.tokens == "required", keys, clock_correction)


# -- serving workers ------------------------------------------------------------------------


class Worker:
    def __init__(self, index: int, spec: Mapping[str, Any]) -> None:
        self.index = index
        self.spec = spec
        self.counters = Path(spec["counters"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.heard = 0.0  # when the supervisor last saw the counters file rewritten
        self.ready = False  # it said so: its loop turns, and its first write is due
        self.size = 0  # of the counters file, as last seen
        self._stamp: tuple[int, int] | None = None  # (inode, mtime) of that file
        self.drained_at: float | None = None  # when it was told to drain
        self.killed = False  # found hung, and SIGKILLed

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.spec).encode())
        self.proc.stdin.close()
        self.started = self.heard = time.monotonic()
        self._stamp, self.drained_at, self.ready = None, None, False

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        line = _readline(self.proc.stdout, timeout)
        if line.strip() != b"ready":
            self.proc.kill()
            self.proc.wait()  # reaped: no zombie left per failed start
            raise DaemonError(f"serving worker {self.index} failed to start (see log above)")
        self.ready, self.heard = True, time.monotonic()

    def alive(self) -> bool:
        """The process runs (whether its loop turns is `silent`)."""
        return self.proc is not None and self.proc.poll() is None

    def listen(self, now: float) -> None:
        """Note a rewrite of the counters file since the last look (each atomic replace is a
        new inode), or, from a restarted worker, its `ready`. Timed on the supervisor's
        monotonic clock, not by the file's mtime: a step of the wall clock must not make
        every worker look silent at once."""
        out = self.proc.stdout if self.proc is not None and not self.ready else None
        if out is not None and _readline(out, 0).strip() == b"ready":
            self.ready, self.heard = True, now
        try:
            st = self.counters.stat()
        except OSError:
            return
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp != self._stamp:
            self._stamp, self.heard, self.size = stamp, now, st.st_size

    def silent(self, now: float, blind_until: float = 0.0) -> bool:
        """No rewrite for longer than a turning loop allows, counted from `blind_until` at the
        earliest (until then the run folder refused writes: silence proved nothing)."""
        bound = WORKER_SILENT_S if self.ready or self._stamp is not None else FIRST_WRITE_S
        return now - max(self.heard, blind_until) > bound

    def overdue(self, now: float) -> bool:
        """Draining for longer than its own shutdown_timeout_s allows: stuck, not finishing."""
        if self.drained_at is None:
            return False
        return now - self.drained_at > float(self.spec["stop_timeout_s"]) + WORKER_SILENT_S

    def drain(self) -> None:
        """SIGTERM: the worker stops accepting and finishes its in-flight responses."""
        if self.alive() and self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            if self.drained_at is None:
                self.drained_at = time.monotonic()

    def kill(self) -> None:
        """SIGKILL, not waited for: a worker stuck in the kernel (a dying disk) may take its
        time to go, and the supervisor's loop must not wait with it."""
        if self.alive() and self.proc is not None:
            self.proc.kill()
        self.killed = True

    def snapshot(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.counters.read_text())
        except (OSError, ValueError):
            return {}
        if not self.alive() or self.killed:
            data["open_connections"] = 0
        return data


def fold_retired(total: Mapping[str, Any], snap: Mapping[str, Any]) -> dict[str, Any]:
    """One snapshot holding the sums of both: a replaced worker's counters added to those of
    the workers replaced before it. Open connections are 0 (a retired worker has none)."""
    folded = merge([total, snap]).snapshot()
    folded["open_connections"] = 0
    rejections = {str(k): int(v) for k, v in total.get("token_rejections", {}).items()}
    for reason, n in snap.get("token_rejections", {}).items():
        rejections[str(reason)] = rejections.get(str(reason), 0) + int(n)
    folded["token_rejections"] = rejections
    return folded


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it (a graceful drain) if the supervisor dies, even by
    SIGKILL, so no orphaned worker keeps the port. Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else b""


class Supervisor:
    """The serving workers: start, restart the dead, replace the hung, reshape to a new config
    (a reload), drain on stop. A reshape runs in a thread while the loop goes on checking
    workers, and view() is read from other threads (the health monitor, the fleet link).

    A worker's counts are in exactly one place: its counters file while it is in `workers`
    or `draining`, `retired` once it is gone. Moving it (and deleting its file) happens
    under `_lock` in one step, and view() reads under `_lock`: a view taken halfway would
    count a worker twice or not at all, and its totals would jump and fall back. Nothing
    under `_lock` waits on a process; reading and deleting small counters files is all."""

    def __init__(self, config: ApplianceConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.keys_file = run_dir / "keys.json"
        self.keys_generation = 0
        self.fleet_keys: dict[str, bytes] = {}
        self.fleet_correction = 0.0  # seconds the workers add to their clock for tokens
        self._keys_lock = threading.Lock()  # SIGHUP and the fleet link both publish
        self._lock = threading.RLock()  # `workers`, `draining`, `retired`: see the class
        self._abort = threading.Event()  # stopping: a reshape ends after its current worker
        self.workers: list[Worker] = []
        self.draining: list[Worker] = []  # replaced, finishing their connections (or killed)
        # Counters of replaced workers, so totals never go backwards after a restart: one
        # running sum, not a snapshot per replaced worker (restarts and reloads over months
        # would grow that list, and every scrape and beat would sum it again).
        self.retired: dict[str, Any] = {}
        self._spawned = 0
        self._blind_until = 0.0  # the run folder refused a write then: silence proves nothing
        self.host, self.port = "", 0

    def _counters(self, index: int) -> Path:
        with self._lock:
            self._spawned += 1
            return self.run_dir / f"worker-{index}-{self._spawned}.json"

    def _new_worker(self, index: int) -> Worker:
        counters = self._counters(index)
        spec = worker_spec(self.config, self.host, self.port, counters, self.keys_file)
        return Worker(index, spec)

    def start_workers(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        keys = key_set(self.config, self.keys_generation, self.fleet_keys, self.fleet_correction)
        write_keys(self.keys_file, keys)
        for i in range(self.config.serve.workers):
            worker = self._new_worker(i)
            worker.spawn()
            with self._lock:
                self.workers.append(worker)
        for worker in self.workers:
            worker.wait_ready(READY_TIMEOUT_S)

    def check_workers(self) -> None:
        """Every tick: restart the dead, replace the hung, reap the drained and kill a drain
        that overran its bound."""
        now = time.monotonic()
        for worker in list(self.workers):
            worker.listen(now)
        self._mind_the_folder(now)
        with self._lock:
            for i, worker in enumerate(self.workers):
                if worker.alive():
                    if worker.silent(now, self._blind_until):
                        self.workers[i] = self._replace_hung(worker, now)
                    continue
                if now - worker.started < RESTART_BACKOFF_S:
                    continue
                code = worker.proc.returncode if worker.proc else None
                event(log, "worker.died", logging.ERROR, worker=worker.index, code=code)
                self._retire(worker)
                worker.spawn()
            for worker in [w for w in self.draining if w.overdue(now) and not w.killed]:
                event(log, "worker.hung", logging.ERROR, worker=worker.index, draining=True)
                worker.kill()
            for worker in [w for w in self.draining if not w.alive()]:
                self.draining.remove(worker)
                self._retire(worker)
                event(log, "worker.reaped" if worker.killed else "worker.drained",
                      worker=worker.index)  # fmt: skip

    def _mind_the_folder(self, now: float) -> None:
        """Workers outlive a full or vanished run folder (runner.py's _Ticker): while it
        refuses a write as large as a silent worker's counters, their silence proves nothing."""
        silent = [w for w in self.workers if w.alive() and w.silent(now, self._blind_until)]
        if not silent:
            return
        probe = self.run_dir / "probe.tmp"
        try:
            probe.write_bytes(bytes(max(w.size for w in silent)))
        except OSError:
            self._blind_until = now
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    def _replace_hung(self, worker: Worker, now: float) -> Worker:
        """SIGKILL (a stopped or stuck loop honours nothing gentler; the kernel hands its
        share of new connections to the others once it is gone) and start another in its
        slot, with its spec. Called under `_lock`."""
        pid = worker.proc.pid if worker.proc else None
        event(log, "worker.hung", logging.ERROR, worker=worker.index, pid=pid,
              silent_s=round(now - worker.heard, 1))  # fmt: skip
        worker.kill()
        self.draining.append(worker)  # reaped, its counters kept, once the kernel lets it go
        counters = self._counters(worker.index)
        fresh = Worker(worker.index, {**worker.spec, "counters": str(counters)})
        fresh.spawn()
        return fresh

    def _retire(self, worker: Worker) -> None:
        """Its counts move from its file to `retired`: one step for view() (the caller
        holds `_lock` also while it takes the worker out of its list)."""
        with self._lock:
            self.retired = fold_retired(self.retired, worker.snapshot())
            with contextlib.suppress(OSError):
                worker.counters.unlink()

    def serving(self) -> list[Worker]:
        """The workers that serve: running, their loop turning (or not yet due to write)."""
        now = time.monotonic()
        return [w for w in list(self.workers) if w.alive() and not w.silent(now, self._blind_until)]

    def alive(self) -> int:
        return len(self.serving())

    def view(self) -> AdminView:
        """The sum of every worker's counts, as of one moment (see the class): the lists,
        their files and `retired` read under `_lock`, the merging done after."""
        with self._lock:
            snaps = [w.snapshot() for w in [*self.workers, *self.draining]]
            snaps.append(self.retired)
            alive, slots = self.alive(), len(self.workers)
        rejections: dict[str, int] = {}
        for snap in snaps:
            for reason, n in snap.get("token_rejections", {}).items():
                rejections[reason] = rejections.get(reason, 0) + int(n)
        return AdminView(merge(snaps), alive, slots, rejections)

    # -- reload ----------------------------------------------------------------------------

    def publish_keys(self, config: ApplianceConfig) -> bool:
        """Hand new keys to the running workers; True once every serving worker applied them
        (a hung one is not waited for: check_workers replaces it, and its successor reads
        the new file when it starts)."""
        with self._keys_lock:
            self.config = config
            self.keys_generation += 1
            generation = self.keys_generation
            keys = key_set(config, generation, self.fleet_keys, self.fleet_correction)
            write_keys(self.keys_file, keys)
        deadline = time.monotonic() + KEYS_ACK_TIMEOUT_S
        while time.monotonic() < deadline and not self._abort.is_set():
            if all(w.snapshot().get("keys_generation", 0) >= generation for w in self.serving()):
                return True
            time.sleep(0.05)
        return False

    def reshape(self, config: ApplianceConfig, previous: ApplianceConfig) -> None:
        """Serve `config` where `previous` was served. Only when what a worker is started with
        changed (serving_spec) are the workers replaced, one at a time; otherwise only the
        difference in `serve.workers` is started or drained, and no connection is touched.
        A new worker listens on the shared port before the old one stops accepting, so the
        port never closes; the old one finishes its connections while draining, up to its
        own shutdown_timeout_s (stop_workers waits for the longer of its and the new one).

        A replacement that does not start (settings that cannot work, an index gone bad)
        leaves its old worker serving, and DaemonError follows once the rest is done; when
        the very first one fails, nothing has changed. After a failure, workers that die are
        restarted with the previous settings."""
        self.config = config
        wanted = config.serve.workers
        kept: list[int] = []
        if serving_spec(config) != serving_spec(previous):
            for i in range(min(len(self.workers), wanted)):
                if self._abort.is_set():
                    break
                new = self._new_worker(i)
                if not self._started(new):
                    if i == 0:
                        self.config = previous
                        raise DaemonError(
                            "a worker with the new settings failed to start (see log above); "
                            "the old workers go on serving"
                        )
                    kept.append(i)
                    continue
                with self._lock:
                    old, self.workers[i] = self.workers[i], new
                    self._drain(old)
        while len(self.workers) < wanted and not self._abort.is_set():
            new = self._new_worker(len(self.workers))
            if not self._started(new):
                kept.append(len(self.workers))
                break
            with self._lock:
                self.workers.append(new)
        with self._lock:
            while len(self.workers) > wanted:
                self._drain(self.workers.pop())
        if self._abort.is_set():
            raise DaemonError("the daemon is stopping: the reload ended half done")
        if kept:
            # A worker that dies later is restarted with settings known to start.
            self.config = previous
            raise DaemonError(f"worker slots {kept} kept their old settings (see log above)")

    def _drain(self, worker: Worker) -> None:
        """Called under `_lock`, in the same hold that took `worker` out of `workers`."""
        worker.drain()
        self.draining.append(worker)

    def abort(self) -> None:
        """Stopping: a reshape in progress ends after the worker it is starting."""
        self._abort.set()

    @staticmethod
    def _started(worker: Worker) -> bool:
        try:
            worker.spawn()
            worker.wait_ready(READY_TIMEOUT_S)
        except (DaemonError, OSError):
            return False
        return True

    def stop_workers(self) -> None:
        """Drain every worker; SIGKILL one still there after the longer of its own
        shutdown_timeout_s and the current one (a reload may have changed it either way),
        plus DRAIN_SLACK_S."""
        self.abort()
        with self._lock:
            every = [*self.workers, *self.draining]
        for worker in every:
            worker.drain()
        start, current = time.monotonic(), self.config.serve.shutdown_timeout_s
        for worker in every:
            if worker.proc is None:
                continue
            bound = max(float(worker.spec["stop_timeout_s"]), current) + DRAIN_SLACK_S
            try:
                worker.proc.wait(max(start + bound - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                event(log, "worker.killed", logging.WARNING, worker=worker.index)
                worker.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(DRAIN_SLACK_S)  # one stuck in the kernel: not forever

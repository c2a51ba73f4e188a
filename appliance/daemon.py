"""`edgeflix appliance run`: the supervisor process of the appliance and its subsystems.

The supervisor settles the store (repair.settle: what the index alone says must change), runs
`serve.workers` serving workers (fresh interpreters running appliance/worker.py, their spec as
JSON on stdin, sharing the port by SO_REUSEPORT), restarts any that die, and runs the
background subsystems, each a small object with start/stop: the start-up check (the rest of
the reconcile: a stat per stored file, so never before serving), the health monitor
(monitor.py: disks, health, hardware profile), and once the check is over the tier mover, the
scrub, the sweeper and the fill scheduler (fill/scheduler.py); the admin listener serves
/healthz, /metrics and /status.
Lifecycle (sd_notify READY/WATCHDOG/RELOADING/STOPPING, SIGTERM drain, SIGHUP reload) is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import uvloop

from appliance import sdnotify
from appliance.config import ApplianceConfig
from appliance.fill.scheduler import FillScheduler
from appliance.keyfile import KeySet, write_keys
from appliance.monitor import HealthMonitor, ServingErrors, status_totals
from appliance.server import AdminSite, AdminView
from appliance.status import assemble
from edgeflix import pidlock
from edgeflix.config import format_hostport, parse_hostport
from edgeflix.errors import EdgeflixError
from edgeflix.http.runner import install_signals
from edgeflix.http.server import FileServer, ServerSettings, bind, url_of
from edgeflix.http.stats import merge
from edgeflix.log import event

if TYPE_CHECKING:
    from appliance.config import StorageConfig
    from appliance.findings import Report

log = logging.getLogger("appliance.daemon")
READY_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = 1.0
TICK_S = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
KEYS_ACK_TIMEOUT_S = 10.0
# The health thread goes round every second; this much silence means it is stuck.
HEALTH_STALE_S = 15.0
# A worker rewrites its counters file every 0.5 s from its event loop (edgeflix/http/runner.py);
# this long without a rewrite its loop is not turning: stopped, or stuck in a blocking call such
# as a read from a dying disk. Twenty write periods, so a loop merely held up (a CPU-starved
# box, a slow journal commit under the rename, a page-in after swap) is never taken for hung.
WORKER_SILENT_S = 10.0
# Before it says `ready` a worker is still starting (imports, the index): the start-up bound.
FIRST_WRITE_S = READY_TIMEOUT_S + WORKER_SILENT_S
# SIGTERM to a worker's exit: its shutdown_timeout_s and this much for the last counters.
DRAIN_SLACK_S = 2.0
# A stopping daemon waits this long for the start-up check to reach its next title (it asks
# between titles); one busy longer (re-hashing a returned disk) is left to the exit, which
# loses nothing: every step of a reconcile is safe to cut short.
CHECK_STOP_S = 5.0


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
    config: ApplianceConfig, generation: int, fleet_keys: Mapping[str, bytes] | None = None
) -> KeySet:
    # The fleet's keys (appliance/fleetlink.py) join the configured ones.
    keys = {**{k.id: k.secret_bytes() for k in config.auth.keys}, **(fleet_keys or {})}
    return KeySet(generation, config.auth.tokens == "required", keys)


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
    workers: the lists change only under `_lock`, each time briefly."""

    def __init__(self, config: ApplianceConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.keys_file = run_dir / "keys.json"
        self.keys_generation = 0
        self.fleet_keys: dict[str, bytes] = {}
        self._keys_lock = threading.Lock()  # SIGHUP and the fleet link both publish
        self._lock = threading.RLock()  # `workers` and `draining`: the loop and a reshape
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
        write_keys(self.keys_file, key_set(self.config, self.keys_generation, self.fleet_keys))
        for i in range(self.config.serve.workers):
            worker = self._new_worker(i)
            worker.spawn()
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
        snaps = [w.snapshot() for w in [*self.workers, *self.draining]]
        snaps.append(self.retired)
        rejections: dict[str, int] = {}
        for snap in snaps:
            for reason, n in snap.get("token_rejections", {}).items():
                rejections[reason] = rejections.get(reason, 0) + int(n)
        return AdminView(merge(snaps), self.alive(), len(self.workers), rejections)

    # -- reload ----------------------------------------------------------------------------

    def publish_keys(self, config: ApplianceConfig) -> bool:
        """Hand new keys to the running workers; True once every serving worker applied them
        (a hung one is not waited for: check_workers replaces it, and its successor reads
        the new file when it starts)."""
        with self._keys_lock:
            self.config = config
            self.keys_generation += 1
            generation = self.keys_generation
            write_keys(self.keys_file, key_set(config, generation, self.fleet_keys))
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


# -- start-up helpers -----------------------------------------------------------------------


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) so port 0 becomes one concrete port all workers share."""
    # Resolved as edgeflix.http.server.bind resolves it (a name may have only an IPv6
    # address); that one also listens, which a reservation must not: the kernel would
    # hand the reservation connections no worker accepts.
    sock: socket.socket | None = None
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError as exc:  # gaierror too: a name that does not resolve
        if sock is not None:
            sock.close()
        raise DaemonError(
            f"cannot listen on {format_hostport(host, port)}: {exc.strerror}"
        ) from None
    return sock, sock.getsockname()[1]


def _settle_store(config: ApplianceConfig, out_of_service: set[str]) -> Report:
    """Open the store on the disks in service (creates the index) and settle it: what must be
    right before anything serves, found in the index alone (repair.settle). The rest of the
    start-up reconcile is StartupCheck's, once the daemon serves."""
    from appliance.repair import settle
    from appliance.store import Store

    store = Store(config.storage, out_of_service=out_of_service)
    try:
        return settle(store)  # it logs what it found, summarised per title and disk
    finally:
        store.close()


class StartupCheck(threading.Thread):
    """The start-up reconcile's walk, in the background once the daemon serves: a stat per
    stored file takes seconds at 500k files with a warm cache, far longer cold on disks, and
    nothing was served meanwhile when it ran first. Disks back in service get their missing
    files re-verified (restore_disk: before the walk, which would sweep them away), then
    repair.reconcile checks every file's size and sweeps what the index does not place
    (unfinished versions, partial files, strays) and aligns tier labels. Until it has reached
    a file, a request for it is safe anyway: the server compares the size of each file it
    opens with the index's, so a missing or cut-short file is a 404, never a wrong body.
    Then `then` starts what must find a checked store, once, unless the daemon is stopping."""

    def __init__(
        self,
        config: StorageConfig,
        out_of_service: Callable[[], set[str]],
        settled: Report,
        then: Callable[[], None],
    ) -> None:
        super().__init__(name="startup-check", daemon=True)
        self._config, self._out_of_service = config, out_of_service
        self._settled, self._then = settled, then
        self._halted = threading.Event()
        self._then_lock = threading.Lock()  # `then` runs whole or not at all once halted
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {
            "state": "running",  # then done, stopped (the daemon was) or failed
            "started": time.time(),
            "finished": None,
            "titles": None,  # to check, once known
            "titles_checked": 0,
            "checked_files": None,
            "findings": None,
            "lost": None,
            "error": None,
        }

    def status(self) -> dict[str, Any]:
        """For /status: whether the check still runs, how far it got, what it found."""
        with self._lock:
            return dict(self._status)

    def halt(self) -> None:
        """The daemon stops: the walk ends at its next title, and `then` never runs after
        this returns (one already running has finished)."""
        self._halted.set()
        with self._then_lock:
            pass

    def run(self) -> None:
        began = time.monotonic()
        try:
            report = self._check()
        except Exception as exc:  # logged and shown (not only on stderr); the rest must start
            reason = str(exc) if isinstance(exc, (EdgeflixError, OSError)) else repr(exc)
            self._update(state="failed", finished=time.time(), error=reason)
            event(log, "store.check_failed", logging.ERROR, reason=reason,
                  action="the sweeper checks again every reconcile_interval_s")  # fmt: skip
        else:
            self._report(report, time.monotonic() - began)
        with self._then_lock:
            if self._halted.is_set():
                return
            try:
                self._then()
            except Exception as exc:  # a thread's error would otherwise only reach stderr
                self._update(error=f"background subsystems did not start: {exc!r}")
                event(log, "appliance.subsystems_failed", logging.ERROR, reason=repr(exc))

    def _check(self) -> Report:
        from appliance.fill.storage import restore_disk
        from appliance.index import MISSING
        from appliance.repair import reconcile
        from appliance.store import Store

        store = Store(self._config, out_of_service=self._out_of_service())
        try:
            for disk in store.disks:
                if self._halted.is_set():
                    break
                row = store.conn.execute(
                    "SELECT 1 FROM files WHERE disk = ? AND state = ? LIMIT 1", (disk.id, MISSING)
                ).fetchone()
                if row:
                    ready, bad = restore_disk(store, disk.id)
                    event(log, "store.restored", disk=disk.id, titles=len(ready), bad=len(bad))
            return reconcile(store, stop=self._halted.is_set, progress=self._progress)
        finally:
            store.close()

    def _progress(self, done: int, total: int) -> None:
        self._update(titles=total, titles_checked=done)

    def _report(self, report: Report, seconds: float) -> None:
        """Totals of both parts (reconcile logged each finding, summarised): one line."""
        found = [*self._settled.findings, *report.findings]
        lost = sum(1 for f in found if f.damage)
        with self._lock:
            status = self._status
            if not report.stopped:  # every title checked (None: there was none to check)
                total = status["titles"] or 0
                status.update(titles=total, titles_checked=total)
            status["state"] = "stopped" if report.stopped else "done"
            status.update(finished=time.time(), checked_files=report.checked_files,
                          findings=len(found), lost=lost)  # fmt: skip
        event(log, "store.reconciled", logging.WARNING if lost else logging.INFO,
              findings=len(found), lost=lost, titles=len({f.title for f in found if f.title}),
              files=report.checked_files, busy=len(report.busy), seconds=round(seconds, 2),
              complete=not report.stopped)  # fmt: skip

    def _update(self, **fields: Any) -> None:
        with self._lock:
            self._status.update(fields)


def run_folder(config: ApplianceConfig, env: Mapping[str, str] = os.environ) -> Path:
    """Where the daemon keeps its run files (the key file with the token secrets, the
    workers' counters, rewritten every half second): one fixed place, so the next start
    clears what a daemon killed outright left behind, instead of one more temporary folder
    per crash. Under systemd, its RuntimeDirectory= (a private tmpfs: no writes to an SD
    card twice a second); otherwise beside the index and its daemon lock."""
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime, "run").absolute()
    return Path(f"{config.storage.index}.run").absolute()


def _fresh_run_folder(top: Path) -> Path:
    """`top` emptied and made again, private (it holds secrets), with a folder for this
    process in it: workers of a daemon killed outright drain on after it (PR_SET_PDEATHSIG)
    and must not write over the new workers' files. Only under the index's daemon lock
    (single_instance): whatever is there belongs to a daemon that is gone."""
    try:
        if top.is_symlink() or top.is_file():
            top.unlink()
        elif top.exists():
            shutil.rmtree(top)
        top.mkdir(mode=0o700)
        mine = top / str(os.getpid())
        mine.mkdir(mode=0o700)
    except OSError as exc:
        raise DaemonError(f"cannot make the run folder {top}: {exc.strerror or exc}") from None
    return mine


# -- the daemon -----------------------------------------------------------------------------


class Daemon:
    def __init__(self, config: ApplianceConfig, config_path: Path | None = None) -> None:
        """Under the index's daemon lock (run() takes it): the run folder is cleared here."""
        self.config = config
        self.config_path = config_path
        self.run_top = run_folder(config)
        self.run_dir = _fresh_run_folder(self.run_top)
        self.supervisor = Supervisor(config, self.run_dir)
        self.monitor: HealthMonitor | None = None
        self.mover: Any = None
        self.scrub: Any = None  # appliance/scrub.py, unless [storage] scrub_bytes_per_s = 0
        self.sweeper: Any = None  # appliance/sweeper.py
        self.scheduler: FillScheduler | None = None
        self.link: Any = None  # appliance/fleetlink.py, with a [fleet] url
        self.check: StartupCheck | None = None
        self.admin_sock: socket.socket | None = None
        self.admin_site: AdminSite | None = None
        self.reloads = 0
        self.reload_error: str | None = None
        self.started = time.time()
        self.early_signals: list[int] = []  # signals that arrived before the loop ran

    # -- start, in order ---------------------------------------------------------------------

    def start(self) -> None:
        config = self.config
        # 1. Health: hardware profile and a first probe of every disk, so a disk already dead
        #    is out of service (its files marked missing) before anything serves.
        errors = ServingErrors(lambda: status_totals(self.supervisor.view().stats.requests))
        self.monitor = HealthMonitor(config, errors, on_disk_change=self._disks_changed)
        self.monitor.first_sample()
        # 2. Store: settled from the index alone (interrupted loads and removals finished,
        #    files of disks gone from the config set aside); the walk over every stored file
        #    is the start-up check's, in step 5.
        settled = _settle_store(config, self.monitor.out_of_service())
        # 3. Sockets: the serving port (reserved, shared by the workers) and the admin one.
        host, port = parse_hostport(config.serve.listen)
        reserved, port = _reserve_port(host, port)
        admin_host, admin_port = parse_hostport(config.admin.listen)
        try:
            self.admin_sock = bind(admin_host, admin_port)
        except OSError as exc:
            reserved.close()
            raise DaemonError(f"cannot listen on {config.admin.listen}: {exc.strerror}") from None
        # 4. Serving workers; the reservation goes once they all listen.
        try:
            self.supervisor.start_workers(host, port)
        finally:
            reserved.close()
        # 5. Background subsystems: the health monitor, the fleet link (its keys serve), and
        #    the start-up check, which starts the rest once the store is checked.
        self.monitor.start()
        self.scheduler = FillScheduler(
            config, self.monitor.out_of_service, plan_file=config.fill.plan
        )  # it takes plans now (the fleet link's cached one), and runs them once started
        if config.fleet.url is not None:
            self._start_fleet_link(f"http://{host if ':' not in host else f'[{host}]'}:{port}")
        self.check = StartupCheck(
            config.storage, self.monitor.out_of_service, settled, self._start_storage_work
        )
        self.check.start()
        # 6. Announce: the URLs on stdout (tests and scripts wait for them), READY=1 to systemd.
        shown = f"[{host}]" if ":" in host else host
        sys.stdout.write(
            f"listening on http://{shown}:{port}\nadmin on {url_of(self.admin_sock)}\n"
        )
        sys.stdout.flush()
        event(log, "appliance.started", port=port, workers=config.serve.workers)
        sdnotify.ready(status=f"serving on {shown}:{port}")

    def _start_storage_work(self) -> None:
        """Once the start-up check is over (in its thread): what acts on the stored titles
        and must find them checked, as it did when the check ran before serving. A fill run
        would take a title with a file cut short for one held, the mover would move a
        title by a tier label the check corrects, the scrub and sweeper would repeat it."""
        from appliance.mover import MoverThread
        from appliance.scrub import ScrubThread
        from appliance.sweeper import SweepThread

        assert self.monitor is not None and self.scheduler is not None
        storage, out = self.config.storage, self.monitor.out_of_service
        self.mover = MoverThread(storage, out_of_service=out)
        self.mover.start()
        if storage.scrub_bytes_per_s:
            self.scrub = ScrubThread(storage, out_of_service=out)
            self.scrub.start()
        self.sweeper = SweepThread(storage, out_of_service=out)
        self.sweeper.start()
        self.scheduler.start()

    def _start_fleet_link(self, url: str) -> None:
        """Enrol and heartbeat (a thread); cached keys and plan apply before start() returns."""
        from appliance.fleetlink import FleetLink, LinkSinks
        from appliance.fleetlink_figures import box_health, traffic_of

        assert self.monitor is not None and self.scheduler is not None
        monitor, scheduler, supervisor = self.monitor, self.scheduler, self.supervisor

        def set_keys(keys: dict[str, bytes]) -> None:
            supervisor.fleet_keys = dict(keys)
            supervisor.publish_keys(self.config)

        sinks = LinkSinks(
            health=lambda: box_health(monitor.report()),
            traffic=lambda: traffic_of(supervisor.view().stats),
            submit_plan=scheduler.submit_plan,
            set_keys=set_keys,
            fill_state=scheduler.state,
            out_of_service=monitor.out_of_service,
        )
        self.link = FleetLink(self.config, url, sinks)
        self.link.start()

    def _admin_view(self) -> AdminView:
        out = self.monitor.out_of_service() if self.monitor is not None else set()
        return dataclasses.replace(self.supervisor.view(), out_of_service=frozenset(out))

    def _disks_changed(self) -> None:
        # A lost disk's titles are re-filled onto the disks left, in the open or next window.
        if self.scheduler is not None:
            self.scheduler.kick()

    # -- the supervisor loop -----------------------------------------------------------------

    async def supervise(self) -> None:
        loop = asyncio.get_running_loop()
        stop, reload = asyncio.Event(), asyncio.Event()
        install_signals(loop, stop, reload.set)
        for signum in self.early_signals:
            (reload if signum == signal.SIGHUP else stop).set()
        assert self.admin_sock is not None
        self.admin_site = AdminSite(self.config, self._admin_view, self.status)
        admin = FileServer(self.admin_site, ServerSettings())
        admin.serve(self.admin_sock)
        watchdog_s = sdnotify.watchdog_interval_s()
        tick = min(TICK_S, watchdog_s / 2) if watchdog_s else TICK_S
        next_watchdog = 0.0
        # A reload runs in a thread beside the loop: a roll of many workers takes a second or
        # more each, and the watchdog pings and worker checks must go on meanwhile.
        reloading: asyncio.Future[None] | None = None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)
            if stop.is_set():
                break
            self.supervisor.check_workers()
            if watchdog_s and time.monotonic() >= next_watchdog and self.fit_to_serve():
                sdnotify.watchdog()
                next_watchdog = time.monotonic() + watchdog_s
            if reloading is not None and reloading.done():
                reloading.result()  # what reload() does not handle ends the daemon, as before
                reloading = None
            if reload.is_set() and reloading is None:
                reload.clear()  # a SIGHUP during a reload waits for it, then reloads again
                reloading = asyncio.ensure_future(asyncio.to_thread(self.reload))
        if reloading is not None:
            self.supervisor.abort()  # it ends after the worker it is starting
            await reloading
        # SIGTERM: say so first, so systemd waits for the drain instead of counting a hang.
        sdnotify.stopping()
        event(log, "appliance.stopping")
        await admin.stop(1.0)

    def fit_to_serve(self) -> bool:
        """What the watchdog vouches for: the loop turns (we are in it), a worker serves (runs,
        and its own loop turns), and the health thread is not stuck. A failing disk does not
        stop the pings: a restart cannot mend hardware, and the box still serves what the
        other disks hold."""
        fresh = self.monitor is not None and self.monitor.fresh(HEALTH_STALE_S)
        return fresh and self.supervisor.alive() > 0

    # -- SIGHUP ------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the config: keys go to the running workers (no connection dropped), new
        serving settings roll the workers one by one, a new count only starts or drains the
        difference; listen addresses and storage need a restart and keep their running
        values. Runs in a thread beside the supervisor loop (supervise)."""
        from appliance import config as appliance_config

        sdnotify.reloading()
        event(log, "appliance.reloading", config=str(self.config_path))
        try:
            fresh = appliance_config.load(self.config_path)
        except EdgeflixError as exc:
            self.reload_error = str(exc)
            event(log, "appliance.reload_failed", logging.ERROR, reason=str(exc))
            sdnotify.ready(status=f"reload failed, running the old config: {exc}")
            return
        old = self.config
        pinned = []
        for section in ("storage", "admin"):
            if getattr(fresh, section) != getattr(old, section):
                pinned.append(section)
        if fresh.serve.listen != old.serve.listen:
            pinned.append("serve.listen")
        serve = fresh.serve.model_copy(update={"listen": old.serve.listen})
        new = fresh.model_copy(update={"storage": old.storage, "admin": old.admin, "serve": serve})
        if pinned:
            event(log, "appliance.reload_needs_restart", logging.WARNING, sections=pinned)
        try:
            applied = self.supervisor.publish_keys(new)
            self.supervisor.reshape(new, old)
        except (EdgeflixError, OSError) as exc:
            # The daemon goes on with what runs: a reload never stops a serving box.
            self.reload_error = str(exc)
            event(log, "appliance.reload_failed", logging.ERROR, reason=str(exc))
            sdnotify.ready(status=f"reload failed, serving as before: {exc}")
            return
        if self.link is not None:
            self.link.reconfigure(new.fleet)
        if self.scheduler is not None and new.fill.plan != old.fill.plan:
            self.scheduler.watch(new.fill.plan)
        self.config = new
        if self.admin_site is not None:
            self.admin_site.config = new
        self.reloads += 1
        self.reload_error = None if applied else "a worker did not confirm the new keys"
        event(log, "appliance.reloaded", keys=len(new.auth.keys), needs_restart=pinned)
        sdnotify.ready(status="serving (reloaded)")

    # -- /status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        assert self.monitor is not None
        report = self.monitor.report()
        daemon = {
            "pid": os.getpid(),
            "started": self.started,
            "workers": self.supervisor.alive(),
            "workers_wanted": self.config.serve.workers,
            "draining_workers": len(self.supervisor.draining),
            "reloads": self.reloads,
            "reload_error": self.reload_error,
            "keys": sorted(k.id for k in self.config.auth.keys),
            "keys_generation": self.supervisor.keys_generation,
            "health_age_s": round(time.monotonic() - report.at, 3),
            "fill_schedule": self.scheduler.state() if self.scheduler else None,
            "fleet": self.link.state() if self.link else None,
            # "running" while the start-up check walks the store: damage it has not reached
            # yet is answered 404 but not yet logged, counted, or re-filled.
            "startup_check": self.check.status() if self.check else None,
        }
        return assemble(self.config, report.profile, report.inputs, report.health, daemon)

    # -- stop, in order ----------------------------------------------------------------------

    def stop(self) -> None:
        # 1. The start-up check starts nothing more; serving workers drain: stop accepting,
        #    finish in-flight responses up to serve.shutdown_timeout_s, then close (a little
        #    slack before SIGKILL).
        if self.check is not None:
            self.check.halt()
        self.supervisor.stop_workers()
        # 2. Background subsystems (a fill in progress keeps its .part files for later; the
        #    start-up check ends at its next title, and what it did not check waits for the
        #    next start).
        if self.check is not None:
            self.check.join(CHECK_STOP_S)
        if self.link is not None:
            self.link.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.mover is not None:
            self.mover.stop()
        if self.scrub is not None:
            self.scrub.stop()
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.monitor is not None:
            self.monitor.stop()
        # 3. Leftovers.
        if self.admin_sock is not None:
            self.admin_sock.close()
        shutil.rmtree(self.run_top, ignore_errors=True)
        event(log, "appliance.stopped")


def single_instance(config: ApplianceConfig) -> contextlib.ExitStack:
    """Locks held for the daemon's life (the kernel drops them if it dies): a second daemon
    on the same index would run movers and sweepers over the same store, and one on the
    same fleet state would heartbeat under the same name from another URL. One-shot
    commands (load, rm, reconcile, fill) do not take them: they coordinate with a running
    daemon through the title and fill locks."""
    guarded = [(config.storage.index, "index", Path(f"{config.storage.index}.daemon.lock"))]
    if config.fleet.url is not None:
        state = config.fleet_state_dir()
        # Beside the folder, not in it: LinkState makes the folder 0700 (it holds the key).
        guarded.append((state, "fleet state folder", Path(f"{state.resolve()}.daemon.lock")))
    held = contextlib.ExitStack()
    try:
        for what, kind, lock in guarded:
            try:
                held.enter_context(pidlock.take(lock))
            except pidlock.LockHeld as exc:
                pid = f" (pid {exc.pid})" if exc.pid else ""
                raise DaemonError(
                    f"another appliance daemon{pid} uses this {kind}: {what}"
                ) from None
    except BaseException:
        held.close()
        raise
    return held


def run(config: ApplianceConfig, config_path: Path | None = None) -> None:
    """Run until SIGTERM/SIGINT. Prints `listening on URL` and `admin on URL` once serving;
    SIGHUP re-reads `config_path`."""
    with single_instance(config):
        _run(config, config_path)


def _run(config: ApplianceConfig, config_path: Path | None) -> None:
    daemon = Daemon(config, config_path)
    # Until the loop's handlers exist, a signal is only remembered: a SIGTERM that lands while
    # workers start must still drain them (not kill the supervisor with the default action).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: daemon.early_signals.append(signum))
    try:
        daemon.start()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(daemon.supervise())
    finally:
        daemon.stop()

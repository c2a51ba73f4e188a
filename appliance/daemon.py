"""`edgeflix appliance run`: the supervisor process of the appliance and its subsystems.

The supervisor reconciles the store, runs `serve.workers` serving workers (fresh interpreters
running appliance/worker.py, their spec as JSON on stdin, sharing the port by SO_REUSEPORT),
restarts any that die, and runs the background subsystems, each a small object with
start/stop: the health monitor (monitor.py: disks, health, hardware profile), the tier mover,
the fill scheduler (fill/scheduler.py) and the admin listener (/healthz, /metrics, /status).
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
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

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
from edgeflix.http.server import FileServer, ServerSettings, bind, url_of
from edgeflix.http.stats import merge
from edgeflix.log import event

log = logging.getLogger("appliance.daemon")
READY_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = 1.0
TICK_S = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
KEYS_ACK_TIMEOUT_S = 10.0
# The health thread goes round every second; this much silence means it is stuck.
HEALTH_STALE_S = 15.0


class DaemonError(EdgeflixError):
    """The daemon could not start (port taken, worker failed to start, bad store)."""


def worker_spec(
    config: ApplianceConfig, host: str, port: int, counters: Path, keys_file: Path | None = None
) -> dict[str, Any]:
    """Everything a worker needs, as plain JSON (workers never load pydantic: memory)."""
    s = config.serve
    return {
        "host": host,
        "port": port,
        "counters": str(counters),
        "index": str(config.storage.index),
        "settings": {
            "header_timeout_s": s.header_timeout_s,
            "keepalive_timeout_s": s.keepalive_timeout_s,
            "max_connections": s.max_connections,
            "max_header_bytes": s.max_header_bytes,
            "use_sendfile": s.sendfile,
        },
        "stop_timeout_s": s.shutdown_timeout_s,
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
        self.started = time.monotonic()

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        line = _readline(self.proc.stdout, timeout)
        if line.strip() != b"ready":
            self.proc.kill()
            self.proc.wait()  # reaped: no zombie left per failed start
            raise DaemonError(f"serving worker {self.index} failed to start (see log above)")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def drain(self) -> None:
        """SIGTERM: the worker stops accepting and finishes its in-flight responses."""
        if self.alive() and self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)

    def snapshot(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.counters.read_text())
        except (OSError, ValueError):
            return {}
        if not self.alive():
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
    """The serving workers: start, restart the dead, roll to a new spec, drain on stop."""

    def __init__(self, config: ApplianceConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.keys_file = run_dir / "keys.json"
        self.keys_generation = 0
        self.fleet_keys: dict[str, bytes] = {}
        self._keys_lock = threading.Lock()  # SIGHUP and the fleet link both publish
        self.workers: list[Worker] = []
        self.draining: list[Worker] = []  # replaced by a reload, finishing their connections
        # Counters of replaced workers, so totals never go backwards after a restart: one
        # running sum, not a snapshot per replaced worker (restarts and reloads over months
        # would grow that list, and every scrape and beat would sum it again).
        self.retired: dict[str, Any] = {}
        self._spawned = 0
        self.host, self.port = "", 0

    def _new_worker(self, index: int) -> Worker:
        self._spawned += 1
        counters = self.run_dir / f"worker-{index}-{self._spawned}.json"
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
        for worker in self.workers:
            if worker.alive() or time.monotonic() - worker.started < RESTART_BACKOFF_S:
                continue
            code = worker.proc.returncode if worker.proc else None
            event(log, "worker.died", logging.ERROR, worker=worker.index, code=code)
            self._retire(worker)
            worker.spawn()
        for worker in [w for w in self.draining if not w.alive()]:
            self.draining.remove(worker)
            self._retire(worker)
            event(log, "worker.drained", worker=worker.index)

    def _retire(self, worker: Worker) -> None:
        self.retired = fold_retired(self.retired, worker.snapshot())
        with contextlib.suppress(OSError):
            worker.counters.unlink()

    def alive(self) -> int:
        return sum(w.alive() for w in self.workers)

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
        """Hand new keys to the running workers; True once every live worker applied them."""
        with self._keys_lock:
            self.config = config
            self.keys_generation += 1
            generation = self.keys_generation
            write_keys(self.keys_file, key_set(config, generation, self.fleet_keys))
        deadline = time.monotonic() + KEYS_ACK_TIMEOUT_S
        while time.monotonic() < deadline:
            live = [w for w in self.workers if w.alive()]
            if all(w.snapshot().get("keys_generation", 0) >= generation for w in live):
                return True
            time.sleep(0.05)
        return False

    def roll(self, config: ApplianceConfig) -> None:
        """New serving settings: replace workers one at a time. The new worker listens on the
        shared port before the old one stops accepting, so the port never closes; the old one
        finishes its connections (up to serve.shutdown_timeout_s) while draining.

        A replacement that does not start (settings that cannot work, an index gone bad)
        leaves its old worker serving, and DaemonError follows once the roll is over; when
        the very first one fails, nothing has changed. After a failure, workers that die are
        restarted with the previous settings."""
        previous, self.config = self.config, config
        kept: list[int] = []
        for i, old in enumerate(list(self.workers)):
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
            self.workers[i] = new
            old.drain()
            self.draining.append(old)
        while len(self.workers) < config.serve.workers:
            new = self._new_worker(len(self.workers))
            if not self._started(new):
                kept.append(len(self.workers))
                break
            self.workers.append(new)
        while len(self.workers) > config.serve.workers:
            old = self.workers.pop()
            old.drain()
            self.draining.append(old)
        if kept:
            # A worker that dies later is restarted with settings known to start.
            self.config = previous
            raise DaemonError(f"worker slots {kept} kept their old settings (see log above)")

    @staticmethod
    def _started(worker: Worker) -> bool:
        try:
            worker.spawn()
            worker.wait_ready(READY_TIMEOUT_S)
        except (DaemonError, OSError):
            return False
        return True

    def stop_workers(self, timeout: float) -> None:
        every = [*self.workers, *self.draining]
        for worker in every:
            worker.drain()
        deadline = time.monotonic() + timeout
        for worker in every:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                event(log, "worker.killed", logging.WARNING, worker=worker.index)
                worker.proc.kill()
                worker.proc.wait()


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


def _prepare_store(config: ApplianceConfig, out_of_service: set[str]) -> None:
    """Open the store on the disks in service (creates the index), give disks that are back
    their files again after re-verifying them, then reconcile the index with the disks.
    Restore runs before reconcile: reconcile would sweep a returned disk's files away."""
    from appliance.fill.storage import restore_disk
    from appliance.index import MISSING
    from appliance.repair import reconcile
    from appliance.store import Store

    store = Store(config.storage, out_of_service=out_of_service)
    try:
        for disk in store.disks:
            row = store.conn.execute(
                "SELECT 1 FROM files WHERE disk = ? AND state = ? LIMIT 1", (disk.id, MISSING)
            ).fetchone()
            if row:
                ready, bad = restore_disk(store, disk.id)
                event(log, "store.restored", disk=disk.id, titles=len(ready), bad=len(bad))
        # reconcile logs what it found, summarised per title and disk: only the totals here.
        report = reconcile(store)
        if report.findings:
            lost = sum(1 for f in report.findings if f.damage)
            event(log, "store.reconciled", logging.WARNING if lost else logging.INFO,
                  findings=len(report.findings), lost=lost,
                  titles=len({f.title for f in report.findings if f.title}))  # fmt: skip
    finally:
        store.close()


# -- the daemon -----------------------------------------------------------------------------


class Daemon:
    def __init__(self, config: ApplianceConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.run_dir = Path(tempfile.mkdtemp(prefix="edgeflix-appliance-"))
        self.supervisor = Supervisor(config, self.run_dir)
        self.monitor: HealthMonitor | None = None
        self.mover: Any = None
        self.scrub: Any = None  # appliance/scrub.py, unless [storage] scrub_bytes_per_s = 0
        self.sweeper: Any = None  # appliance/sweeper.py
        self.scheduler: FillScheduler | None = None
        self.link: Any = None  # appliance/fleetlink.py, with a [fleet] url
        self.admin_sock: socket.socket | None = None
        self.admin_site: AdminSite | None = None
        self.reloads = 0
        self.reload_error: str | None = None
        self.started = time.time()
        self.early_signals: list[int] = []  # signals that arrived before the loop ran

    # -- start, in order ---------------------------------------------------------------------

    def start(self) -> None:
        from appliance.mover import MoverThread
        from appliance.scrub import ScrubThread
        from appliance.sweeper import SweepThread

        config = self.config
        # 1. Health: hardware profile and a first probe of every disk, so a disk already dead
        #    is out of service (its files marked missing) before anything serves.
        errors = ServingErrors(lambda: status_totals(self.supervisor.view().stats.requests))
        self.monitor = HealthMonitor(config, errors, on_disk_change=self._disks_changed)
        self.monitor.first_sample()
        # 2. Store: restore disks that came back, reconcile the index with the disks.
        _prepare_store(config, self.monitor.out_of_service())
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
        # 5. Background subsystems.
        self.mover = MoverThread(config.storage, out_of_service=self.monitor.out_of_service)
        self.mover.start()
        if config.storage.scrub_bytes_per_s:
            self.scrub = ScrubThread(config.storage, out_of_service=self.monitor.out_of_service)
            self.scrub.start()
        self.sweeper = SweepThread(config.storage, out_of_service=self.monitor.out_of_service)
        self.sweeper.start()
        self.monitor.start()
        self.scheduler = FillScheduler(
            config, self.monitor.out_of_service, plan_file=config.fill.plan
        )
        self.scheduler.start()
        if config.fleet.url is not None:
            self._start_fleet_link(f"http://{host if ':' not in host else f'[{host}]'}:{port}")
        # 6. Announce: the URLs on stdout (tests and scripts wait for them), READY=1 to systemd.
        shown = f"[{host}]" if ":" in host else host
        sys.stdout.write(
            f"listening on http://{shown}:{port}\nadmin on {url_of(self.admin_sock)}\n"
        )
        sys.stdout.flush()
        event(log, "appliance.started", port=port, workers=config.serve.workers)
        sdnotify.ready(status=f"serving on {shown}:{port}")

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
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        for signum in self.early_signals:
            (reload if signum == signal.SIGHUP else stop).set()
        assert self.admin_sock is not None
        self.admin_site = AdminSite(self.config, self._admin_view, self.status)
        admin = FileServer(self.admin_site, ServerSettings())
        admin.serve(self.admin_sock)
        watchdog_s = sdnotify.watchdog_interval_s()
        tick = min(TICK_S, watchdog_s / 2) if watchdog_s else TICK_S
        next_watchdog = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)
            if stop.is_set():
                break
            self.supervisor.check_workers()
            if watchdog_s and time.monotonic() >= next_watchdog and self.fit_to_serve():
                sdnotify.watchdog()
                next_watchdog = time.monotonic() + watchdog_s
            if reload.is_set():
                reload.clear()
                await asyncio.to_thread(self.reload)
        # SIGTERM: say so first, so systemd waits for the drain instead of counting a hang.
        sdnotify.stopping()
        event(log, "appliance.stopping")
        await admin.stop(1.0)

    def fit_to_serve(self) -> bool:
        """What the watchdog vouches for: the loop turns (we are in it), a worker serves, and
        the health thread is not stuck. A failing disk does not stop the pings: a restart
        cannot mend hardware, and the box still serves what the other disks hold."""
        fresh = self.monitor is not None and self.monitor.fresh(HEALTH_STALE_S)
        return fresh and self.supervisor.alive() > 0

    # -- SIGHUP ------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the config: keys go to the running workers (no connection dropped), new
        serving settings roll the workers one by one; listen addresses and storage need a
        restart and keep their running values."""
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
            if new.serve != old.serve:
                self.supervisor.roll(new)
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
        }
        return assemble(self.config, report.profile, report.inputs, report.health, daemon)

    # -- stop, in order ----------------------------------------------------------------------

    def stop(self) -> None:
        # 1. Serving workers drain: stop accepting, finish in-flight responses up to
        #    serve.shutdown_timeout_s, then close (a little slack before SIGKILL).
        self.supervisor.stop_workers(self.config.serve.shutdown_timeout_s + 2.0)
        # 2. Background subsystems (a fill in progress keeps its .part files for later).
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
        shutil.rmtree(self.run_dir, ignore_errors=True)
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

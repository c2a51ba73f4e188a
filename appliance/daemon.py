"""`edgeflix appliance run`: the supervisor process of the appliance and its subsystems.

The supervisor settles the store (repair.settle: what the index alone says must change), runs
`serve.workers` serving workers (supervisor.py: fresh interpreters running appliance/worker.py,
restarted when they die or hang), and runs the background subsystems, each a small object
with start/stop: the start-up check (startup.py: the rest of the reconcile, a stat per stored
file, so never before serving), the health monitor
(monitor.py: disks, health, hardware profile), and once the check is over the tier mover, the
scrub, the sweeper and the fill scheduler (fill/scheduler.py); the admin listener serves
/healthz, /metrics and /status. The fill and the mover report their failed writes to the
monitor's DiskWatch and place nothing on the disks it says take no writes (`_write_failed`).
Lifecycle (sd_notify READY/WATCHDOG/RELOADING/STOPPING, SIGTERM drain, SIGHUP reload) is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop

from appliance import sdnotify
from appliance.config import ApplianceConfig
from appliance.fill.scheduler import FillScheduler
from appliance.monitor import HealthMonitor, ServingErrors, status_totals
from appliance.server import AdminSite, AdminView
from appliance.startup import StartupCheck, settle_store
from appliance.status import assemble, count_max_bytes
from appliance.supervisor import DaemonError, Supervisor
from edgeflix import pidlock
from edgeflix.configtypes import format_hostport, parse_hostport
from edgeflix.errors import EdgeflixError
from edgeflix.http.runner import install_signals
from edgeflix.http.server import FileServer, ServerSettings, bind, url_of
from edgeflix.log import event

if TYPE_CHECKING:
    pass

log = logging.getLogger("appliance.daemon")
TICK_S = 0.5
# The health thread goes round every second; this much silence means it is stuck.
HEALTH_STALE_S = 15.0
# A stopping daemon waits this long for the start-up check to reach its next title (it asks
# between titles); one busy longer (re-hashing a returned disk) is left to the exit, which
# loses nothing: every step of a reconcile is safe to cut short.
CHECK_STOP_S = 5.0


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
        self.monitor = HealthMonitor(
            config, errors, on_disk_change=self._disks_changed,
            serving=lambda: self.supervisor.view().stats,
        )  # fmt: skip
        # Disks with max_bytes count what the store holds on them (monitor.py's sampler
        # knows no config).
        count_max_bytes(self.monitor.sampler, config)
        self.monitor.first_sample()
        # 2. Store: settled from the index alone (interrupted loads and removals finished,
        #    files of disks gone from the config set aside); the walk over every stored file
        #    is the start-up check's, in step 5.
        settled = settle_store(config, self.monitor.out_of_service())
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
        # The scheduler takes plans now (the fleet link's cached one), and runs them once
        # started.
        self.scheduler = FillScheduler(
            config, self.monitor.out_of_service, plan_file=config.fill.plan,
            not_writable=self.monitor.watch.not_writable, on_write_error=self._write_failed,
        )  # fmt: skip
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
        self.mover = MoverThread(
            storage, out_of_service=out, not_writable=self.monitor.watch.not_writable,
            on_write_error=self._write_failed,
        )  # fmt: skip
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

        def set_clock_correction(correction: float) -> None:
            # Tokens and fill windows are the fleet's: both go by its time from now on.
            scheduler.set_clock_correction(correction)
            supervisor.fleet_correction = correction
            supervisor.publish_keys(self.config)

        sinks = LinkSinks(
            health=lambda: box_health(monitor.report()),
            traffic=lambda: traffic_of(supervisor.view().stats),
            submit_plan=scheduler.submit_plan,
            set_keys=set_keys,
            set_clock_correction=set_clock_correction,
            fill_state=scheduler.state,
            out_of_service=monitor.out_of_service,
        )
        self.link = FleetLink(self.config, url, sinks)
        self.link.start()

    def _admin_view(self) -> AdminView:
        monitor = self.monitor
        out = monitor.out_of_service() if monitor is not None else set()
        held = monitor.watch.not_writable() if monitor is not None else set()
        return dataclasses.replace(
            self.supervisor.view(), out_of_service=frozenset(out), not_writable=frozenset(held)
        )

    def _write_failed(self, disk: str, error: OSError) -> None:
        """A fill or tier move failed to write on `disk` (their threads): counted by the
        disk watch, and the health thread woken to act on the count and publish it now."""
        if self.monitor is not None:
            self.monitor.watch.write_failed(disk, error)
            self.monitor.wake()

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
        required = self.config.auth.tokens == "required"
        fleet = self.link.health_view(required) if self.link else None
        return assemble(self.config, report.profile, report.inputs, report.health, daemon, fleet)

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

"""`edgeflix appliance run`: a supervisor process and `serve.workers` serving workers.

Supervisor (here): reconciles the store, spawns workers (fresh interpreters running
appliance/worker.py, their spec as JSON on stdin), restarts any that die, runs the tier mover
and the admin listener, and merges the counters each worker writes to a small JSON file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import uvloop

from appliance.config import ApplianceConfig
from appliance.server import AdminSite, AdminView
from edgeflix.config import parse_hostport
from edgeflix.errors import EdgeflixError
from edgeflix.http.server import FileServer, ServerSettings, bind, url_of
from edgeflix.http.stats import merge
from edgeflix.log import event

log = logging.getLogger("appliance.daemon")
READY_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = 1.0


class DaemonError(EdgeflixError):
    """The daemon could not start (port taken, worker failed to start, bad store)."""


def worker_spec(config: ApplianceConfig, host: str, port: int, counters: Path) -> dict[str, Any]:
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
    }


# -- supervisor -----------------------------------------------------------------------------


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
            raise DaemonError(f"serving worker {self.index} failed to start (see log above)")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def snapshot(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.counters.read_text())
        except (OSError, ValueError):
            return {}
        if not self.alive():
            data["open_connections"] = 0
        return data


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else b""


class Supervisor:
    def __init__(self, config: ApplianceConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.workers: list[Worker] = []
        # Counters of replaced workers, so totals never go backwards after a restart.
        self.retired: list[dict[str, Any]] = []

    def start_workers(self, host: str, port: int) -> None:
        for i in range(self.config.serve.workers):
            spec = worker_spec(self.config, host, port, self.run_dir / f"worker-{i}.json")
            worker = Worker(i, spec)
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
            self.retired.append(worker.snapshot())
            with contextlib.suppress(OSError):
                worker.counters.unlink()
            worker.spawn()

    def view(self) -> AdminView:
        snaps = [w.snapshot() for w in self.workers] + self.retired
        rejections: dict[str, int] = {}
        for snap in snaps:
            for reason, n in snap.get("token_rejections", {}).items():
                rejections[reason] = rejections.get(reason, 0) + int(n)
        alive = sum(w.alive() for w in self.workers)
        return AdminView(merge(snaps), alive, len(self.workers), rejections)

    def stop_workers(self, timeout: float) -> None:
        for worker in self.workers:
            if worker.alive() and worker.proc is not None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                event(log, "worker.killed", logging.WARNING, worker=worker.index)
                worker.proc.kill()
                worker.proc.wait()


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) so port 0 becomes one concrete port all workers share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DaemonError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock, sock.getsockname()[1]


def _prepare_store(config: ApplianceConfig) -> None:
    """Open the store once (creates the index) and reconcile it with the disks."""
    from appliance.repair import reconcile
    from appliance.store import Store

    store = Store(config.storage)
    try:
        report = reconcile(store)
        for finding in report.findings:
            event(log, "store.reconciled", logging.WARNING, finding=finding)
    finally:
        store.close()


def run(config: ApplianceConfig) -> None:
    """Run until SIGTERM/SIGINT. Prints `listening on URL` and `admin on URL` once serving."""
    from appliance.mover import MoverThread

    _prepare_store(config)
    host, port = parse_hostport(config.serve.listen)
    reserved, port = _reserve_port(host, port)
    admin_host, admin_port = parse_hostport(config.admin.listen)
    try:
        admin_sock = bind(admin_host, admin_port)
    except OSError as exc:
        reserved.close()
        raise DaemonError(f"cannot listen on {config.admin.listen}: {exc.strerror}") from None
    run_dir = Path(tempfile.mkdtemp(prefix="edgeflix-appliance-"))
    supervisor = Supervisor(config, run_dir)
    mover = MoverThread(config.storage)
    try:
        supervisor.start_workers(host, port)
        reserved.close()
        mover.start()
        shown = f"[{host}]" if ":" in host else host
        sys.stdout.write(f"listening on http://{shown}:{port}\nadmin on {url_of(admin_sock)}\n")
        sys.stdout.flush()
        event(log, "appliance.started", port=port, workers=config.serve.workers)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_supervise(supervisor, admin_sock))
    finally:
        reserved.close()
        supervisor.stop_workers(config.serve.shutdown_timeout_s + 2.0)
        mover.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        event(log, "appliance.stopped")


async def _supervise(supervisor: Supervisor, admin_sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    admin = FileServer(AdminSite(supervisor.config, supervisor.view), ServerSettings())
    admin.serve(admin_sock)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        supervisor.check_workers()
    await admin.stop(1.0)

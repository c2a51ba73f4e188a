"""How the supervisor (appliance/supervisor.py) tells a hung serving worker from a busy or a
starting one, on the clock it is given: silence of the counters file for WORKER_SILENT_S
once the worker is ready or has written, FIRST_WRITE_S before; a run folder that refuses
writes makes silence prove nothing. And which config changes need new workers."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path

from appliance.config import ApplianceConfig
from appliance.daemon import run_folder
from appliance.supervisor import (
    FIRST_WRITE_S,
    WORKER_SILENT_S,
    Supervisor,
    Worker,
    serving_spec,
)


def _write(path: Path, n: int) -> None:
    """As a worker writes its counters: a new file replacing the old."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f'{{"connections_total": {n}}}')
    os.replace(tmp, path)


def _worker(tmp_path: Path, proc: subprocess.Popen[bytes], t0: float) -> Worker:
    worker = Worker(0, {"counters": str(tmp_path / "worker-0-1.json"), "stop_timeout_s": 10})
    worker.proc, worker.started, worker.heard = proc, t0, t0
    return worker


def test_a_starting_worker_gets_the_start_up_bound(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    worker = _worker(tmp_path, sleeper, 100.0)
    worker.listen(100.0 + WORKER_SILENT_S + 5)  # no file yet, no `ready`
    assert not worker.silent(100.0 + WORKER_SILENT_S + 5)
    assert worker.silent(100.0 + FIRST_WRITE_S + 1)


def test_a_ready_worker_must_write_soon(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    worker = _worker(tmp_path, sleeper, 100.0)
    worker.ready = True  # wait_ready saw it
    assert not worker.silent(100.0 + WORKER_SILENT_S - 1)
    assert worker.silent(100.0 + WORKER_SILENT_S + 1)


def test_each_rewrite_keeps_a_worker_fresh(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    worker = _worker(tmp_path, sleeper, 0.0)
    now = 0.0
    for n in range(60):  # a minute of writes, however busy the worker
        now += 1.0
        _write(worker.counters, n)
        time.sleep(0.002)  # the file's mtime moves (coarse clocks)
        worker.listen(now)
        assert not worker.silent(now)
    worker.listen(now + WORKER_SILENT_S - 0.5)  # no rewrite since
    assert not worker.silent(now + WORKER_SILENT_S - 0.5)
    worker.listen(now + WORKER_SILENT_S + 0.5)
    assert worker.silent(now + WORKER_SILENT_S + 0.5)
    # Counted from when the run folder last refused a write, if later.
    assert not worker.silent(now + WORKER_SILENT_S + 0.5, blind_until=now + 5)


def test_silence_in_a_folder_that_refuses_writes_kills_nobody(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """A full or vanished run folder stops every worker's writes while their loops turn
    (edgeflix/http/runner.py keeps them serving): the supervisor must not kill them all."""
    run = tmp_path / "run"
    run.mkdir()
    sup = Supervisor(ApplianceConfig(), run)
    t0 = time.monotonic() - 100
    worker = _worker(run, sleeper, t0)
    _write(worker.counters, 1)
    worker.listen(t0)  # last heard 100 s ago: silent
    sup.workers.append(worker)
    os.replace(run, tmp_path / "gone")  # the folder vanished: the probe cannot write
    sup.check_workers()
    assert sup.workers == [worker] and sup.draining == []
    assert sleeper.poll() is None and not worker.killed
    assert sup.alive() == 1


def test_a_drain_overrunning_its_own_timeout_is_overdue(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    worker = _worker(tmp_path, sleeper, 0.0)
    worker.drained_at = 50.0
    assert not worker.overdue(50.0 + 10 + WORKER_SILENT_S - 1)
    assert worker.overdue(50.0 + 10 + WORKER_SILENT_S + 1)


def test_only_what_a_worker_starts_with_needs_new_workers() -> None:
    base = ApplianceConfig()
    key = base64.b64encode(b"k" * 32).decode()

    def changed(**serve: object) -> ApplianceConfig:
        return base.model_copy(update={"serve": base.serve.model_copy(update=serve)})

    assert serving_spec(changed(workers=7)) == serving_spec(base)
    keyed = ApplianceConfig.model_validate({"auth": {"keys": [{"id": "a", "secret": key}]}})
    assert serving_spec(keyed) == serving_spec(base)  # keys go through the key file
    assert serving_spec(changed(keepalive_timeout_s=5.0)) != serving_spec(base)
    assert serving_spec(changed(shutdown_timeout_s=99.0)) != serving_spec(base)
    assert serving_spec(changed(sendfile=False)) != serving_spec(base)


def test_run_files_go_to_systemds_runtime_directory_when_it_gives_one(tmp_path: Path) -> None:
    """Counters are rewritten twice a second: on a tmpfs under systemd, not the SD card."""
    config = ApplianceConfig.model_validate({"storage": {"index": str(tmp_path / "i.sqlite")}})
    assert run_folder(config, {}) == tmp_path / "i.sqlite.run"
    runtime = {"RUNTIME_DIRECTORY": f"{tmp_path}/rt:{tmp_path}/other"}
    assert run_folder(config, runtime) == tmp_path / "rt" / "run"

"""Planning off the event loop. A plan is pure CPU (fleet/planner.py): a few hundred ms for
thousands of titles, seconds for tens of thousands on dozens of appliances. On the loop that
also answers /steer and the heartbeats, every planning round stopped both for that long, and
a player waited out the whole plan to start playing. The round's inputs are gathered on the
loop (`FleetService.plan_job`), planned in a process of its own, and the result adopted back
on the loop (`FleetService.adopt_plan`), one round at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleet.errors import UnavailableError
from fleet.model import Appliance
from fleet.planner import plan
from fleet.plans import CatalogTitle, FillPlan, PlannerPolicy

if TYPE_CHECKING:
    from fleet.service import FleetService

# A planner process that died (the OOM killer, say) costs this many retries per round.
_RETRIES = 1
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class PlanJob:
    """One planning round's inputs, as plain values (they cross to the planner process)."""

    appliances: tuple[Appliance, ...]
    demand: Mapping[str, float]
    catalog: Mapping[str, CatalogTitle]
    previous: FillPlan | None
    policy: PlannerPolicy
    site_demand: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # The catalogue as columns (see Appliance.__reduce__).
        entries = list(self.catalog.values())
        catalog = (tuple(self.catalog), tuple(e.size_bytes for e in entries),
                   tuple(e.digest for e in entries))  # fmt: skip
        return _job_from_columns, (
            self.appliances,
            self.demand,
            catalog,
            self.previous,
            self.policy,
            self.site_demand,
        )

    def run(self) -> FillPlan:
        return plan(self.appliances, self.demand, self.catalog, self.previous, self.policy,
                    site_demand=self.site_demand)  # fmt: skip


def _job_from_columns(
    appliances: tuple[Appliance, ...],
    demand: Mapping[str, float],
    catalog: tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]],
    previous: FillPlan | None,
    policy: PlannerPolicy,
    site_demand: Mapping[str, Mapping[str, float]],
) -> PlanJob:
    entries = {t: CatalogTitle(n, d) for t, n, d in zip(*catalog, strict=True)}
    return PlanJob(appliances, demand, entries, previous, policy, site_demand)


def die_with(manager_pid: int) -> None:
    """The planner process's first act: go when the manager goes, even by SIGKILL. Its end
    of the job queue holds the queue's write side too, so it would never see the manager
    close it, and would wait for work forever. Ctrl-C reaches the whole process group: the
    manager stops on it and stops the planner (Planning.close); the planner's own
    KeyboardInterrupt was only a traceback on the operator's terminal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != manager_pid:  # it went before the line above
        os._exit(0)


def run_job(job: PlanJob) -> FillPlan:
    """The planner process's entry point (a module-level function: it is sent by name)."""
    return job.run()


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT and SIGHUP blocked in this thread while a planner process is spawned: the child
    inherits the mask through exec, so a terminal's Ctrl-C or hang-up, sent to the whole
    group, does not kill it before die_with runs (the manager stops it); one reaching the
    manager meanwhile waits for the unblock rather than being lost, as it was while the
    handler was swapped to SIG_IGN (which only the main thread could do)."""
    held = {signal.SIGINT, signal.SIGHUP}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class Planning:
    """Runs planning rounds in one long-lived process, started with the manager (a spawned
    interpreter, never a fork of a process with gRPC's threads). `in_process=True` plans on
    the caller's thread instead (unit tests)."""

    def __init__(self, svc: FleetService, in_process: bool = False) -> None:
        self.svc = svc
        self._lock = asyncio.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._in_process = in_process
        if not in_process:
            self._start()

    def _start(self) -> None:
        # Inherited through exec by the planner, and by multiprocessing's resource tracker
        # (started with the pool's first semaphore): no Ctrl-C or hang-up kills either.
        with _interrupts_held():
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=die_with,
                initargs=(os.getpid(),),
            )
            self._pool.submit(int)  # start it now, not at the first round

    async def replan(self) -> FillPlan | None:
        """Plan with the fleet as it is now and adopt the result; one round at a time. None
        when there is no plan yet and this round's was dropped (see adopt_plan)."""
        async with self._lock:
            job = self.svc.plan_job()
            new = await self._run(job)
            return self.svc.adopt_plan(job, new)

    async def _run(self, job: PlanJob) -> FillPlan:
        if self._in_process:
            return job.run()
        loop = asyncio.get_running_loop()
        for attempt in range(_RETRIES + 1):
            pool = self._pool
            if pool is None:  # closed: never plan on the loop instead
                raise UnavailableError("the fleet manager is stopping")
            try:
                return await loop.run_in_executor(pool, run_job, job)
            except BrokenProcessPool:
                if self._pool is not pool:
                    raise UnavailableError("the fleet manager is stopping") from None
                pool.shutdown(wait=False)
                self._start()
                if attempt == _RETRIES:
                    break
        raise UnavailableError("the planner process died twice in one round")

    def close(self) -> None:
        """Stop the planner process now, even mid-round (the round is simply not adopted)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # shutdown() waits for a running round to finish: seconds of a stopping manager.
        for proc in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(OSError):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

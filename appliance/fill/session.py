"""A fill run in the foreground, for `edgeflix appliance fill`: builds the plan from the
command line or the config's `[fill] plan`, opens the store, draws a progress bar (bytes,
rate, ETA) on a terminal and returns the report. The daemon uses runner.FillRun directly.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection, Sequence
from pathlib import Path

from pydantic import ValidationError
from rich.progress import TaskID

from appliance.config import ApplianceConfig
from appliance.fill.downloader import Pacer
from appliance.fill.plan import FillPlan, PlanError, PlannedTitle, load_plan
from appliance.fill.runner import FillReport, FillRun, peer_waiting, tuning
from appliance.index import READY, query_read_only
from edgeflix import ui


def plan_from_cli(
    config: ApplianceConfig,
    sources: Sequence[str],
    titles: Sequence[str],
    plan_file: Path | None,
    cap_mbps: float | None,
    streams: int | None,
    ignore_window: bool,
    *,
    held: Collection[str] = (),
    prune_all: bool = False,
) -> FillPlan:
    """`--from/--title` make an ad-hoc plan (no window, never deletes other titles); else the
    plan file (`--plan` or `[fill] plan`). Options override the plan's cap and streams.
    PlanError (one line) for anything the command line got wrong, and for a plan file that
    would delete every title in `held` (the servable titles) unless `prune_all`."""
    if titles or sources:
        if not (titles and sources):
            raise PlanError("give both --from URL and at least one --title ID")
        plan = _adhoc_plan(titles, sources)
    else:
        path = plan_file or config.fill.plan
        if path is None:
            raise PlanError("nothing to fill: give --from URL --title ID, or set [fill] plan")
        plan = load_plan(path)
        if not prune_all:
            refuse_emptying(plan, held, str(path))
    update: dict[str, object] = {}
    if cap_mbps is not None:
        update["cap_bps"] = cap_bps_of(cap_mbps)
    if streams is not None:
        update["streams"] = streams
    if ignore_window:
        # `--now` is an operator at a terminal asking for the titles now: no window, and no
        # minutes of waiting for a site peer either (the daemon's fills still wait).
        update["window"] = None
        update["wait_for_peers"] = False
    try:
        return FillPlan.model_validate({**plan.model_dump(), **update}).check()
    except ValidationError as exc:
        raise PlanError(_first_error(exc, with_field=True)) from None


def refuse_emptying(plan: FillPlan, held: Collection[str], source: str) -> None:
    """PlanError when `plan` would delete every title in `held` (none of them in it, and it
    prunes): a plan meant for another appliance, or a placeholder, is far likelier than an
    operator wanting an empty box (who says so with --prune-all)."""
    if not plan.prune or not held or {t.id for t in plan.titles} & set(held):
        return
    names = sorted(held)
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    if len(names) == 1:
        what = f"does not list the one title this appliance holds ({shown}): the fill removes it"
    else:
        what = (f"lists none of the {len(names)} titles this appliance holds ({shown}): the "
                "fill removes them all")  # fmt: skip
    raise PlanError(f"{source} {what}; check the plan, or give --prune-all to mean it")


def held_titles(index: Path) -> list[str]:
    """The servable titles the index has (those a plan's prune deletes), read without
    opening the store or making an index; none when there is no index."""
    rows = query_read_only(index, f"SELECT id FROM titles WHERE state = '{READY}'")
    return [str(row[0]) for row in rows]


def _adhoc_plan(titles: Sequence[str], sources: Sequence[str]) -> FillPlan:
    # A title (or source) given twice is meant once: the plan would refuse it as listed twice.
    unique_sources = tuple(dict.fromkeys(u.rstrip("/") for u in sources))
    try:
        picked = tuple(PlannedTitle(id=t, sources=unique_sources) for t in dict.fromkeys(titles))
        return FillPlan(titles=picked, prune=False, wait_for_peers=False)
    except ValidationError as exc:  # a bad --title or --from: one line, not pydantic's
        raise PlanError(_first_error(exc)) from None


def cap_bps_of(cap_mbps: float) -> int | None:
    """`--cap-mbps` in bits per second; 0 is no cap. Not a finite number, or a cap that
    rounds to nothing, is refused (not silently uncapped, nor an OverflowError)."""
    if not math.isfinite(cap_mbps):
        raise PlanError(f"--cap-mbps {cap_mbps}: give a number of Mbit/s (0 for no cap)")
    if cap_mbps <= 0:
        return None
    bps = int(cap_mbps * 1_000_000)
    if bps < 1:
        raise PlanError(f"--cap-mbps {cap_mbps:g} is under 1 bit/s (0 for no cap)")
    return bps


def _first_error(exc: ValidationError, with_field: bool = False) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc).splitlines()[0]
    err = errors[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {msg}" if with_field and where else msg


def run_foreground(
    config: ApplianceConfig, plan: FillPlan, out_of_service: Collection[str] = ()
) -> FillReport:
    """`out_of_service`: disks the command's probe left alone (dead, not mounted)."""
    from appliance.fill.scheduler import ServiceStorage

    pacer = Pacer(cap_bps=plan.cap_bps, window=plan.fill_window())
    policy, timeouts = tuning(config.fill)
    storage = ServiceStorage(config, lambda: set(out_of_service))
    fill = FillRun(
        plan, storage, config.fill.staging, pacer, policy, timeouts,
        peer_wait=peer_waiting(config.fill),
    )  # fmt: skip
    return asyncio.run(_with_bar(fill))


async def _with_bar(fill: FillRun) -> FillReport:
    task = asyncio.create_task(fill.run())
    with ui.progress(transfer=True) as bar:
        bars: dict[str, TaskID] = {}
        while not task.done():
            for title_id, prog in fill.report.titles.items():
                if title_id not in bars and prog.total:
                    bars[title_id] = bar.add_task(f"fill {title_id}", total=prog.total)
                if title_id in bars:
                    bar.update(bars[title_id], completed=prog.done)
            await asyncio.wait([task], timeout=0.2)
        for title_id, prog in fill.report.titles.items():
            if title_id in bars:
                bar.update(bars[title_id], completed=prog.done)
    return task.result()

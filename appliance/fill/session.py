"""A fill run in the foreground, for `edgeflix appliance fill`: builds the plan from the
command line or the config's `[fill] plan`, opens the store, draws a progress bar (bytes,
rate, ETA) on a terminal and returns the report. The daemon uses runner.FillRun directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from pathlib import Path

from pydantic import ValidationError
from rich.progress import TaskID

from appliance.config import ApplianceConfig
from appliance.fill.downloader import Pacer
from appliance.fill.plan import FillPlan, PlanError, PlannedTitle, load_plan
from appliance.fill.runner import FillReport, FillRun, tuning
from edgeflix import ui


def plan_from_cli(
    config: ApplianceConfig,
    sources: Sequence[str],
    titles: Sequence[str],
    plan_file: Path | None,
    cap_mbps: float | None,
    streams: int | None,
    ignore_window: bool,
) -> FillPlan:
    """`--from/--title` make an ad-hoc plan (no window, never deletes other titles); else the
    plan file (`--plan` or `[fill] plan`). Options override the plan's cap and streams."""
    if titles or sources:
        if not (titles and sources):
            raise PlanError("give both --from URL and at least one --title ID")
        try:
            picked = tuple(PlannedTitle(id=t, sources=tuple(sources)) for t in titles)
        except ValidationError as exc:  # a bad --title or --from: one line, not pydantic's
            raise PlanError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        plan = FillPlan(titles=picked, prune=False)
    else:
        path = plan_file or config.fill.plan
        if path is None:
            raise PlanError("nothing to fill: give --from URL --title ID, or set [fill] plan")
        plan = load_plan(path)
    update: dict[str, object] = {}
    if cap_mbps is not None:
        update["cap_bps"] = int(cap_mbps * 1_000_000) if cap_mbps > 0 else None
    if streams is not None:
        update["streams"] = streams
    if ignore_window:
        update["window"] = None
    return FillPlan.model_validate({**plan.model_dump(), **update}).check()


def run_foreground(
    config: ApplianceConfig, plan: FillPlan, out_of_service: Collection[str] = ()
) -> FillReport:
    """`out_of_service`: disks the command's probe left alone (dead, not mounted)."""
    from appliance.fill.scheduler import ServiceStorage

    pacer = Pacer(cap_bps=plan.cap_bps, window=plan.fill_window())
    policy, timeouts = tuning(config.fill)
    storage = ServiceStorage(config, lambda: set(out_of_service))
    fill = FillRun(plan, storage, config.fill.staging, pacer, policy, timeouts)
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

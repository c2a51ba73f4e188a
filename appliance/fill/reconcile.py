"""Compare what the plan wants with what the appliance holds and what staging already has;
return the work, pyinfra-style (observed facts + wanted state → actions). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.fill.plan import FillPlan, PlannedTitle
from edgeflix.http.content import is_content_named
from edgeflix.titlefiles import FileEntry, TitleFiles


@dataclass(frozen=True)
class Reconciliation:
    fetch: tuple[PlannedTitle, ...]  # in plan order (the fleet orders by priority)
    keep: tuple[str, ...]
    # Deleted only after every fetch completed, so a box never holds less than before.
    delete: tuple[str, ...]


def reconcile(plan: FillPlan, held: Mapping[str, str]) -> Reconciliation:
    """`held`: title id → files.json digest of every servable title on the appliance."""
    fetch, keep = [], []
    for title in plan.titles:
        have = held.get(title.id)
        if have is not None and (title.digest is None or title.digest == have):
            keep.append(title.id)
        else:
            fetch.append(title)
    wanted = {t.id for t in plan.titles}
    delete = tuple(sorted(t for t in held if t not in wanted)) if plan.prune else ()
    return Reconciliation(tuple(fetch), tuple(keep), delete)


@dataclass(frozen=True)
class FileTask:
    entry: FileEntry
    offset: int  # bytes already in the .part file, resumed with Range


def file_tasks(
    model: TitleFiles, complete: Mapping[str, int], partial: Mapping[str, int]
) -> list[FileTask]:
    """Files still to download: those not named by their content first (playlists, the
    poster: a re-publish at the source changes them under the same name, while it keeps the
    old version's content-named segments for hours, origin/replaced.py, so a fill that has
    these can finish the version it started), then largest first (so the slowest finish
    while small ones fill the gaps). `complete`: verified files in staging → size;
    `partial`: .part → bytes."""
    tasks = []
    for entry in model.files:
        if complete.get(entry.path) == entry.size:
            continue
        have = partial.get(entry.path, 0)
        tasks.append(FileTask(entry, have if 0 <= have <= entry.size else 0))
    return sorted(
        tasks, key=lambda t: (is_content_named(t.entry.path), -t.entry.size, t.entry.path)
    )


def remaining_bytes(tasks: list[FileTask]) -> int:
    return sum(t.entry.size - t.offset for t in tasks)

"""`appliance load`, `rm` and `fill`: the commands that change which titles this appliance
holds, by hand (a packaged title in from a local folder, a title out) or downloaded from an
origin or peer. Each stops cleanly on Ctrl-C, and load and rm then tell in one line what is left
of the title, worked out from its row in the index before and after (load_interrupted,
rm_interrupted). The store is opened, and reconciled where needed, through cli_store.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar

import typer

from appliance.cli_store import CONFIG_HELP, disks_out_of_service, open_store, reconcile_and_warn

if TYPE_CHECKING:
    from collections.abc import Callable

    from appliance.index import TitleRow
    from appliance.store import Store


_F = TypeVar("_F", bound="Callable[..., object]")


def _literal(text: str) -> str:
    """Help text that names a config section (`[fill] plan`), shown as written: typer's rich
    help, on a terminal, reads `[fill]` as a style tag and drops it; plain help, in a pipe,
    prints the text as it is (and would print an escape). Decided as edgeflix.ui decides
    which help is shown (plain_help_unless_terminal), once this module is imported."""
    from edgeflix import ui

    if not ui.interactive():
        return text
    from rich.markup import escape

    return escape(text)


def _literal_doc(command: _F) -> _F:
    """_literal for a command's docstring, its help."""
    command.__doc__ = _literal(command.__doc__ or "")
    return command


def _load_fitting(store: Store, load: Callable[[], TitleRow]) -> TitleRow:
    """`load()`, once more after a full reconcile when the title did not fit: `load` only
    reconciles its own title and the unsettled ones (Store.unsettled), and the leftovers of
    the others (partial files, a killed update's version folder) take room on a disk's
    filesystem until the daemon's next reconcile sweeps them. Nothing found, nothing freed:
    the refusal stands."""
    from appliance.disks import CapacityError

    try:
        return load()
    except CapacityError:
        if not reconcile_and_warn(store, None):
            raise
    return load()


def load_cmd(
    title: str = typer.Option(..., "--title", help="Title id (must match its files.json)."),
    source: Path = typer.Option(..., "--from", help="Folder holding the title and its files.json."),
    replace: bool = typer.Option(False, "--replace", help="Reload a title already present."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Load a packaged title from a local folder, verifying every file against files.json."""
    from appliance.mover import title_rate
    from edgeflix import titlefiles, ui

    # Only this title, and the few the index says a crash or a config edit left unsettled,
    # are reconciled before the load (not every stored file: 15 s on a full appliance, for
    # any title); the rest is the daemon's (every reconcile_interval_s), or a full
    # reconcile's when the title does not fit (_load_fitting).
    store = open_store(config, check=False, create=True)
    reconcile_and_warn(store, {title, *store.unsettled()})
    before = _title_now(store, title)
    try:
        rate = title_rate(store.config.index, store.config.decay_half_life_s, title)
        try:
            # files.json is copied in too: the bar ends at 100%, not past it.
            total = titlefiles.read(source)[0].total_bytes
            total += (source / titlefiles.FILES_JSON).stat().st_size
        except (titlefiles.TitleFilesError, OSError):
            total = 0  # store.load says what is wrong with the folder
        with ui.progress(transfer=True) as bar:
            task = bar.add_task(f"load {title}", total=total)
            row = _load_fitting(
                store,
                lambda: store.load(
                    title, source, replace=replace, rate=rate,
                    on_bytes=lambda n: bar.advance(task, n),
                ),
            )  # fmt: skip
    except KeyboardInterrupt:
        _no_more_interrupts()
        ui.interrupted(load_interrupted(title, before, _title_now(store, title)))
    finally:
        store.close()
    if as_json:
        ui.print_json({"id": row.id, "state": row.state, "tier": row.tier, "bytes": row.bytes,
                       "digest": row.digest})  # fmt: skip
        return
    typer.echo(f"loaded {row.id}: {row.bytes} bytes on the {row.tier} tier")


# What a command interrupted by Ctrl-C left of a title, told from its row in the index
# (None: no row; "unknown": the index could not be read).
_Row: TypeAlias = "TitleRow | Literal['unknown'] | None"
_RECONCILED = "the next reconcile removes it (`appliance reconcile`, or the daemon's start)"


def _no_more_interrupts() -> None:
    """Stopped, its undo done, the command only tells what is left: another Ctrl-C (the
    second of a double press) has nothing to stop, and would add a second error line."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _title_now(store: Store, title_id: str) -> _Row:
    from sqlite3 import Error

    from appliance.index import get_title

    try:
        return get_title(store.conn, title_id)
    except Error:
        return "unknown"


def load_interrupted(title: str, before: _Row, after: _Row) -> str:
    """The line for a load stopped by Ctrl-C. The store undoes a load stopped half-way to
    its end, whatever Ctrl-C follows: one whole version is left, or none."""
    from appliance.index import LOADING, READY, REMOVING

    if after == "unknown":
        return f"load interrupted; `appliance ls` shows what is left of {title}"
    if after is None:
        if before is None or before == "unknown" or before.state == REMOVING:
            return f"load interrupted; no part of {title} was kept"
        return (f"load interrupted; no part of {title} was kept, and its old version is gone "
                "too (it was deleted to make room for the new one)")  # fmt: skip
    if after == before:
        return f"load interrupted; {title} is as it was (no part of the new copy was kept)"
    if after.state == READY:
        return f"load interrupted, but not before {title} was loaded: it is ready"
    if after.state in (LOADING, REMOVING):
        return f"load interrupted; what is left of {title} is not served, and {_RECONCILED}"
    return f"load interrupted; {title} is {after.state}"


def rm_interrupted(title: str, after: _Row) -> str:
    """The line for an `rm` stopped by Ctrl-C: a removal that has begun runs to its end."""
    from appliance.index import LOADING, REMOVING

    if after == "unknown":
        return f"rm interrupted; `appliance ls` shows what is left of {title}"
    if after is None:
        return f"rm interrupted, but not before {title} was removed: it is gone"
    if after.state not in (LOADING, REMOVING):
        return f"rm interrupted; {title} was not removed"
    return f"rm interrupted; what is left of {title} is not served, and {_RECONCILED}"


def rm_cmd(
    title: str = typer.Option(..., "--title", help="Title id to remove."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Remove a title and all its files from this appliance. Files on a disk out of service
    are deleted when it is back (the title is `removing` meanwhile, not served)."""
    from edgeflix import ui

    # Only this title is reconciled (an interrupted load or removal of it finished, a copy
    # of it found on the disks but not in the index adopted): the others wait for theirs.
    store = open_store(config, only=[title])
    try:
        pending = store.remove(title)
    except KeyboardInterrupt:
        _no_more_interrupts()
        ui.interrupted(rm_interrupted(title, _title_now(store, title)))
    finally:
        store.close()
    if as_json:
        # `pending` only when files wait for a disk out of service (the shape is otherwise
        # what it always was).
        ui.print_json({"id": title, "removed": True} if not pending else
                      {"id": title, "removed": False, "pending": pending})  # fmt: skip
        return
    if not pending:
        typer.echo(f"removed {title}")
        return
    where = ", ".join(f"{n} files on {disk}" for disk, n in sorted(pending.items()))
    typer.echo(
        f"{title} is out of service, but not all removed: {where} (out of service) cannot be "
        "deleted now; they are deleted when the disk is back in service"
    )


# At most 1 Tbit/s: 1e308 Mbit/s overflowed on the way to bit/s.
_CAP_MBPS_MAX = 1_000_000


def _check_cap_mbps(value: float | None) -> float | None:
    # Not click's range: nan fails every comparison, and was told it was over the maximum.
    if value is not None and not (math.isfinite(value) and 0 <= value <= _CAP_MBPS_MAX):
        raise typer.BadParameter(
            f"must be a finite number of Mbit/s from 0 to {_CAP_MBPS_MAX} (0: no cap)"
        )
    return value


@_literal_doc
def fill_cmd(
    sources: list[str] = typer.Option(
        [], "--from", help="Source URL (origin or peer); repeat to give fallbacks in order."
    ),
    titles: list[str] = typer.Option([], "--title", help="Title id to fill; repeatable."),
    plan: Path | None = typer.Option(
        None, "--plan", help=_literal("Fill plan JSON (default: [fill] plan).")
    ),
    cap_mbps: float | None = typer.Option(
        None,
        "--cap-mbps",
        callback=_check_cap_mbps,
        help=f"Bandwidth cap, Mbit/s, 0 to {_CAP_MBPS_MAX} (0: none; default: the plan's).",
    ),
    streams: int | None = typer.Option(None, "--streams", min=1, max=64, help="Parallel streams."),
    now: bool = typer.Option(False, "--now", help="Ignore the plan's fill window."),
    prune_all: bool = typer.Option(
        False,
        "--prune-all",
        help="Let a plan file that lists none of the titles held remove them all (refused "
        "without it).",
    ),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report."),
) -> None:
    """Download titles from an origin or peer, verified, and make them servable when complete.

    A plan file (--plan, or [fill] plan) lists every title to hold: with its `prune` (the
    default) the titles held but not listed are removed once the listed ones are complete."""
    from appliance import config as appliance_config
    from appliance.fill.runner import raise_for_failures
    from appliance.fill.session import held_titles, plan_from_cli, run_foreground
    from edgeflix import ui

    cfg = appliance_config.load(config)
    fill_plan = plan_from_cli(
        cfg, sources, titles, plan, cap_mbps, streams, now,
        held=held_titles(cfg.storage.index), prune_all=prune_all,
    )  # fmt: skip
    out_of_service = disks_out_of_service(cfg.storage)
    try:
        report = run_foreground(cfg, fill_plan, out_of_service)
    except KeyboardInterrupt:
        ui.interrupted("fill interrupted; downloaded parts are kept and the next fill resumes them")
    if as_json:
        ui.print_json(report.as_json())
    else:
        rows: list[tuple[str, str, object, object, str]] = [
            (p.title, p.state, p.total, p.downloaded, p.error or "") for p in report.titles.values()
        ]
        rows += [(t, "deleted", "", "", "") for t in report.deleted]
        ui.print_table(["title", "state", "bytes", "downloaded", "error"], rows)
    raise_for_failures(report)

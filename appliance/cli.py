"""`edgeflix appliance …`: the appliance's command line (I/O shell over the appliance's cores)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn, TypeAlias, TypeVar

import typer

from edgeflix.tokens import MAX_TTL_S

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from appliance.config import StorageConfig
    from appliance.index import TitleRow
    from appliance.listing import TitleListing
    from appliance.repair import Finding
    from appliance.store import Store
    from edgeflix.tokens import SigningKey

app = typer.Typer(no_args_is_help=True)

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


# -- storage: load / ls / rm / verify ------------------------------------------------------
# Imports stay inside the commands so `run` and `sign` do not pay for the storage stack.

_CONFIG_HELP = "Appliance config (TOML); defaults when left out."


def _disks_out_of_service(storage: StorageConfig) -> set[str]:
    """Probe the disks once, for a one-off command: a dead disk (EIO, gone, hung), or one not
    mounted, is left alone rather than failing the command or having its files dropped (the
    daemon takes it out and re-verifies it when it is back). Warnings on stderr."""
    from appliance.diskwatch import probe_disks, unusable
    from edgeflix.ui import warn

    probes = probe_disks([d.path for d in storage.disks], storage.index)
    dead = unusable(probes)
    for path, why in sorted(dead.items()):
        warn(f"disk {path} is out of service ({why}): its files are not checked or changed")
    for probe in probes:
        if probe.outcome == "read_only":
            warn(f"disk {probe.path} is read-only: its files are read, new files go elsewhere")
        elif probe.outcome == "full":
            warn(f"disk {probe.path} is full ({probe.detail}): its files are read and can be "
                 "removed; nothing new fits there")  # fmt: skip
    return set(dead)


def _open_store(
    config: Path | None,
    findings: list[Finding] | None = None,
    *,
    check: bool = True,
    only: Collection[str] | None = None,
    create: bool = False,
) -> Store:
    """Load the config, open the store and, with `check`, reconcile it (only the titles in
    `only`, when given), reporting findings on stderr (and into `findings`, for a command
    that reports them itself). A reconcile reads every stored file's folder: a command that
    only reads the index (`ls`) does without, or it would take minutes on a full appliance.
    Only with `create` (`load`) is a missing index made: for the others it is a mistyped
    path or an appliance with nothing on it, told in one line."""
    from appliance import config as appliance_config

    storage = appliance_config.load(config).storage
    return _store_of(storage, findings, check=check, only=only, create=create)


def _store_of(
    storage: StorageConfig,
    findings: list[Finding] | None = None,
    *,
    check: bool = True,
    only: Collection[str] | None = None,
    create: bool = False,
) -> Store:
    """_open_store on a loaded config's [storage]."""
    from appliance.index import no_index, refuse_newer
    from appliance.store import Store

    if not create and not storage.index.exists():
        raise no_index(storage.index)  # before the disk probes warn of anything
    refuse_newer(storage.index)  # so too: a newer Edgeflix's index, this one may misread
    store = Store(storage, out_of_service=_disks_out_of_service(storage), create=create)
    if check:
        _reconcile(store, only, findings)
    return store


def _reconcile(
    store: Store, only: Collection[str] | None, findings: list[Finding] | None = None
) -> bool:
    """reconcile(store, only), its findings on stderr (and into `findings`); True when it
    found anything."""
    from appliance.findings import grouped, summary_line
    from appliance.repair import reconcile
    from edgeflix.ui import warn

    report = reconcile(store, only)
    for group in grouped(report.findings):  # a lost disk's thousands of files: a few lines
        warn(summary_line(group))
    if findings is not None:
        findings.extend(report.findings)
    return bool(report.findings)


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
        if not _reconcile(store, None):
            raise
    return load()


@app.command("load")
def load_cmd(
    title: str = typer.Option(..., "--title", help="Title id (must match its files.json)."),
    source: Path = typer.Option(..., "--from", help="Folder holding the title and its files.json."),
    replace: bool = typer.Option(False, "--replace", help="Reload a title already present."),
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Load a packaged title from a local folder, verifying every file against files.json."""
    from appliance.mover import title_rate
    from edgeflix import titlefiles, ui

    # Only this title, and the few the index says a crash or a config edit left unsettled,
    # are reconciled before the load (not every stored file: 15 s on a full appliance, for
    # any title); the rest is the daemon's (every reconcile_interval_s), or a full
    # reconcile's when the title does not fit (_load_fitting).
    store = _open_store(config, check=False, create=True)
    _reconcile(store, {title, *store.unsettled()})
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


@app.command("ls")
def ls_cmd(
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the titles on this appliance with state, tier, disks and bytes, as the index has
    them: the disks are checked by the daemon (at start and every reconcile_interval_s),
    `appliance reconcile` and `appliance verify`."""
    from dataclasses import asdict

    from appliance import config as appliance_config
    from appliance.listing import never_loaded
    from edgeflix import ui

    storage = appliance_config.load(config).storage
    # A fresh box has no index until its first load, fill or run: it holds no titles, and
    # `ls`, often a new user's first command, says so (making no index, nor probing disks).
    fresh = never_loaded(storage.index)
    titles: list[TitleListing] = []
    if not fresh:
        store = _store_of(storage, check=False)
        try:
            titles = store.listing()
        finally:
            store.close()
    if as_json:
        ui.print_json([asdict(t) for t in titles])
        return
    if not titles and ui.interactive():
        ui.console().print(_no_titles(storage.index, fresh), markup=False, highlight=False)
        return
    rows = [(t.id, t.state, t.tier, ",".join(t.disks), t.bytes, _files_cell(t)) for t in titles]
    ui.print_table(("title", "state", "tier", "disks", "bytes", "files"), rows)


def _no_titles(index: Path, fresh: bool) -> str:
    """What `ls` on a terminal says of a box holding no titles; with no index yet, its path,
    where a mistyped [storage] index shows."""
    if not fresh:
        return "no titles on this appliance"
    return f"no titles on this appliance yet (no index at {index} until the first load or run)"


def _files_cell(t: TitleListing) -> str | int:
    notes = [f"{t.missing} missing"] if t.missing else []
    if t.unconfigured:  # until a reconcile sets them aside (missing), as the daemon does
        notes += [f"{t.unconfigured} on disks not in [storage] disks"]
    notes += [f"{t.unavailable} on disks out of service"] if t.unavailable else []
    if t.kept_files and t.kept_until is not None:
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.kept_until))
        notes += [f"+{t.kept_files} of older versions kept until {until}"]
    return f"{t.files} ({', '.join(notes)})" if notes else t.files


@app.command("rm")
def rm_cmd(
    title: str = typer.Option(..., "--title", help="Title id to remove."),
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Remove a title and all its files from this appliance. Files on a disk out of service
    are deleted when it is back (the title is `removing` meanwhile, not served)."""
    from edgeflix import ui

    # Only this title is reconciled (an interrupted load or removal of it finished, a copy
    # of it found on the disks but not in the index adopted): the others wait for theirs.
    store = _open_store(config, only=[title])
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


@app.command("reconcile")
def reconcile_cmd(
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Bring the index and the disks into agreement now, as the daemon does at start: serve
    again files marked missing that are back (verified), finish interrupted loads and
    removals, drop missing or truncated files, delete partial and stray files. Exit status 1
    when a stored file was lost (its title is marked incomplete)."""
    from appliance.repair import reconcile
    from appliance.startup import restore_disks
    from edgeflix import ui

    store = _open_store(config, check=False)
    try:
        restored = restore_disks(store)  # first, as the daemon does at start
        report = reconcile(store)
    finally:
        store.close()
    if as_json:
        ui.print_json(
            {
                "checked_files": report.checked_files,
                "findings": [
                    {"title": f.title, "path": f.path, "problem": f.problem, "damage": f.damage}
                    for f in report.findings
                ],
                "busy": report.busy,
                "restored": restored,
            }
        )
    else:
        for title_id in restored:
            typer.echo(f"{title_id}: ready again (its missing files are back, and verified)")
        for finding in report.findings:
            typer.echo(str(finding))
        for title_id in report.busy:
            typer.echo(f"{title_id}: not checked (another process is working on it)")
        typer.echo(f"checked {report.checked_files} files: {len(report.findings)} findings")
    if any(f.damage for f in report.findings):
        raise typer.Exit(1)


@app.command("verify")
def verify_cmd(
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Re-hash every stored file; bad files are dropped and their titles marked incomplete."""
    from appliance.repair import verify
    from edgeflix import ui

    # Files the start-up reconcile dropped (missing, truncated, replaced by a link) are damage
    # too: counted with what re-hashing finds, so the exit status tells of either.
    found: list[Finding] = []
    store = _open_store(config, found)
    try:
        total = store.servable_bytes()
        with ui.progress(transfer=True) as bar:
            task = bar.add_task("verify", total=total)
            report = verify(store, on_bytes=lambda n: bar.advance(task, n))
    finally:
        store.close()
    report.findings[:0] = [f for f in found if f.damage]
    problems = [{"title": f.title, "path": f.path, "problem": f.problem} for f in report.findings]
    if as_json:
        ui.print_json(
            {
                "checked_files": report.checked_files,
                "checked_bytes": report.checked_bytes,
                "problems": problems,
                "busy": report.busy,
                "unchecked": report.unchecked,
            }
        )
    else:
        for finding in report.findings:
            typer.echo(str(finding))
        for disk, count in sorted(report.unchecked.items()):
            typer.echo(f"disk {disk} is out of service: {count} files not checked")
        typer.echo(
            f"checked {report.checked_files} files, {report.checked_bytes} bytes: "
            f"{len(problems)} problems"
        )
    if problems or report.unchecked:
        raise typer.Exit(1)


# -- serving: run / sign -------------------------------------------------------------------


@app.command("run")
def run_cmd(
    config: Path | None = typer.Option(None, "--config", help="Appliance config (TOML)."),
) -> None:
    """Run the appliance daemon: serving workers, admin listener, tier mover (until SIGTERM
    or Ctrl-C)."""
    from appliance import config as appliance_config
    from appliance.daemon import run

    run(appliance_config.load(config), config)


@app.command("sign")
def sign_cmd(
    title: str = typer.Option(..., "--title", help="Title id to grant."),
    ttl: int = typer.Option(
        3600, "--ttl", min=1, max=MAX_TTL_S, help="Seconds the URL stays valid (10 years at most)."
    ),
    client_ip: str | None = typer.Option(None, "--client-ip", help="Bind to one client."),
    key_id: str | None = typer.Option(None, "--key", help="Key id (default: the first key)."),
    config: Path | None = typer.Option(None, "--config", help="Appliance config (TOML)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print a signed URL to the title's master.m3u8 on this appliance."""
    import time

    from appliance import config as appliance_config
    from edgeflix import tokens
    from edgeflix.configtypes import is_wildcard_host, parse_hostport
    from edgeflix.errors import ConfigError
    from edgeflix.titlefiles import check_title_id

    cfg = appliance_config.load(config)
    check_title_id(title)
    if key_id is not None and not key_id.strip():
        raise typer.BadParameter("the key id is empty; leave out --key to sign with the first "
                                 "key", param_hint="--key")  # fmt: skip
    keys = [k for k in cfg.auth.keys if key_id is None or k.id == key_id]
    now = time.time()
    expires = int(now) + ttl
    if keys:
        key = tokens.SigningKey(keys[0].id, keys[0].secret_bytes())
    elif not cfg.auth.keys and cfg.fleet.url is not None:  # the fleet's keys, as cached
        key = _fleet_signing_key(cfg.fleet_state_dir(), key_id, now, expires)
    else:
        raise ConfigError(
            "no such key in [auth] keys" if key_id is not None else "[auth] keys is empty"
        )
    token = tokens.sign(title, key, expires, client_ip)
    path = tokens.signed_path(token, title, "master.m3u8")
    if cfg.fleet.public_url is not None:  # where players reach this appliance
        url = cfg.fleet.public_url.rstrip("/") + path
    else:
        from edgeflix.ui import warn

        host, port = parse_hostport(cfg.serve.listen)
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"
        if port == 0:  # the daemon picks its port at start: only the path part is usable
            warn("[serve] listen has port 0, so the URL's port is not the daemon's; use its path")
        elif is_wildcard_host(host):
            warn(
                f"[serve] listen is on all interfaces, so {host} in the URL is no address a "
                "player can reach; set [fleet] public_url, or use the URL's path"
            )
    if as_json:
        from edgeflix.ui import print_json

        print_json({"url": url, "title": title, "key": key.id, "expires": expires,
                    "client_ip": client_ip})  # fmt: skip
        return
    typer.echo(url)


def _fleet_signing_key(state_dir: Path, key_id: str | None, now: float, expires: int) -> SigningKey:
    """A fleet-managed appliance verifies with the fleet's keys, cached by its fleet link in
    `state_dir`: sign with the one the fleet signs with now (or `key_id`, while it verifies).
    A token expiring after the fleet stops having the key verified is refused (a usage
    error naming the longest --ttl): the URL would die early, when the fleet rotates keys."""
    import os

    from appliance.fleetlink_files import KEYS_FILE
    from appliance.fleetlink_keys import signing_key, verified_until
    from appliance.fleetlink_state import LinkState
    from edgeflix.errors import ConfigError
    from edgeflix.tokens import SigningKey

    path = state_dir / KEYS_FILE
    if not path.is_file():
        raise ConfigError(
            f"[auth] keys is empty and no fleet keys are cached in {path} yet (the daemon "
            "fetches them once enrolled); until then the fleet signs: `edgeflix fleet steer`"
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(f"cannot read {path}: run this as the appliance daemon's user")
    cached = LinkState(state_dir).keys()
    held = cached.payload if cached is not None else ()
    if key_id is None:
        picked = signing_key(held, now)
    else:
        picked = next(
            (k for k in held if k.id == key_id and (k.verify_until == 0 or now < k.verify_until)),
            None,
        )
    if picked is None:
        raise ConfigError(
            f"no fleet key in {path} signs now"
            if key_id is None
            else f"no such key in the fleet's keys ({path})"
        )
    until = verified_until(picked, now)
    if until is None:
        from edgeflix.ui import warn

        warn(
            f"the fleet's key set does not say how long key {picked.id} verifies once retired "
            "(a fleet manager from before that): the URL may stop working at its next key "
            "rotation, before it expires"
        )
    elif expires > until:
        _refuse_ttl(picked.id, until, now)
    return SigningKey(picked.id, picked.secret)


def _refuse_ttl(key_id: str, until: float, now: float) -> NoReturn:
    """--ttl past what the fleet's key set guarantees: one line naming the longest one."""
    from datetime import UTC, datetime

    longest = int(until) - int(now)
    at = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    advice = f"use --ttl {longest} or less" if longest >= 1 else "leave out --key"
    raise typer.BadParameter(
        f"the fleet's key {key_id} is only sure to be verified until {at}, and a URL "
        f"signed with it stops working then; {advice}",
        param_hint="--ttl",
    )


# -- fill and status ------------------------------------------------------------------------


# At most 1 Tbit/s: 1e308 Mbit/s overflowed on the way to bit/s.
_CAP_MBPS_MAX = 1_000_000


def _check_cap_mbps(value: float | None) -> float | None:
    # Not click's range: nan fails every comparison, and was told it was over the maximum.
    if value is not None and not (math.isfinite(value) and 0 <= value <= _CAP_MBPS_MAX):
        raise typer.BadParameter(
            f"must be a finite number of Mbit/s from 0 to {_CAP_MBPS_MAX} (0: no cap)"
        )
    return value


@app.command("fill")
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
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
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
    out_of_service = _disks_out_of_service(cfg.storage)
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


@app.command("status")
def status_cmd(
    config: Path | None = typer.Option(None, "--config", help=_CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Hardware profile, health (ok / degraded / failing, with reasons), fleet link and fill state.

    Exit status: 0 healthy, 3 degraded (serving, with reasons), 4 failing; 1 or 2 when no
    status could be taken (2: a bad command line or config)."""
    from appliance import config as appliance_config
    from appliance.listing import never_loaded
    from appliance.status import exit_code, status_document
    from edgeflix import ui

    cfg = appliance_config.load(config)
    # A fresh box (no index until its first load, fill or run) has a state all the same.
    fresh = never_loaded(cfg.storage.index)
    doc = status_document(cfg)
    code = exit_code(doc["health"]["state"])
    if as_json:
        ui.print_json(doc)
        raise typer.Exit(code)
    health, profile = doc["health"], doc["profile"]
    rows: list[tuple[str, str]] = [
        ("health", health["state"]),
        *(("reason", r) for r in health["reasons"]),
        *(("warning", w) for w in health["warnings"]),
    ]
    if doc["fleet"] is not None:
        rows.append(("fleet", f"{doc['fleet']['phase']} ({doc['fleet']['url']})"))
    rows.append(("titles", _titles_cell(doc["titles"], cfg.storage.index, fresh)))
    rows += [
        ("capacity", f"{doc['capacity_bps'] / 1e9:.2f} Gbit/s"),
        ("cpu", f"{profile['cpu']['model']} ({profile['cpu']['logical_cores']} cores)"),
        ("memory", f"{profile['memory_bytes'] / 2**30:.1f} GiB"),
    ]
    if profile["board"]:
        rows.append(("board", profile["board"]))
    for d in profile["disks"]:
        rows.append(
            ("disk", " ".join(filter(None, (d["path"], d["kind"], d["model"], "on", d["mount"]))))
        )
    for n in profile["nics"]:
        if not n["virtual"]:
            speed = f"{n['speed_bps'] / 1e6:.0f} Mbit/s" if n["speed_bps"] else "speed unknown"
            rows.append(("nic", f"{n['name']} {speed} mtu {n['mtu']}"))
    for t in profile["temperatures"]:
        rows.append(("temperature", f"{t['sensor']} {t['celsius']:.1f} C"))
    for title_id, p in ((doc["fill"] or {}).get("titles") or {}).items():
        rows.append(("fill", f"{title_id} {p['state']} {p['done']}/{p['total']} bytes"))
    ui.print_table(["what", "value"], rows)
    raise typer.Exit(code)


def _titles_cell(held: dict[str, int] | None, index: Path, fresh: bool) -> str:
    """The titles row of `status`: how many, or why none (a fresh box names its index path,
    where a mistyped [storage] index shows)."""
    if held is None:
        return "unknown (the index cannot be read)"
    if held["count"]:
        return f"{held['count']} ({held['bytes'] / 1e9:.2f} GB)"
    if fresh:
        return f"none yet (no index at {index})"
    return "none"

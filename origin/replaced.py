"""Segments of a replaced title, kept for the players that started on it.

`ingest --replace` publishes a new version whose segments have new names (they are named by
their content). A player, or an appliance filling the old version, still holds the old
playlists or files.json and asks for the old names for as long as it plays: those answer
404 once the old folder is gone. So before the swap, the old version's content-named files
that the new one lacks are hard-linked into STORE/.replaced/<id>~<until>~<token>/ (no copy,
no extra space while the old folder lives), and `origin serve` answers those names from there
until <until>. Everything else (playlists, files.json, names the new version has) answers
from the live title. Each ingest deletes the folders whose time is up.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

from edgeflix.http.content import is_content_named
from edgeflix.titlefiles import FILES_JSON, TitleFilesError, read

REPLACED = ".replaced"
SEP = "~"  # never in a title id (edgeflix.titlefiles.check_title_id)
# About a long film watched with a pause or two: what a session that started on the old
# version can still need.
KEEP_S = 6 * 3600.0


def replaced_dir(store: Path) -> Path:
    return store / REPLACED


def parse(name: str) -> tuple[str, float] | None:
    """(title id, until) of a folder under .replaced, or None for anything else."""
    parts = name.split(SEP)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0], float(parts[1])


def keep(store: Path, title_id: str, live: Path, new_paths: Collection[str], until: float) -> int:
    """Link the live version's content-named files that `new_paths` lacks under .replaced;
    returns how many. All or nothing: a failure leaves no folder behind and raises."""
    wanted = []
    for folder, _dirs, names in os.walk(live):
        for name in names:
            path = Path(folder) / name
            rel = path.relative_to(live).as_posix()
            if is_content_named(rel) and rel not in new_paths:
                wanted.append((path, rel))
    if not wanted:
        return 0
    target = replaced_dir(store) / f"{title_id}{SEP}{int(until)}{SEP}{secrets.token_hex(4)}"
    try:
        for path, rel in wanted:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target / rel)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return len(wanted)


def sweep(store: Path, now: float) -> list[str]:
    """Delete the folders whose time is up (and anything under .replaced not ours)."""
    root = replaced_dir(store)
    if not root.is_dir():
        return []
    gone = []
    for entry in sorted(root.iterdir()):
        parsed = parse(entry.name)
        if parsed is not None and parsed[1] > now:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        gone.append(entry.name)
    return gone


def servable(store: Path, live: Mapping[str, Path], now: float) -> dict[tuple[str, str], Path]:
    """(title id, path) → the kept file that answers it: titles still published (`live`:
    id → folder), folders not yet due, names the live version does not have; the newest
    folder wins when two kept the same name."""
    root = replaced_dir(store)
    if not root.is_dir():
        return {}
    found: list[tuple[float, str, Path]] = []
    for entry in root.iterdir():
        parsed = parse(entry.name)
        if parsed is None or parsed[1] <= now or parsed[0] not in live:
            continue
        if entry.is_dir() and not entry.is_symlink():
            found.append((parsed[1], parsed[0], entry))
    current: dict[str, set[str]] = {}
    kept: dict[tuple[str, str], Path] = {}
    for _until, title_id, folder in sorted(found, key=lambda f: f[0]):
        if title_id not in current:
            try:
                model, _ = read(live[title_id])
                current[title_id] = {e.path for e in model.files} | {FILES_JSON}
            except TitleFilesError:
                current[title_id] = set()
        for sub, _dirs, names in os.walk(folder):
            for name in names:
                path = Path(sub) / name
                rel = path.relative_to(folder).as_posix()
                if is_content_named(rel) and rel not in current[title_id]:
                    kept[(title_id, rel)] = path
    return kept

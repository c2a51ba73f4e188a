"""Segments of a replaced title, kept for the players that started on it.

`ingest --replace` publishes a new version whose segments and rendition playlists have new
names (they are named by their content). A player, or an appliance filling the old version,
still holds the old master.m3u8 or files.json and asks for the old names for as long as it
plays: those answer 404 once the old folder is gone. So before the swap, the old version's
content-named files that the new one lacks are hard-linked into
STORE/.replaced/<id>~<until>~<token>/ (no copy, no extra space while the old folder lives),
and `origin serve` answers those names from there until <until>. Everything else
(master.m3u8, manifest.mpd, files.json, the poster, names the new version has) answers from
the live title. Each ingest deletes the folders whose time is up.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Collection, Iterator, Mapping
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


_NAME = re.compile(r"([^~]+)~([0-9]{1,12})~([0-9a-f]+)", re.ASCII)


def parse(name: str) -> tuple[str, float] | None:
    """(title id, until) of a folder under .replaced, or None for anything else."""
    match = _NAME.fullmatch(name)
    return (match.group(1), float(match.group(2))) if match else None


def keep(
    store: Path,
    title_id: str,
    live: Path,
    new_paths: Collection[str],
    until: float,
    scratch: Path,
) -> int:
    """Link the live version's content-named files that `new_paths` lacks under .replaced;
    returns how many. The folder is built in `scratch` (the ingest's own locked temp folder,
    on the store's filesystem) and renamed in whole: `origin serve` walks a kept folder once
    (KeptSegments), so it must never see one half-linked. All or nothing: a failure leaves
    no folder behind and raises."""
    wanted = []
    for folder, _dirs, names in os.walk(live):
        for name in names:
            path = Path(folder) / name
            rel = path.relative_to(live).as_posix()
            if is_content_named(rel) and rel not in new_paths:
                wanted.append((path, rel))
    if not wanted:
        return 0
    name = f"{title_id}{SEP}{int(until)}{SEP}{secrets.token_hex(4)}"
    building = scratch / name
    try:
        for path, rel in wanted:
            (building / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, building / rel)
        replaced_dir(store).mkdir(exist_ok=True)
        os.rename(building, replaced_dir(store) / name)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return len(wanted)


def sweep(store: Path, now: float, all_of: str | None = None) -> list[str]:
    """Delete the folders whose time is up (and anything under .replaced not ours), and
    every folder of title `all_of` (it was removed from the store)."""
    root = replaced_dir(store)
    if not root.is_dir():
        return []
    gone = []
    for entry in sorted(root.iterdir()):
        parsed = parse(entry.name)
        if parsed is not None and parsed[1] > now and parsed[0] != all_of:
            continue
        try:  # best effort: what cannot go now is tried again at the next ingest
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        except OSError:
            continue
        gone.append(entry.name)
    return gone


class KeptSegments:
    """For `origin serve`: (title id, path) → the kept file that answers it, and until when.
    Rebuilt when the store changes (a publish, a sweep), from caches, since a store keeps
    many long titles: a kept folder never changes once made (so it is walked once), and a
    live files.json is read again only when its folder or the file changed."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self._walked: dict[str, frozenset[str]] = {}  # kept folder name → its content paths
        self._live: dict[str, tuple[tuple[int, int, int, int], frozenset[str]]] = {}
        self._kept: dict[tuple[str, str], tuple[Path, float]] = {}

    def refresh(self, live: Mapping[str, Path]) -> None:
        """`live`: the published titles, id → folder. Folders of titles no longer
        published, and names the live version has, answer nothing."""
        root = replaced_dir(self.store)
        found: list[tuple[float, str, str]] = []
        if root.is_dir():
            for entry in root.iterdir():
                parsed = parse(entry.name)
                if parsed and parsed[0] in live and entry.is_dir() and not entry.is_symlink():
                    found.append((parsed[1], parsed[0], entry.name))
        walked: dict[str, frozenset[str]] = {}
        kept: dict[tuple[str, str], tuple[Path, float]] = {}
        for until, title_id, name in sorted(found):  # the newest last: it wins a name
            paths = self._walked.get(name)
            if paths is None:
                paths = frozenset(_content_paths(root / name))
            walked[name] = paths
            current = self._current(title_id, live[title_id])
            for rel in paths - current:
                kept[(title_id, rel)] = (root / name / rel, until)
        self._walked, self._kept = walked, kept

    def lookup(self, title_id: str, rel: str, now: Callable[[], float] = time.time) -> Path | None:
        """The kept file for the name, or None (the clock is read only for a kept name: this
        runs for every request)."""
        found = self._kept.get((title_id, rel))
        return found[0] if found is not None and found[1] > now() else None

    def _current(self, title_id: str, folder: Path) -> frozenset[str]:
        try:
            dir_st, st = folder.stat(), (folder / FILES_JSON).stat()
        except OSError:
            return frozenset()
        key = (dir_st.st_ino, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._live.get(title_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            model, _ = read(folder)
            paths = frozenset({e.path for e in model.files} | {FILES_JSON})
        except TitleFilesError:
            paths = frozenset()
        self._live[title_id] = (key, paths)
        return paths


def _content_paths(folder: Path) -> Iterator[str]:
    for sub, _dirs, names in os.walk(folder):
        for name in names:
            rel = (Path(sub) / name).relative_to(folder).as_posix()
            if is_content_named(rel):
                yield rel

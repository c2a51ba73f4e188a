"""The storage index: which file of a title is on which disk, with size and SHA-256 (SQLite, WAL).

store.py is the one writer (each write a `BEGIN IMMEDIATE` transaction); serving workers read
through `IndexReader` on their own read-only connections and never scan disks per request.
A title is served once 'ready', and only through files in state 'ok'; when it becomes
'incomplete' (a disk lost, a file dropped) its files still verified keep serving and the lost
ones 404, so a playing client fails over per segment while the fill replaces the title.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.disks import TITLES_DIR, StorageError
from edgeflix.http.content import is_content_named

if TYPE_CHECKING:
    import sqlite_utils

T = TypeVar("T")

# Title states: loading → ready (servable) → incomplete (a file went missing or bad);
# removing while `rm` deletes files. Only 'ready' is served.
LOADING, READY, INCOMPLETE, REMOVING = "loading", "ready", "incomplete", "removing"
# File states: ok, or missing (gone, truncated or failed verification: kept for the record).
OK, MISSING = "ok", "missing"
_BUSY_TIMEOUT_MS = 30_000
_WAL_RETRY_S = 0.02
# Titles are recorded in the index only, but every title's files.json is on its disks:
# reconcile adopts complete titles it finds there (repair.py), so a new index loses nothing.
_DAMAGED_HINT = "; move it (and its -wal and -shm files) aside and start again to rebuild it"
# Index files this process found undamaged, by path: the main file's identity and last change
# then. Background threads open a store every round (seconds apart), and the check reads the
# whole index (~2 s at 3M files): it runs again only when the file is another one, or was
# written since (a checkpoint, or damage done behind SQLite's back).
_checked: dict[str, tuple[int, ...]] = {}
_CACHE_MAX = 65_536
# Paths that found nothing are remembered too (a player retrying a missing segment), but few:
# they come from clients, and 65,536 junk paths of up to 16 KiB each would hold hundreds of
# MB in every worker for as long as the index does not change.
_MISSES_MAX = 1024
# Less room than this and SQLite cannot make or grow the index's -shm (32 KiB) and -wal:
# its "disk I/O error" then means a full filesystem, which is how the operator is told.
INDEX_ROOM_BYTES = 1 << 20


@dataclass(frozen=True)
class LocatedFile:
    """Where a servable file is, as the server needs it to open and describe it."""

    title_id: str
    rel_path: str
    path: Path
    size: int
    sha256: str
    mtime_ns: int
    disk: str
    tier: str


@dataclass(frozen=True)
class TitleRow:
    id: str
    digest: str
    state: str
    tier: str
    bytes: int
    loaded_at: float
    folder: str  # its folder on every disk: the id, or `id~tag` after an update (see below)


@dataclass(frozen=True)
class FileRow:
    title: str
    path: str
    disk: str
    size: int
    sha256: str
    mtime_ns: int
    state: str
    folder: str  # the title's folder (TitleRow.folder)

    @property
    def location(self) -> Path:
        return file_path(self.disk, self.folder, self.path)


def file_path(disk: str, folder: str, rel_path: str) -> Path:
    """Where a title's file lives on a disk: DISK/titles/FOLDER/PATH (FOLDER: see folders.py)."""
    return Path(disk) / TITLES_DIR / folder / rel_path


# The index's format, stamped in its `PRAGMA user_version` by create_schema. Raise it with
# any change that code of an earlier version would misread (as code from before `titles.folder`
# looks for an updated title in the bare id's folder, and 404s all of it): that code then
# refuses the index, in one line, instead of serving off it. 0: an index made before the stamp
# (any shape up to this one's), which create_schema brings to this shape and stamps.
INDEX_SCHEMA = 1

# What the schema of this version has (sqlite_master names; `folder` checked apart): an index
# that has it all opens without any DDL, as nearly every open does.
_SCHEMA_NAMES = frozenset({"titles", "files", "idx_files_disk", "superseded", "scrub", "reserved"})


class NewerIndexError(StorageError):
    """The index was written by a newer Edgeflix, in a format this one may misread."""


def newer_index(index: Path | str, version: int) -> NewerIndexError | None:
    """The refusal for an index stamped `version`, when that is past what this code knows."""
    if version <= INDEX_SCHEMA:
        return None
    return NewerIndexError(
        f"index {index} was written by a newer Edgeflix (schema {version}, this one knows "
        f"{INDEX_SCHEMA}): run that version"
    )


def _schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _refuse_newer(conn: sqlite3.Connection, index: Path | str) -> None:
    refusal = newer_index(index, _schema_version(conn))
    if refusal is not None:
        raise refusal


def schema_current(conn: sqlite3.Connection) -> bool:
    """The index is in WAL mode, stamped INDEX_SCHEMA, and has every table, column and index
    create_schema makes."""
    if _schema_version(conn) != INDEX_SCHEMA:
        return False
    if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        return False
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if not _SCHEMA_NAMES.issubset(names):
        return False
    return any(row[1] == "folder" for row in conn.execute("PRAGMA table_info(titles)"))


def create_schema(conn: sqlite3.Connection) -> None:
    """Make what the index lacks. The first commands on a new box often start together: the
    DDL runs in one `BEGIN IMMEDIATE` transaction, which waits out the busy timeout for the
    write lock. A deferred one (sqlite_utils' own) reads the schema first, and a read lock
    that must become a write lock after another connection committed fails at once with
    "database is locked", whatever the timeout. A newer Edgeflix's index is refused before
    anything is changed (NewerIndexError); an older one is stamped INDEX_SCHEMA once it has
    all this version makes."""
    if schema_current(conn):
        return
    index = conn.execute("PRAGMA database_list").fetchone()[2]
    _refuse_newer(conn, index)
    import sqlite_utils  # the writer's only, on a new or older index: workers never load it

    _enable_wal(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        _refuse_newer(conn, index)  # a newer Edgeflix may have made it meanwhile
        _create_tables(sqlite_utils.Database(conn))
        conn.execute(f"PRAGMA user_version = {INDEX_SCHEMA}")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch a new index to WAL (outside any transaction, as SQLite requires). The switch
    waits out the busy timeout for its lock, but on a new file other processes are switching
    at the same moment it can fail at once: then it is tried again, up to the busy timeout."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(_WAL_RETRY_S)


def _create_tables(db: sqlite_utils.Database) -> None:
    conn = db.conn
    titles = db["titles"]
    titles.create(  # type: ignore[union-attr]
        {
            "id": str,
            "digest": str,
            "state": str,
            "tier": str,
            "bytes": int,
            "loaded_at": float,
            "folder": str,  # NULL: the id (every title of an index made before updates kept it)
        },
        pk="id",
        not_null={"digest", "state", "tier", "bytes", "loaded_at"},
        if_not_exists=True,
    )
    if "folder" not in titles.columns_dict:
        titles.add_column("folder", str)  # type: ignore[union-attr]
    db["files"].create(  # type: ignore[union-attr]
        {
            "title": str,
            "path": str,
            "disk": str,
            "size": int,
            "sha256": str,
            "mtime_ns": int,
            "state": str,
        },
        pk=("title", "path"),
        not_null={"disk", "size", "sha256", "mtime_ns", "state"},
        foreign_keys=[("title", "titles", "id")],
        if_not_exists=True,
    )
    db["files"].create_index(["disk"], if_not_exists=True)  # type: ignore[union-attr]
    # Files of a replaced version kept for the sessions that started on it (replaced.py).
    conn.execute(
        "CREATE TABLE IF NOT EXISTS superseded (title TEXT NOT NULL, path TEXT NOT NULL, "
        "disk TEXT NOT NULL, folder TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, "
        "mtime_ns INTEGER NOT NULL, until REAL NOT NULL, PRIMARY KEY (title, path))"
    )
    # The background scrub's cursor (appliance/scrub.py): one row.
    conn.execute(
        "CREATE TABLE IF NOT EXISTS scrub (id INTEGER PRIMARY KEY CHECK (id = 0), "
        "title TEXT NOT NULL, path TEXT NOT NULL, passes INTEGER NOT NULL, bad INTEGER NOT NULL)"
    )
    # Room a load or tier move in progress takes on each disk, from its room check until its
    # files' rows are in (capacity.py): counted while its title's lock is held.
    conn.execute(
        "CREATE TABLE IF NOT EXISTS reserved (title TEXT NOT NULL, disk TEXT NOT NULL, "
        "size INTEGER NOT NULL, PRIMARY KEY (title, disk))"
    )


def no_index(index: Path) -> StorageError:
    """For a command that works on titles already stored: it makes no index."""
    return StorageError(f"no index at {index}: nothing loaded yet, or [storage] index is mistyped")


def connect_writer(index: Path, *, create: bool = True) -> sqlite3.Connection:
    """The writer's connection; creates the index and its folder on first use, unless not
    `create` (then no_index() when there is none: a mistyped path makes nothing)."""
    if not create and not index.exists():
        raise no_index(index)
    try:
        if create:
            index.parent.mkdir(parents=True, exist_ok=True)
            target: str | Path = index
        else:  # mode=rw: SQLite never creates the file, should it go after the check
            target = f"{index.resolve().as_uri()}?mode=rw"
        conn = sqlite3.connect(
            target, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000, uri=not create
        )
        try:
            _refuse_newer(conn, index)  # before anything is set or made
        except NewerIndexError:
            conn.close()
            raise
        # FULL: a committed row must outlive a power cut, like the fsynced file it describes.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        create_schema(conn)
        # A damaged page otherwise surfaces in whichever query first reads it, half-way
        # through a command: checked once per process and file (see _checked). The stamp is
        # taken first, so a write during the check makes the next open check again.
        key, stamp = os.path.abspath(index), _stamp(index)
        if _checked.get(key) == stamp:
            problem = "ok"
        else:
            problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except (OSError, sqlite3.Error) as exc:
        # Only damage is mended by a new index; I/O errors, a full disk or a lock are not.
        damaged = isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.OperationalError
        )
        hint = _DAMAGED_HINT if damaged else ""
        why = (None if damaged else full_filesystem(index)) or exc
        raise StorageError(f"cannot open the index {index}: {why}{hint}") from None
    if problem != "ok":
        conn.close()
        detail = " ".join(str(problem).split())  # one line: SQLite's report spans several
        raise StorageError(f"the index {index} is damaged ({detail}){_DAMAGED_HINT}")
    _checked[key] = stamp
    return conn


def _stamp(index: Path) -> tuple[int, ...]:
    """The main file's identity and last change: a file put in its place (a backup restored,
    a new index) has another inode, and a write changes its ctime, which no tool can set."""
    st = os.stat(index)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def full_filesystem(index: Path) -> str | None:
    """What to say when the filesystem holding the index has less than INDEX_ROOM_BYTES
    this process may write (root may use the reserved blocks); None when it has room."""
    try:
        st = os.statvfs(index.parent)
    except OSError:
        return None  # no folder yet (or none reachable): nothing to say about its space
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    if free >= INDEX_ROOM_BYTES:
        return None
    return f"the filesystem holding the index is full ({free} bytes free)"


def open_problem(index: Path) -> str | None:
    """Why the writer could not open the index, found read-only (nothing made or changed but
    what SQLite itself needs to read a WAL database): unreadable, damaged, or on a full
    filesystem, or written by a newer Edgeflix. None when it opens and passes SQLite's quick
    check, or when there is no index yet (the daemon makes one)."""
    if not index.exists():
        return None
    try:
        conn = _connect_read_only(index)
        try:
            refusal = newer_index(index, _schema_version(conn))
            if refusal is not None:
                return str(refusal)
            problem = str(conn.execute("PRAGMA quick_check(1)").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        damaged = not isinstance(exc, sqlite3.OperationalError)
        why = (None if damaged else full_filesystem(index)) or exc
        return f"cannot open the index {index}: {why}{_DAMAGED_HINT if damaged else ''}"
    if problem != "ok":
        detail = " ".join(problem.split())
        return f"the index {index} is damaged ({detail}){_DAMAGED_HINT}"
    return None


@contextmanager
def _index_errors(conn: sqlite3.Connection) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StorageError(
                f"the index is locked by another process (waited {_BUSY_TIMEOUT_MS // 1000} s "
                "for its write lock); try again once that process is done"
            ) from None
        raise StorageError(f"cannot write the index: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"cannot write the index: {exc}{_DAMAGED_HINT}") from None


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taking the write lock up front so it never fails half-way.
    SQLite's errors (locked past the busy timeout, disk full, damage) become StorageErrors."""
    with _index_errors(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


_TITLE_COLUMNS = "id, digest, state, tier, bytes, loaded_at, COALESCE(folder, id)"


def get_title(conn: sqlite3.Connection, title_id: str) -> TitleRow | None:
    row = conn.execute(f"SELECT {_TITLE_COLUMNS} FROM titles WHERE id = ?", (title_id,)).fetchone()
    return TitleRow(*row) if row else None


def all_titles(conn: sqlite3.Connection) -> list[TitleRow]:
    rows = conn.execute(f"SELECT {_TITLE_COLUMNS} FROM titles ORDER BY id").fetchall()
    return [TitleRow(*row) for row in rows]


def title_files(conn: sqlite3.Connection, title_id: str) -> list[FileRow]:
    rows = conn.execute(
        "SELECT f.title, f.path, f.disk, f.size, f.sha256, f.mtime_ns, f.state, "
        "COALESCE(t.folder, t.id) FROM files f JOIN titles t ON t.id = f.title "
        "WHERE f.title = ? ORDER BY f.path",
        (title_id,),
    ).fetchall()
    return [FileRow(*row) for row in rows]


def bytes_by_disk(conn: sqlite3.Connection) -> dict[str, int]:
    """Bytes the index places on each disk (all files, whatever their state, and the files
    of replaced versions still kept)."""
    rows = conn.execute(
        "SELECT disk, SUM(size) FROM (SELECT disk, size FROM files UNION ALL "
        "SELECT disk, size FROM superseded) GROUP BY disk"
    ).fetchall()
    return {disk: int(total or 0) for disk, total in rows}


def room_taken(conn: sqlite3.Connection) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """bytes_by_disk(), and the room loads and tier moves in progress reserved (title → disk
    → bytes), read in one statement: one snapshot, so a load that ends meanwhile (its files'
    rows in, its reservation gone, in one transaction) is counted once, never not at all."""
    taken: dict[str, int] = {}
    reserved: dict[str, dict[str, int]] = {}
    for disk, title, size in conn.execute(
        "SELECT disk, NULL, SUM(size) FROM (SELECT disk, size FROM files UNION ALL "
        "SELECT disk, size FROM superseded) GROUP BY disk "
        "UNION ALL SELECT disk, title, size FROM reserved"
    ):
        if title is None:
            taken[disk] = int(size or 0)
        else:
            reserved.setdefault(title, {})[disk] = int(size)
    return taken, reserved


def _connect_read_only(index: Path, **options: Any) -> sqlite3.Connection:
    """A connection that can neither make nor change the index (SQLite itself may still
    make the -shm it needs to read a WAL database)."""
    return sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro", uri=True, **options)


def refuse_newer(index: Path) -> None:
    """NewerIndexError when the index was written by a newer Edgeflix, found read-only (for a
    command to refuse before it probes or touches anything). Nothing when there is no index
    or it cannot be read: opening the store says why."""
    if not index.exists():
        return
    try:
        conn = _connect_read_only(index)
        try:
            version = _schema_version(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return
    refusal = newer_index(index, version)
    if refusal is not None:
        raise refusal


def read_only(index: Path, read: Callable[[sqlite3.Connection], T], missing: T, failed: T) -> T:
    """`read` on the index, opened without the store (no writer, no schema made): `missing`
    when there is no index yet, `failed` when it cannot be read, or was written by a newer
    Edgeflix that this code may misread (opening the store says why)."""
    if not index.exists():
        return missing
    try:
        conn = _connect_read_only(index)
        try:
            if newer_index(index, _schema_version(conn)) is not None:
                return failed
            return read(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return failed


def query_read_only(index: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one query on the index (read_only); none when there is none or it cannot be
    read."""
    return read_only(index, lambda conn: conn.execute(sql).fetchall(), [], [])


# Each disk found by one seek in the files(disk) index, not a DISTINCT that reads all of it
# (a row per file: ~60 ms at 200k files, and every store a background round opens asks).
_DISKS_OF_FILES = (
    "WITH RECURSIVE d(disk) AS (SELECT MIN(disk) FROM files UNION ALL "
    "SELECT (SELECT MIN(disk) FROM files WHERE disk > d.disk) FROM d WHERE d.disk IS NOT NULL) "
    "SELECT disk FROM d WHERE disk IS NOT NULL"
)


def disks_with_files(index: Path) -> set[str]:
    """Disks the index places any file on (for the disk probes that run before the store
    is opened)."""
    found = query_read_only(index, _DISKS_OF_FILES)
    kept = query_read_only(index, "SELECT DISTINCT disk FROM superseded")  # none: older index
    return {row[0] for row in (*found, *kept)}


class IndexReader:
    """The serving side: `locate()` a title's file, cheaply, once per request.

    One per worker process (or thread), on its own read-only connection. Answers are cached;
    `PRAGMA data_version` changes whenever another connection commits, and then the cache is
    dropped, so a load, rm or tier move is seen by the next request. A serving worker passes
    `refresh_per_call=False` and calls `refresh()` itself, at most once per loop-clock tick
    (about a millisecond): one check (3 syscalls) then serves every request of that tick.
    """

    def __init__(self, index: Path, *, refresh_per_call: bool = True) -> None:
        if not index.exists():
            raise StorageError(f"no index at {index}: `appliance run` or `load` makes it")
        try:
            self._conn = _connect_read_only(index, isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            refusal = newer_index(index, _schema_version(self._conn))
            self._version = self._data_version()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the index {index}: {exc}") from None
        if refusal is not None:
            self._conn.close()
            raise refusal
        self._cache: dict[tuple[str, str], LocatedFile] = {}
        self._misses: set[tuple[str, str]] = set()
        self._known: dict[str, bool] = {}  # title id → in the index (bounded like misses)
        self._auto = refresh_per_call

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def refresh(self) -> int:
        """Forget cached answers if another connection committed since the last check; returns
        the index's data version, which moves exactly when the answers were dropped for a
        change (callers caching routes on top of locate() drop theirs when it moves)."""
        version = self._data_version()
        if version != self._version or len(self._cache) > _CACHE_MAX:
            self._cache.clear()
            self._misses.clear()
            self._known.clear()
            self._version = version
        return version

    def locate(self, title_id: str, rel_path: str) -> LocatedFile | None:
        """The servable file, or None (unknown title or path, title loading or being removed,
        file missing)."""
        if self._auto:
            self.refresh()
        key = (title_id, rel_path)
        try:
            return self._cache[key]
        except KeyError:
            pass
        if key in self._misses:
            return None
        row = self._conn.execute(
            "SELECT f.disk, f.size, f.sha256, f.mtime_ns, t.tier, COALESCE(t.folder, t.id) "
            "FROM files f JOIN titles t ON t.id = f.title "
            "WHERE f.title = ? AND f.path = ? AND f.state = ? AND t.state IN (?, ?)",
            (title_id, rel_path, OK, READY, INCOMPLETE),
        ).fetchone()
        if row is None and is_content_named(rel_path):
            row = self._superseded(title_id, rel_path)
        found = None
        if row:
            disk, size, sha256, mtime_ns, tier, folder = row
            found = LocatedFile(
                title_id=title_id,
                rel_path=rel_path,
                path=file_path(disk, folder, rel_path),
                size=size,
                sha256=sha256,
                mtime_ns=mtime_ns,
                disk=disk,
                tier=tier,
            )
            self._cache[key] = found
        else:
            if len(self._misses) >= _MISSES_MAX:
                self._misses.clear()
            self._misses.add(key)
        return found

    def _superseded(self, title_id: str, rel_path: str) -> tuple[Any, ...] | None:
        """A file of a replaced version kept for sessions that started on it: a name the
        current version lacks, so never an old copy of a current file."""
        try:
            row: tuple[Any, ...] | None = self._conn.execute(
                "SELECT s.disk, s.size, s.sha256, s.mtime_ns, t.tier, s.folder "
                "FROM superseded s JOIN titles t ON t.id = s.title "
                "WHERE s.title = ? AND s.path = ? AND t.state IN (?, ?)",
                (title_id, rel_path, READY, INCOMPLETE),
            ).fetchone()
        except sqlite3.OperationalError:
            return None  # an index made before the table: nothing kept
        return row

    def knows(self, title_id: str) -> bool:
        """The index has this title (in any state): a miss for one of its files is counted
        under its id, where a junk id from a client is not (one label per index title)."""
        if self._auto:
            self.refresh()
        known = self._known.get(title_id)
        if known is None:
            row = self._conn.execute("SELECT 1 FROM titles WHERE id = ?", (title_id,)).fetchone()
            known = row is not None
            if len(self._known) >= _MISSES_MAX:
                self._known.clear()
            self._known[title_id] = known
        return known

    def titles(self) -> list[TitleRow]:
        return all_titles(self._conn)

    def bytes_by_disk(self) -> dict[str, int]:
        return bytes_by_disk(self._conn)

    def close(self) -> None:
        self._conn.close()

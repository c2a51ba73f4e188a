"""The fleet manager's SQLite state (I/O shell): enrolled appliances, join tokens, URL-token
keys, the current plan, and when each title was first seen (and withdrawn). WAL mode; every
write is one `BEGIN IMMEDIATE` transaction, so a crash leaves no half-made enrolment or plan.
The database holds every URL-signing secret: its files are the owner's alone (0600), like
the admin token beside it. The schema's number is SQLite's user_version: a database a newer
Edgeflix wrote is refused, and a plan it stored is read without what this one does not know.

Heartbeats are not stored: they are rebuilt within seconds after a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zstandard

from edgeflix.log import event
from fleet.errors import FleetError, UnknownNameError
from fleet.keys import KeyRecord, KeySet
from fleet.plans import ApplianceFillPlan, FillPlan, PlanDiff, PlannedTitle
from fleet.registry import ApplianceRecord, token_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS appliances (
    name TEXT PRIMARY KEY, site TEXT NOT NULL, url TEXT NOT NULL,
    public_key BLOB NOT NULL, enrolled_at REAL NOT NULL, drained INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS join_tokens (
    hash TEXT PRIMARY KEY, site TEXT NOT NULL, created_at REAL NOT NULL,
    expires_at REAL NOT NULL, used_at REAL, used_by TEXT);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, secret BLOB NOT NULL, activates REAL NOT NULL, retires REAL,
    since INTEGER NOT NULL DEFAULT 0, token_ttl_s REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plan (
    id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS catalog (
    title TEXT PRIMARY KEY, first_seen REAL NOT NULL, withdrawn_at REAL);
"""
# The schema's number, in SQLite's `user_version` (0: made before it was kept). Raised with
# each migration: an Edgeflix refuses a database of a higher number than its own.
SCHEMA_VERSION = 1
log = logging.getLogger("fleet")
# The database and what SQLite keeps beside it (the -wal holds recent writes, keys too).
DB_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _set_up(conn: sqlite3.Connection, path: Path, deadline: float) -> None:
    """WAL, the schema and its migrations, then the schema's number; idempotent. Two
    processes opening one database at once (the manager and a CLI command, after an
    upgrade) can get "database is locked" at once from the journal-mode switch or a lock
    upgrade, where SQLite skips its busy wait to avoid a deadlock: those are retried until
    `deadline`."""
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(SCHEMA)
            _add_key_since(conn)
            _add_column(conn, "keys", "token_ttl_s", "REAL NOT NULL DEFAULT 0")
            # NULL: listed by the origin's last listing (or never read since it was added).
            _add_column(conn, "catalog", "withdrawn_at", "REAL")
            _stamp(conn, path)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _refuse_newer(conn: sqlite3.Connection, path: Path) -> int:
    """The database's schema number; one above SCHEMA_VERSION is refused: a newer Edgeflix
    wrote it, and its rows may mean what this one does not know."""
    (number,) = conn.execute("PRAGMA user_version").fetchone()
    if number > SCHEMA_VERSION:
        raise StoreError(
            f"fleet database {path} was written by a newer Edgeflix (schema {number}, this"
            f" one knows {SCHEMA_VERSION}): run that version, or restore a backup taken"
            " before the upgrade"
        )
    return int(number)


def _stamp(conn: sqlite3.Connection, path: Path) -> None:
    """SCHEMA_VERSION on a database migrated to it. Checked again under the write lock: a
    newer Edgeflix may have stamped it since it was opened, and a number never goes down."""
    if _refuse_newer(conn, path) == SCHEMA_VERSION:
        return
    with _migration(conn):
        if _refuse_newer(conn, path) < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def _migration(conn: sqlite3.Connection) -> Iterator[None]:
    """One change of the schema, whole or not at all. SQLite ends the transaction itself on
    some failures (a full disk at COMMIT): a ROLLBACK then fails, and must not hide why."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the first failure is the one to say
                conn.execute("ROLLBACK")
        raise


def _add_key_since(conn: sqlite3.Connection) -> None:
    """Databases from before `keys.since`: their keys were named `k<version of the set that
    added them>`, which is what the column records."""
    if "since" in _columns(conn, "keys"):
        return
    with _migration(conn):
        if "since" in _columns(conn, "keys"):  # another process migrated it meanwhile
            return
        conn.execute("ALTER TABLE keys ADD COLUMN since INTEGER NOT NULL DEFAULT 0")
        conn.execute(
            "UPDATE keys SET since = CAST(substr(id, 2) AS INTEGER) WHERE id GLOB 'k[0-9]*'"
        )


def _add_column(conn: sqlite3.Connection, table: str, name: str, decl: str) -> None:
    """A column added to `table` since the database was made (its default for old rows)."""
    if name in _columns(conn, table):
        return
    with _migration(conn):
        if name not in _columns(conn, table):  # another process may have added it meanwhile
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def private_folder(path: Path) -> Path:
    """The database's folder, made 0700 if it is missing (a folder that exists is left as
    it is). `fleet serve` makes it before the lock file it puts there."""
    folder = path.parent
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made meanwhile by another: as it is
            folder.mkdir(mode=0o700)
    return folder


def check_db_path(path: Path) -> None:
    """Refuse a `db` that names something other than a file (a folder, a device) before
    anything is made or changed for it: a typo (`db = "/home/alice"`) must get neither a
    lock file beside it nor a chmod. Whether a file is a database is SQLite's to say."""
    try:
        kind = path.stat().st_mode  # followed, as SQLite follows it
    except OSError:  # missing (made later), or unreachable: the open says why
        return
    if stat.S_ISDIR(kind):
        raise StoreError(
            f"cannot open the fleet database {path}: it is a folder, not a file"
            " ([server] db names the database file)"
        )
    if not stat.S_ISREG(kind):
        raise StoreError(f"cannot open the fleet database {path}: it is not a regular file")


def _create(path: Path) -> None:
    """The database file, 0600, if it is missing; its folder (0700) too. SQLite gives the
    -wal and -shm it makes the database file's mode, whatever the umask. O_EXCL: never an
    open and close of a database in use, which would drop the POSIX locks this process's
    SQLite holds on it."""
    private_folder(path)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def make_private(path: Path) -> None:
    """Tighten to 0600 the database files an older version left readable to others (logged,
    so once per install). Only once SQLite has read the file as a database (a path naming
    something else is refused, unchanged), and only regular files: a symlink's target is
    not ours to change. The folder is left as it is: it may be shared (`/var/lib`)."""
    tightened = [t for t in (_tighten(Path(f"{path}{s}")) for s in DB_SUFFIXES) if t]
    if tightened:
        event(log, "fleet.db_made_private", logging.WARNING, folder=str(path.parent),
              files=", ".join(tightened), mode="0600")  # fmt: skip


def _tighten(file: Path) -> str:
    """chmod 0600 a regular file others may read or write; what it was ("" if nothing
    changed). Through an O_PATH fd: it names the very file lstat-ed (never a symlink's
    target, nor a file swapped in since), and closing it drops none of SQLite's locks."""
    try:
        fd = os.open(file, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    try:
        kind = os.fstat(fd).st_mode
        if stat.S_ISLNK(kind):
            _say_symlink(file)
            return ""
        mode = stat.S_IMODE(kind)
        if not stat.S_ISREG(kind) or not mode & 0o077:
            return ""
        try:
            os.chmod(f"/proc/self/fd/{fd}", 0o600)  # chmod follows this link to the fd's file
        except OSError as exc:  # not its owner: said, not fatal (the operator's to fix)
            event(log, "fleet.db_not_private", logging.ERROR, file=str(file), mode=f"{mode:04o}",
                  error=exc.strerror or str(exc))  # fmt: skip
            return ""
    finally:
        os.close(fd)
    return f"{file.name} was {mode:04o}"


def _say_symlink(link: Path) -> None:
    """A database reached through a symlink stays as the operator made it: said when others
    may read what it leads to."""
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(link.stat().st_mode)
        if mode & 0o077:
            event(log, "fleet.db_not_private", logging.ERROR, file=str(link), mode=f"{mode:04o}",
                  error="a symbolic link: its target is left as it is")  # fmt: skip


class StoreError(FleetError):
    """The fleet database cannot be opened or written (locked by another process, disk
    full): the request may be retried, nothing of it was kept."""

    http_status = 503


# Less free space than this where a write failed: the filesystem is full (as appliance/index.py
# says of its index; a helper in edgeflix/ could serve both).
DB_ROOM_BYTES = 1 << 20
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_SQLITE = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


def _reason(exc: OSError | sqlite3.Error, path: Path) -> str:
    """SQLite's (or the system's) reason, with the filesystem's free space when that is the
    cause: SQLite says "database or disk is full", or only "disk I/O error" when its -wal
    or -shm could not grow, and neither says where."""
    if isinstance(exc, OSError):
        suspect = exc.errno in _FULL_ERRNOS
    else:
        suspect = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _FULL_SQLITE
    free = _free_bytes(path) if suspect else None
    if free is None or free >= DB_ROOM_BYTES:
        return str(exc)
    return f"{exc} ({free} bytes free on the filesystem holding it)"


def _free_bytes(path: Path) -> int | None:
    """The free space beside `path` as `df` shows it: f_bavail, without the blocks reserved
    for root. Not f_bfree for root: whether this process may use those is the filesystem's
    to say (a root in a user namespace may not), and f_bfree then showed the reserve (5% of
    an ext4 disk: gigabytes) beside a write refused for room, hiding the "full" hint."""
    try:
        st = os.statvfs(path if path.exists() else path.parent)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _not_writable(exc: OSError | sqlite3.Error, path: Path) -> str:
    """Which database a refused write was for: a host may run more than one manager, and
    the CLI shows this line far from the manager's config."""
    return f"the fleet database is not writable now: {path}: {_reason(exc, path)}"


# Every write runs on the event loop that also answers heartbeats and /steer: waiting on a
# lock another process holds (a backup, an operator's sqlite3 shell) stalls all of them,
# so a write gives up after this long and the caller gets a retryable error instead.
BUSY_TIMEOUT_S = 2.0
EXPIRED_TOKENS_KEPT_S = 30 * 86_400.0
# Unused, unexpired join tokens a site may have at once: more than any install day needs,
# and few enough that a script minting them in a loop cannot grow the database for ever.
MAX_OPEN_JOIN_TOKENS = 1000


class EnrolmentRefused(FleetError):
    """A join token that is unknown, used or expired, or a name taken by another key."""

    http_status = 403


class JoinTokenLimit(FleetError):
    """The site has MAX_OPEN_JOIN_TOKENS tokens nobody has used yet."""

    http_status = 429


class Store:
    def __init__(self, path: Path) -> None:
        check_db_path(path)
        try:
            _create(path)
            self.conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the fleet database {path}: {_reason(exc, path)}"
            ) from None
        self.path = path
        try:
            # Reads first: a file that is no database ("file is not a database"), or one a
            # newer Edgeflix wrote, is refused before anything about it is changed.
            self.conn.execute("PRAGMA schema_version")
            _refuse_newer(self.conn, path)
            make_private(path)
            _set_up(self.conn, path, time.monotonic() + BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            self.conn.close()
            raise StoreError(
                f"cannot open the fleet database {path}: {_reason(exc, path)}"
            ) from None
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write, whole or not at all; SQLite's failures come out as StoreError."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(_not_writable(exc, self.path)) from None
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(_not_writable(exc, self.path)) from None
            raise

    # -- appliances and enrolment ------------------------------------------------------

    def appliances(self) -> dict[str, ApplianceRecord]:
        rows = self.conn.execute(f"SELECT {_RECORD_COLUMNS} FROM appliances").fetchall()
        return {r[0]: _record(r) for r in rows}

    def appliance(self, name: str) -> ApplianceRecord | None:
        """One appliance's record: what a change to it re-reads, not the whole table (which
        made each enrolment cost more than the one before)."""
        return _appliance(self.conn, name)

    def add_join_token(self, token: str, site: str, now: float, ttl_s: float) -> None:
        with self.transaction() as c:
            # Tokens long expired go as new ones come: over the years of a fleet they add up.
            # A month after expiry, so an operator trying an old one still hears "expired";
            # never one an enrolled appliance used (its lost-reply re-enrolment needs it, and
            # it is still "already used" to anyone else): those go when the appliance does.
            c.execute(
                "DELETE FROM join_tokens WHERE expires_at < ? AND (used_by IS NULL"
                " OR used_by NOT IN (SELECT name FROM appliances))",
                (now - EXPIRED_TOKENS_KEPT_S,),
            )
            (open_tokens,) = c.execute(
                "SELECT COUNT(*) FROM join_tokens WHERE site = ? AND used_at IS NULL"
                " AND expires_at >= ?",
                (site, now),
            ).fetchone()
            if open_tokens >= MAX_OPEN_JOIN_TOKENS:
                raise JoinTokenLimit(
                    f"site '{site}' has {open_tokens} unused join tokens: use those, or mint"
                    " more once some are used or have expired"
                )
            c.execute(
                "INSERT INTO join_tokens (hash, site, created_at, expires_at) VALUES (?,?,?,?)",
                (token_hash(token), site, now, now + ttl_s),
            )

    def enrol(
        self, token: str | None, name: str, url: str, public_key: bytes, site: str, now: float
    ) -> ApplianceRecord:
        """Consume `token` (None: open enrolment, `site` given) and record the appliance.

        Enrolling again with the same key is idempotent (a lost reply) and changes nothing
        of the appliance, not its URL either: its signed beats move that (fleet/service.py
        heartbeat). The gRPC shell lets a repeat through only when signed with that key
        (fleet/grpc_api.py). Another key under a taken name is refused until the operator
        removes the old one (`fleet rm`).
        """
        with self.transaction() as c:
            row = c.execute(
                "SELECT public_key, site FROM appliances WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] != public_key:
                raise EnrolmentRefused(
                    f"appliance name '{name}' is enrolled with another key: "
                    f"`edgeflix fleet rm {name}` first if it was reinstalled"
                )
            if token is not None:
                tok = c.execute(
                    "SELECT site, expires_at, used_at, used_by FROM join_tokens WHERE hash = ?",
                    (token_hash(token),),
                ).fetchone()
                if tok is None:
                    raise EnrolmentRefused("unknown join token")
                if tok[2] is not None and not (row is not None and tok[3] == name):
                    raise EnrolmentRefused("join token was already used")
                if tok[2] is None and tok[1] < now:
                    raise EnrolmentRefused("join token has expired")
                if row is not None and row[1] != tok[0]:
                    # The site comes from the token: one for another site would be spent
                    # while the appliance silently stayed where it was.
                    raise EnrolmentRefused(
                        f"appliance '{name}' is enrolled in site {row[1]}, the token is for "
                        f"site {tok[0]}: `edgeflix fleet rm {name}` first to move it"
                    )
                site = tok[0]
                c.execute(
                    "UPDATE join_tokens SET used_at = ?, used_by = ? WHERE hash = ?",
                    (now, name, token_hash(token)),
                )
            if row is None:
                c.execute(
                    "INSERT INTO appliances (name, site, url, public_key, enrolled_at, drained)"
                    " VALUES (?,?,?,?,?,0)",
                    (name, site, url, public_key, now),
                )
            record = _appliance(c, name)  # read in the transaction: what it commits
        assert record is not None
        return record

    def set_drained(self, name: str, drained: bool) -> None:
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE appliances SET drained = ? WHERE name = ?", (int(drained), name)
            )
            if cur.rowcount == 0:
                raise UnknownNameError(f"no appliance named '{name}'")

    def set_url(self, name: str, url: str) -> None:
        with self.transaction() as c:
            cur = c.execute("UPDATE appliances SET url = ? WHERE name = ?", (url, name))
            if cur.rowcount == 0:
                raise UnknownNameError(f"no appliance named '{name}'")

    def remove(self, name: str) -> None:
        with self.transaction() as c:
            if c.execute("DELETE FROM appliances WHERE name = ?", (name,)).rowcount == 0:
                raise UnknownNameError(f"no appliance named '{name}'")

    # -- keys ----------------------------------------------------------------------

    def keyset(self) -> KeySet:
        rows = self.conn.execute(
            "SELECT id, secret, activates, retires, since, token_ttl_s FROM keys ORDER BY activates"
        ).fetchall()
        version = int(self.meta("keys_version") or 0)
        return KeySet(version, tuple(KeyRecord(*r) for r in rows))

    def save_keyset(self, keys: KeySet) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM keys")
            c.executemany(
                "INSERT INTO keys (id, secret, activates, retires, since, token_ttl_s)"
                " VALUES (?,?,?,?,?,?)",
                [
                    (k.id, k.secret, k.activates, k.retires, k.since, k.token_ttl_s)
                    for k in keys.keys
                ],
            )
            self._set_meta(c, "keys_version", str(keys.version))

    # -- plan, catalog, meta -------------------------------------------------------

    def plan(self) -> FillPlan | None:
        """The stored plan. One this code cannot read (damaged, or in a form of another
        Edgeflix it cannot take) is dropped, said, for an empty plan under its version (kept
        in its own column): the next round plans anew above it, as appliances fetch only a
        version above the one they run."""
        row = self.conn.execute("SELECT version, body FROM plan WHERE id = 1").fetchone()
        if row is None:
            return None
        try:
            return plan_from_json(zstandard.decompress(row[1]))
        except (ValueError, zstandard.ZstdError) as exc:
            event(log, "fleet.plan_unreadable", logging.WARNING, version=row[0],
                  error=f"{type(exc).__name__}: {exc}", action="dropped, planned anew")  # fmt: skip
            return FillPlan(row[0], {})

    def save_plan(self, plan: FillPlan) -> None:
        body = zstandard.compress(plan_to_json(plan))
        with self.transaction() as c:
            c.execute(
                "INSERT INTO plan (id, version, body) VALUES (1, ?, ?) ON CONFLICT(id) DO "
                "UPDATE SET version = excluded.version, body = excluded.body",
                (plan.version, body),
            )

    def first_seen(self, titles: list[str], now: float) -> dict[str, float]:
        """When each title was first seen (recorded now if new): the release-boost date. A
        date after `now` was recorded while the clock was ahead (and set right since): it
        becomes `now`, or the title would wait for a boost until the clock reached it, and
        be boosted weeks after its release."""
        with self.transaction() as c:
            self._first_seen(c, titles, now)
        return self._releases()

    def record_listing(
        self, titles: list[str], now: float
    ) -> tuple[dict[str, float], frozenset[str]]:
        """The origin's whole listing, answered now: `first_seen` of its titles, and every
        title listed before that it does not list marked withdrawn, one listed again
        unmarked. Returns the release dates and the withdrawn titles. Kept here so that
        neither a restart nor an origin unreachable since (no listing, nothing recorded)
        steers a withdrawn title again. An empty listing changes no mark: an origin started
        on a mistyped or fresh store would otherwise make every title unplayable, fleet-wide
        (what it withdrew before stays withdrawn)."""
        listed = set(titles)
        if not listed:
            return self._releases(), self.withdrawn_titles()
        with self.transaction() as c:
            self._first_seen(c, titles, now)
            rows = c.execute("SELECT title, withdrawn_at FROM catalog").fetchall()
            back = [(t,) for t, w in rows if w is not None and t in listed]
            gone = [(now, t) for t, w in rows if w is None and t not in listed]
            c.executemany("UPDATE catalog SET withdrawn_at = NULL WHERE title = ?", back)
            c.executemany("UPDATE catalog SET withdrawn_at = ? WHERE title = ?", gone)
        return self._releases(), self.withdrawn_titles()

    def withdrawn_titles(self) -> frozenset[str]:
        """Titles the origin listed once and did not list in its last listing."""
        rows = self.conn.execute("SELECT title FROM catalog WHERE withdrawn_at IS NOT NULL")
        return frozenset(r[0] for r in rows)

    @staticmethod
    def _first_seen(c: sqlite3.Connection, titles: list[str], now: float) -> None:
        c.execute("UPDATE catalog SET first_seen = ? WHERE first_seen > ?", (now, now))
        c.executemany(
            "INSERT OR IGNORE INTO catalog (title, first_seen) VALUES (?, ?)",
            [(t, now) for t in titles],
        )

    def _releases(self) -> dict[str, float]:
        return dict(self.conn.execute("SELECT title, first_seen FROM catalog").fetchall())

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            self._set_meta(c, key, value)

    @staticmethod
    def _set_meta(c: sqlite3.Connection, key: str, value: str) -> None:
        c.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


_RECORD_COLUMNS = "name, site, url, public_key, enrolled_at, drained"


def _record(row: tuple[Any, ...]) -> ApplianceRecord:
    return ApplianceRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]))


def _appliance(conn: sqlite3.Connection, name: str) -> ApplianceRecord | None:
    row = conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM appliances WHERE name = ?", (name,)
    ).fetchone()
    return _record(row) if row is not None else None


def plan_to_json(plan: FillPlan) -> bytes:
    doc = {
        "version": plan.version,
        "appliances": [dataclasses.asdict(p) for p in plan.appliances.values()],
    }
    return json.dumps(doc, sort_keys=True).encode()


def plan_from_json(raw: bytes) -> FillPlan:
    """The plan plan_to_json wrote. Keys this code does not know (a newer Edgeflix's) are
    left out; a value of the wrong type, or a missing one with no default, is ValueError."""
    doc = json.loads(raw)
    plans = {}
    for p in _list(doc, "appliances"):
        part = _fields(ApplianceFillPlan, p, skip=("titles", "diff"))
        titles = tuple(PlannedTitle(**_fields(PlannedTitle, t)) for t in _list(p, "titles"))
        diff = PlanDiff(**_fields(PlanDiff, p.get("diff", {})))
        plans[part["appliance"]] = ApplianceFillPlan(**part, titles=titles, diff=diff)
    return FillPlan(**_fields(FillPlan, doc, skip=("appliances",)), appliances=plans)


# What each field type of the plan's dataclasses is in JSON (a bool is no int here).
_JSON_TYPES: dict[str, type] = {"str": str, "int": int, "tuple[str, ...]": list}


def _fields(cls: Any, doc: object, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """`doc`'s values for the fields of dataclass `cls` but `skip`, checked for type."""
    if not isinstance(doc, dict):
        raise ValueError(f"{cls.__name__}: {type(doc).__name__}, not an object")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.name not in doc:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{cls.__name__}: no {f.name!r}")
            continue
        value, kind = doc[f.name], _JSON_TYPES[str(f.type)]
        if kind is list and isinstance(value, list) and all(type(v) is str for v in value):
            value = tuple(value)
        elif type(value) is not kind or kind is list:
            raise ValueError(f"{cls.__name__}.{f.name}: {value!r:.60} is not {f.type}")
        out[f.name] = value
    return out


def _list(doc: object, key: str) -> list[Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, list):
        raise ValueError(f"{key!r}: {value!r:.60}, not a list")
    return value

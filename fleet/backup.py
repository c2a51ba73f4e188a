"""`edgeflix fleet backup` and `restore` (I/O shell): the manager's database copied with
SQLite's online backup, a consistent snapshot while the manager writes (a plain copy of a WAL
database is not one: its recent writes sit in the -wal), with the files the manager keeps
beside it (the CA, the admin token) and a manifest of their SHA-256. A restore holds the
manager's own lock (fleet/server.py `sole_manager`), checks everything before it changes
anything, moves what it replaces aside (never deleting it) and installs each file whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, BinaryIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeflix import __version__
from edgeflix.atomicfile import fsync_dir, write_all
from fleet.admin import TOKEN_FILE
from fleet.errors import FleetError
from fleet.server import sole_manager
from fleet.store import DB_SUFFIXES, SCHEMA_VERSION, check_db_path, private_folder
from fleet.tls import CA_CERT, CA_CERT_MODE, CA_KEY, HTTP_CERT, HTTP_KEY

MANIFEST = "manifest.json"
KIND = "edgeflix-fleet-backup"
FORMAT = 1
# What the manager keeps beside its database (fleet/admin.py, fleet/tls.py), each backed up
# when it exists: without the CA a restored manager makes a new one and no TLS appliance
# trusts it; the HTTPS pair is made anew at each start, kept only so nothing is missing.
BESIDE = (CA_CERT, CA_KEY, TOKEN_FILE, HTTP_CERT, HTTP_KEY)
# How long the backup waits on a database another connection keeps it from reading (WAL
# readers wait only on rare moments: a recovery, a connection in exclusive locking mode).
BUSY_S = 5.0
CHUNK = 1 << 20
ASIDE_PREFIX = "before-restore-"
NEXT_STEPS = (
    "start the manager (`edgeflix fleet serve`): it catches its plan and key-set versions up "
    "above what the appliances report, and rotates the signing key. Revocations made after "
    "the backup are lost: revoke those keys again (`edgeflix fleet keys revoke KEY_ID`; "
    "appliances keep refusing them). Appliances enrolled after the backup need new join "
    "tokens (`edgeflix fleet join-token --site SITE`); those removed since are back "
    "(`edgeflix fleet rm` them again)."
)
# Patterns of pydantic's (Rust) regex engine, where `$` is the very end.
_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$"


class BackupError(FleetError):
    """A backup that cannot be written, or a backup or restore target that is refused."""


class BackedUpFile(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)
    name: Annotated[str, Field(pattern=_NAME)]
    size_bytes: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Manifest(BaseModel):
    """What a backup holds; `manifest.json` in its folder. Fields a later format adds are
    ignored by this one (`format` says when they must not be)."""

    model_config = ConfigDict(frozen=True, strict=True)
    kind: str = KIND
    format: int = FORMAT
    edgeflix_version: str
    schema_version: int  # the database's (SQLite user_version, fleet/store.py)
    created: str  # UTC, ISO 8601
    source: str  # the database backed up
    database: Annotated[str, Field(pattern=_NAME)]
    plan_version: int | None
    keys_version: int
    appliances: int
    files: tuple[BackedUpFile, ...]


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    installed: tuple[Path, ...]
    aside: Path | None  # where the files it replaced went (None: there were none)
    moved: tuple[str, ...]
    kept: tuple[str, ...]  # files beside the database the backup has none of: left in place


def file_mode(name: str) -> int:
    """The CA certificate is public (fleet/tls.py); everything else is a secret."""
    return CA_CERT_MODE if name == CA_CERT else 0o600


def aside_name(now: datetime) -> str:
    return ASIDE_PREFIX + now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def read_manifest(src: Path) -> Manifest:
    """The manifest of the backup in `src`, checked for what this Edgeflix can restore."""
    if not src.is_dir():
        why = "not a folder" if src.exists() else "no such folder"
        raise BackupError(f"no backup at {src}: {why}")
    try:
        raw = (src / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BackupError(f"{src} is not a fleet backup: it has no {MANIFEST}") from None
    except OSError as exc:
        raise BackupError(f"cannot read {src / MANIFEST}: {exc.strerror or exc}") from None
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise BackupError(
            f"the manifest of backup {src} is damaged: {where}: {first['msg']}"
        ) from None
    check_manifest(manifest, src)
    return manifest


def check_manifest(m: Manifest, src: Path) -> None:
    if m.kind != KIND:
        raise BackupError(f"{src} is not a fleet backup ({MANIFEST} is of kind {m.kind!r})")
    if m.format > FORMAT:
        raise BackupError(f"backup {src} was made by a newer Edgeflix (format {m.format})")
    if m.schema_version > SCHEMA_VERSION:
        raise BackupError(
            f"backup {src} holds a database of a newer Edgeflix (schema {m.schema_version},"
            f" this one knows {SCHEMA_VERSION}): restore it with that version"
        )
    names = [f.name for f in m.files]
    allowed = {m.database, *BESIDE}
    if len(set(names)) != len(names) or not set(names) <= allowed or m.database not in names:
        raise BackupError(
            f"the manifest of backup {src} is damaged: its files are {', '.join(names)}"
        )


# -- backup ------------------------------------------------------------------------------


def take_backup(db: Path, dest: Path, now: datetime, busy_s: float = BUSY_S) -> Manifest:
    """Write a backup of the database `db` and the files beside it into the new folder
    `dest`: built in a temporary folder beside it and renamed, so a failure leaves nothing."""
    dest = Path(os.path.abspath(dest))
    _check_source(db)
    try:
        _check_dest(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-", dir=dest.parent))  # 0700
    except OSError as exc:
        raise BackupError(f"cannot make {dest}: {exc.strerror or exc}") from None
    try:
        manifest = _fill(db, tmp, now, busy_s)
        fsync_dir(tmp)
        try:
            os.rename(tmp, dest)  # onto an empty folder, or none
        except OSError as exc:
            why = exc.strerror or exc
            raise BackupError(f"cannot make {dest}: {why} (made meanwhile?)") from None
        fsync_dir(dest.parent)
        return manifest
    except OSError as exc:
        raise BackupError(f"backup not written: {_os_reason(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed


def _check_source(db: Path) -> None:
    check_db_path(db)  # a folder, a device: StoreError
    if not db.exists():
        raise BackupError(f"no fleet database at {db} (the config's [server] db)")
    if db.name in (*BESIDE, MANIFEST):
        raise BackupError(f"the fleet database {db} is named like a file kept beside it")


def _check_dest(dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise BackupError(f"{dest} exists and is not a folder: back up into a new folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: back up into a new folder")
    if not dest.parent.is_dir():
        raise BackupError(f"no folder {dest.parent} to make the backup {dest.name} in")


def _fill(db: Path, tmp: Path, now: datetime, busy_s: float) -> Manifest:
    copy = tmp / db.name
    _online_copy(db, copy, busy_s)
    schema, plan_version, keys_version, appliances = _facts(copy, f"the copy of {db}")
    if schema > SCHEMA_VERSION:
        raise BackupError(
            f"fleet database {db} was written by a newer Edgeflix (schema {schema}, this one"
            f" knows {SCHEMA_VERSION}): back it up with that version"
        )
    os.chmod(copy, 0o600)
    files = [_summary(copy)]
    for name in BESIDE:
        if (db.parent / name).is_file():
            files.append(_copy(db.parent / name, tmp / name))
    manifest = Manifest(
        edgeflix_version=__version__,
        schema_version=schema,
        created=now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        source=os.path.abspath(db),
        database=db.name,
        plan_version=plan_version,
        keys_version=keys_version,
        appliances=appliances,
        files=tuple(files),
    )
    _write_new(tmp / MANIFEST, manifest.model_dump_json(indent=2).encode() + b"\n", 0o600)
    return manifest


def _online_copy(db: Path, copy: Path, busy_s: float) -> None:
    """SQLite's backup API, all pages in one step: one read transaction, so one snapshot
    of the database and its -wal, taken beside a writer (WAL readers do not block it)."""
    deadline = time.monotonic() + busy_s

    def bounded(status: int, _remaining: int, _total: int) -> None:
        # Python's backup loop retries a busy step for ever: this ends it.
        busy = status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        if busy and time.monotonic() >= deadline:
            raise BackupError(f"the fleet database {db} stayed locked for {busy_s:g} s")

    try:
        # mode=rw: never makes a missing database (read-only when the file is).
        source = sqlite3.connect(f"{db.absolute().as_uri()}?mode=rw", uri=True, timeout=busy_s)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open the fleet database {db}: {exc}") from None
    try:
        with contextlib.closing(sqlite3.connect(copy)) as target:
            source.backup(target, pages=-1, progress=bounded, sleep=0.05)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read the fleet database {db}: {exc}") from None
    finally:
        source.close()


@contextlib.contextmanager
def _immutable(path: Path, what: str) -> Iterator[sqlite3.Connection]:
    """A database file read as it is: no -wal or -shm made beside it, nothing changed."""
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read {what}: {exc}") from None
    try:
        yield conn
    except (sqlite3.Error, ValueError, TypeError) as exc:  # ValueError: a version not a number
        raise BackupError(f"{what} is not a readable fleet database: {exc}") from None
    finally:
        conn.close()


def _facts(copy: Path, what: str) -> tuple[int, int | None, int, int]:
    """The copy's schema number, plan and key-set versions and enrolled appliances, after
    SQLite's own check of every page and index."""
    with _immutable(copy, what) as conn:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check(5)")]
        if problems != ["ok"]:
            raise BackupError(f"{what} is damaged (integrity_check: {'; '.join(problems)})")
        (schema,) = conn.execute("PRAGMA user_version").fetchone()
        plan = conn.execute("SELECT version FROM plan WHERE id = 1").fetchone()
        keys = conn.execute("SELECT value FROM meta WHERE key = 'keys_version'").fetchone()
        (appliances,) = conn.execute("SELECT COUNT(*) FROM appliances").fetchone()
        plan_version = int(plan[0]) if plan is not None else None
        return int(schema), plan_version, int(keys[0]) if keys else 0, int(appliances)


def _summary(path: Path) -> BackedUpFile:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return BackedUpFile(name=path.name, size_bytes=size, sha256=digest.hexdigest())


def _copy(src: Path, dst: Path) -> BackedUpFile:
    _write_new(dst, src.read_bytes(), file_mode(dst.name))  # small files: a key, a token
    return _summary(dst)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask's cut undone (0644 for the CA certificate)
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_reason(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


# -- restore -----------------------------------------------------------------------------


def restore_backup(db: Path, src: Path, now: datetime) -> Restored:
    """Put the backup in `src` in place of the database `db` and the files beside it, the
    manager stopped (its lock is held throughout, so none starts meanwhile)."""
    manifest = read_manifest(src)
    check_db_path(db)
    new_host = not db.parent.exists()
    try:
        private_folder(db)  # 0700, as `fleet serve` makes it
        lock = sole_manager(db)
    except OSError as exc:
        raise BackupError(f"cannot prepare {db.parent}: {_os_reason(exc)}") from None
    except FleetError as exc:
        raise BackupError(f"not restored: {exc}") from None
    done = False
    try:
        restored = _restore_locked(db, src, manifest, now)
        done = True
        return restored
    except OSError as exc:
        raise BackupError(f"not restored: {_os_reason(exc)}") from None
    finally:
        lock.discard()  # the lock file, if this restore made it
        if new_host and not done:
            with contextlib.suppress(OSError):
                db.parent.rmdir()  # a refused restore leaves nothing, not even the folder


def _restore_locked(db: Path, src: Path, manifest: Manifest, now: datetime) -> Restored:
    real = db.resolve()  # where SQLite opens it, and sole_manager locks it
    folder = real.parent
    if db.parent.resolve() != folder:
        raise BackupError(
            f"the fleet database {db} is a symbolic link into another folder ({folder}):"
            " name the real file in [server] db to restore it"
        )
    targets = {f.name: real if f.name == manifest.database else folder / f.name
               for f in manifest.files}  # fmt: skip
    owner = (real if real.exists() else folder).stat()
    staged: dict[Path, Path] = {}
    try:
        for f in manifest.files:
            staged[targets[f.name]] = _stage(src, f, targets[f.name], owner)
        schema, *_ = _facts(staged[real], f"the database of backup {src}")
        if schema > SCHEMA_VERSION:
            raise BackupError(
                f"backup {src} holds a database of a newer Edgeflix (schema {schema}, this one"
                f" knows {SCHEMA_VERSION}): restore it with that version"
            )
        replaced = [Path(f"{real}{s}") for s in DB_SUFFIXES]
        replaced += [t for t in targets.values() if t != real]
        aside, moved = _move_aside(folder, [p for p in replaced if os.path.lexists(p)], now, owner)
        try:
            for target in sorted(staged, key=lambda t: t == real):  # the database last
                os.replace(staged[target], target)
            fsync_dir(folder)
        except OSError as exc:
            raise BackupError(
                f"restore stopped halfway ({_os_reason(exc)}): what it replaced is in {aside}"
            ) from None
    finally:
        for tmp in staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    kept = tuple(n for n in BESIDE if n not in targets and (db.parent / n).exists())
    return Restored(manifest, tuple(staged), aside, moved, kept)


def _stage(src: Path, entry: BackedUpFile, target: Path, owner: os.stat_result) -> Path:
    """A copy of the backup's `entry` in a temporary file beside `target`, checked against
    the manifest as it is copied: what is installed is what was checked."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.restore-", suffix=".tmp", dir=target.parent)
    try:
        digest, size = hashlib.sha256(), 0
        with open(fd, "wb", closefd=False) as out, _open_backup(src, entry.name) as data:
            while chunk := data.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if size != entry.size_bytes or digest.hexdigest() != entry.sha256:
            raise BackupError(
                f"backup {src} is damaged: {entry.name} does not match its sha256 in {MANIFEST}"
            )
        os.fchmod(fd, file_mode(entry.name))
        if os.geteuid() == 0 and owner.st_uid != 0:  # `sudo … restore` for a manager's user
            os.fchown(fd, owner.st_uid, owner.st_gid)
        os.fsync(fd)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return Path(tmp)


def _open_backup(src: Path, name: str) -> BinaryIO:
    try:
        return (src / name).open("rb")
    except FileNotFoundError:
        raise BackupError(f"backup {src} is incomplete: {name} is missing") from None


def _move_aside(
    folder: Path, files: list[Path], now: datetime, owner: os.stat_result
) -> tuple[Path | None, tuple[str, ...]]:
    """`files` moved into a new before-restore-<UTC time> folder in `folder` (same
    filesystem: renames, nothing copied or deleted)."""
    if not files:
        return None, ()
    base = folder / aside_name(now)
    for n in range(1, 100):
        aside = base if n == 1 else Path(f"{base}-{n}")
        try:
            aside.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
    else:
        raise BackupError(f"cannot make a folder {base}-N to move the current files into")
    if os.geteuid() == 0 and owner.st_uid != 0:
        os.chown(aside, owner.st_uid, owner.st_gid)
    for path in files:
        try:
            os.rename(path, aside / path.name)
        except OSError as exc:
            raise BackupError(
                f"not restored: {_os_reason(exc)} (what was moved before is in {aside})"
            ) from None
    fsync_dir(aside)
    fsync_dir(folder)
    return aside, tuple(p.name for p in files)

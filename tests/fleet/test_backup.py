"""`edgeflix fleet backup` and `fleet restore` (fleet/backup.py), through the CLI: a backup
taken while the manager writes restores whole, leftover -wal and -shm are moved aside with
the files they belonged to (never replayed over the backup), a TLS manager restored on a new
host keeps its CA, and every refusal is one line, exit 1, with nothing changed. Also the
store's "not writable" line names the database, and its free space is what `df` shows."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fleet import store as store_module
from fleet.admin import TOKEN_FILE
from fleet.backup import MANIFEST, BackupError, take_backup
from fleet.store import SCHEMA_VERSION, Store, StoreError
from fleet.tls import CA_CERT, CA_KEY
from tests.conftest import run_cli
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet_appliances import (
    Cluster,
    one_box_fleet,
    wait_for,
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["fleet", *args], timeout=120)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def db_value(db: Path, sql: str) -> Any:
    """One value read from `db` without changing it (the manager may be running on it)."""
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as conn:
        row = conn.execute(sql).fetchone()
    conn.close()
    return row[0] if row else None


def keys_version(db: Path) -> int:
    return int(db_value(db, "SELECT value FROM meta WHERE key = 'keys_version'"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a refused command must leave as is."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- a running manager with an enrolled appliance ----------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with one_box_fleet(tmp_path) as c:
        yield c


def rotated(c: Cluster) -> int:
    """A key rotation, once the appliance runs the new set: its version."""
    version = int(c.cli("keys", "rotate")["version"])
    box = c.boxes["a1"]
    wait_for(lambda: box.status()["keys_version"] == version, 30, f"a1 runs key set {version}")
    return version


def test_a_backup_of_a_running_manager_restores_and_the_manager_catches_up(
    cluster: Cluster, tmp_path: Path
) -> None:
    c, db = cluster, tmp_path / "fleet.sqlite"
    wait_for(lambda: [a["state"] for a in c.cli("ls")] in (["ok"], ["degraded"]), 30, "a1 beats")
    at_backup = rotated(c)
    dest = tmp_path / "backups" / "monday"
    dest.parent.mkdir()

    out = cli("backup", "--config", str(c.fleet_config), str(dest), "--json")

    assert out.returncode == 0, out.stderr
    manifest = json.loads(out.stdout)
    assert manifest["keys_version"] == at_backup and manifest["appliances"] == 1
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["database"] == db.name
    assert {f["name"] for f in manifest["files"]} == {db.name, TOKEN_FILE}
    assert sorted(p.name for p in dest.iterdir()) == sorted([db.name, TOKEN_FILE, MANIFEST])
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    for name in (db.name, TOKEN_FILE):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600
    assert [p.name for p in dest.parent.iterdir()] == ["monday"]  # no temporary folder left
    assert keys_version(dest / db.name) == at_backup  # whole: the -wal's writes are in

    # Refused while the manager runs on it: one line, nothing moved.
    refused = one_line_error(cli("restore", "--config", str(c.fleet_config), str(dest)))
    assert "another fleet manager" in refused and str(db) in refused, refused
    assert not list(tmp_path.glob("before-restore-*")) and db.exists()

    later = rotated(c)
    assert later > at_backup
    # Killed: its -wal and -shm stay beside the database, holding the later rotation.
    os.kill(c.fleet.proc.pid, signal.SIGKILL)
    c.fleet.proc.wait(10)
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    assert wal.exists() and shm.exists()
    old = {p.name: p.read_bytes() for p in (db, wal, shm, tmp_path / TOKEN_FILE)}

    out = cli("restore", "--config", str(c.fleet_config), str(dest))

    assert out.returncode == 0, out.stderr
    asides = list(tmp_path.glob("before-restore-*"))
    assert len(asides) == 1 and str(asides[0]) in out.stdout
    assert {p.name: p.read_bytes() for p in asides[0].iterdir()} == old  # moved, not deleted
    assert not wal.exists() and not shm.exists()
    assert db.read_bytes() == (dest / db.name).read_bytes()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert keys_version(db) == at_backup
    assert "catches its plan and key-set versions up" in out.stdout
    assert "new join tokens" in out.stdout

    c.restart_fleet()
    # Then one above what the appliance runs (the later rotation), which it fetches.
    box = c.boxes["a1"]
    wait_for(lambda: keys_version(db) > later, 30, "the manager caught its key set up")
    caught_up = keys_version(db)
    wait_for(lambda: box.status()["keys_version"] == caught_up, 30, "a1 runs the caught-up set")
    assert c.cli("show", "a1")["name"] == "a1"  # still enrolled


# -- a TLS manager restored on another host ----------------------------------------------


def tls_toml(folder: Path) -> Path:
    config = folder / "fleet.toml"
    config.write_text(f"""
[server]
grpc = "127.0.0.1:0"
enrol_grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{folder}/db/fleet.sqlite"
tls = true
admin = "token"
[origin]
url = "http://127.0.0.1:9"
""")
    return config


def serving(config: Path) -> Server:
    with (config.parent / "fleet.log").open("ab") as log:
        return start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=log)


def test_a_tls_manager_restored_on_a_new_host_keeps_its_ca(tmp_path: Path) -> None:
    """Without fleet-ca.pem and fleet-ca.key the restored manager made a new CA, and no
    appliance (nor CLI user) trusted it any more."""
    old_host, new_host = tmp_path / "old", tmp_path / "new"
    old_host.mkdir()
    new_host.mkdir()
    fleet = serving(tls_toml(old_host))
    dest = tmp_path / "backup"
    try:
        out = cli("backup", "--config", str(old_host / "fleet.toml"), str(dest))
    finally:
        fleet.stop()
    assert out.returncode == 0, out.stderr
    assert f"wrote {dest / CA_KEY}" in out.stdout and f"wrote {dest / MANIFEST}" in out.stdout
    assert stat.S_IMODE((dest / CA_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / CA_CERT).stat().st_mode) == 0o644
    ca = (old_host / "db" / CA_CERT).read_bytes()

    out = cli("restore", "--config", str(tls_toml(new_host)), str(dest))

    assert out.returncode == 0, out.stderr
    assert "moved aside" not in out.stdout  # nothing was there
    folder = new_host / "db"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / CA_KEY).stat().st_mode) == 0o600
    fleet = serving(new_host / "fleet.toml")
    try:
        assert (folder / CA_CERT).read_bytes() == ca
        env = {
            "EDGEFLIX_FLEET": "https://" + fleet.urls["http"].partition("://")[2],
            "EDGEFLIX_FLEET_CA": str(old_host / "db" / CA_CERT),  # the CA copied before
            "EDGEFLIX_FLEET_TOKEN": (old_host / "db" / TOKEN_FILE).read_text().strip(),
        }
        ls = run_cli(["fleet", "ls", "--json"], env=env, timeout=60)
        assert ls.returncode == 0 and json.loads(ls.stdout) == [], ls.stderr
    finally:
        fleet.stop()


# -- refusals: one line, exit 1, nothing changed -----------------------------------------


@pytest.fixture
def stopped(tmp_path: Path) -> tuple[Path, Path]:
    """The config of a stopped manager whose database holds a key set, and a backup of it."""
    host = tmp_path / "host"
    (host / "db").mkdir(parents=True)
    config = host / "fleet.toml"
    config.write_text(f'[server]\ndb = "{host}/db/fleet.sqlite"\n')
    store = Store(host / "db" / "fleet.sqlite")
    store.set_meta("keys_version", "7")
    store.close()
    (host / "db" / TOKEN_FILE).write_text("secret\n")
    dest = tmp_path / "backup"
    out = cli("backup", "--config", str(config), str(dest))
    assert out.returncode == 0, out.stderr
    return config, dest


def rewrite_manifest(backup: Path, **changes: Any) -> None:
    doc = json.loads((backup / MANIFEST).read_text())
    (backup / MANIFEST).write_text(json.dumps({**doc, **changes}))


def test_a_tampered_backup_is_refused(stopped: tuple[Path, Path], tmp_path: Path) -> None:
    config, dest = stopped
    token = dest / TOKEN_FILE
    token.write_text("stolen\n")  # same length, other bytes
    before = snapshot(tmp_path / "host")
    line = one_line_error(cli("restore", "--config", str(config), str(dest)))
    assert line == (
        f"error: backup {dest} is damaged: {TOKEN_FILE} does not match its sha256 in {MANIFEST}"
    )
    assert snapshot(tmp_path / "host") == before  # no staged file, nothing moved


def newer_schema(dest: Path) -> None:
    """A backup a newer Edgeflix made: its database and manifest agree, of schema N+1."""
    db = dest / "fleet.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    doc = json.loads((dest / MANIFEST).read_text())
    for f in doc["files"]:
        if f["name"] == db.name:
            f["size_bytes"] = db.stat().st_size
            f["sha256"] = hashlib.sha256(db.read_bytes()).hexdigest()
    (dest / MANIFEST).write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda d: os.rename(d, d.with_name("gone")), "no backup at {dest}: no such folder"),
        (lambda d: (d / MANIFEST).unlink(), "{dest} is not a fleet backup: it has no manifest"),
        (lambda d: (d / MANIFEST).write_text("{not json"), "the manifest of backup {dest} is "
         "damaged"),
        (lambda d: rewrite_manifest(d, keys_version="7"), "the manifest of backup {dest} is "
         "damaged: keys_version"),
        (lambda d: rewrite_manifest(d, files=[]), "the manifest of backup {dest} is damaged"),
        (lambda d: (d / TOKEN_FILE).unlink(), "backup {dest} is incomplete: admin-token is "
         "missing"),
        (lambda d: rewrite_manifest(d, schema_version=SCHEMA_VERSION + 1), "backup {dest} "
         "holds a database of a newer Edgeflix"),
        (newer_schema, "backup {dest} holds a database of a newer Edgeflix"),
    ],
    ids=["missing", "no-manifest", "not-json", "wrong-type", "no-database", "file-missing",
         "newer-manifest", "newer-database"],
)  # fmt: skip
def test_a_bad_backup_is_refused_in_one_line(
    stopped: tuple[Path, Path], tmp_path: Path, damage: Any, said: str
) -> None:
    config, dest = stopped
    damage(dest)
    before = snapshot(tmp_path / "host")
    line = one_line_error(cli("restore", "--config", str(config), str(dest)))
    assert line.startswith("error: " + said.format(dest=dest)), line
    assert snapshot(tmp_path / "host") == before


def test_a_backup_into_a_folder_with_files_is_refused(
    stopped: tuple[Path, Path], tmp_path: Path
) -> None:
    config, dest = stopped
    before = snapshot(tmp_path)
    line = one_line_error(cli("backup", "--config", str(config), str(dest)))
    assert line == f"error: {dest} is not empty: back up into a new folder"
    assert snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_backup_into_an_empty_folder_fills_it(stopped: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = stopped
    empty = tmp_path / "empty"
    empty.mkdir()
    out = cli("backup", "--config", str(config), str(empty), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["keys_version"] == 7
    assert (empty / MANIFEST).exists()


def test_a_backup_of_no_database_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(f'[server]\ndb = "{tmp_path}/nothing/fleet.sqlite"\n')
    line = one_line_error(cli("backup", "--config", str(config), str(tmp_path / "b")))
    assert line.startswith(f"error: no fleet database at {tmp_path}/nothing/fleet.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.toml"]


def test_a_restore_twice_keeps_both_sets_of_replaced_files(stopped: tuple[Path, Path]) -> None:
    config, dest = stopped
    for _ in range(2):
        out = cli("restore", "--config", str(config), str(dest))
        assert out.returncode == 0, out.stderr
    folder = config.parent / "db"
    assert len(list(folder.glob("before-restore-*"))) == 2  # in one second: a -2 suffix
    assert keys_version(folder / "fleet.sqlite") == 7


def test_a_backup_gives_up_on_a_database_locked_for_too_long(tmp_path: Path) -> None:
    """Python's backup loop retries a busy step for ever; a connection in exclusive locking
    mode (an operator's sqlite3 shell) keeps every reader out for as long as it likes."""
    db = tmp_path / "db" / "fleet.sqlite"
    Store(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(BackupError, match=r"stayed locked for 0\.5 s"):
            take_backup(db, tmp_path / "b", datetime.now(UTC), busy_s=0.5)
        assert time.monotonic() - started < 10
    finally:
        holder.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]  # nothing half-made


# -- the store's message -----------------------------------------------------------------


def test_a_refused_write_names_the_database(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite"
    store = Store(db)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError) as refused:
            store.set_meta("x", "1")
    finally:
        other.close()
        store.close()
    assert str(refused.value) == f"the fleet database is not writable now: {db}: database is locked"


def test_the_free_space_said_is_what_df_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """f_bfree counts the blocks reserved for root, which a root in a user namespace cannot
    use: a full disk showed gigabytes free, and lost its "bytes free" hint altogether."""
    vfs = SimpleNamespace(f_bfree=50_000, f_bavail=0, f_frsize=4096)
    monkeypatch.setattr(store_module.os, "statvfs", lambda _path: vfs)
    full = OSError(errno.ENOSPC, "No space left on device")
    said = store_module._reason(full, tmp_path / "fleet.sqlite")
    assert said == "[Errno 28] No space left on device (0 bytes free on the filesystem holding it)"

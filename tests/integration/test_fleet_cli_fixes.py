"""`edgeflix fleet` against what it was not meant for, as a user gets it wrong: `[server] db`
naming a folder or a file that is no database is refused with nothing changed (no chmod, no
lock file left), a start that fails leaves no lock file it made, and `--fleet` pointed at
another server's port says it may not be the fleet manager's."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.client import DEFAULT_FLEET, fleet_url
from tests.conftest import run_cli
from tests.edgeflix.test_cli import one_error_line
from tests.integration.serve_support import Server, serving_origin, start

HINT = "is it the fleet manager's HTTP address?"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def serve(tmp_path: Path, db: Path, grpc: str = "127.0.0.1:0") -> str:
    """`fleet serve` with `db`, expected to refuse: its one error line."""
    toml = tmp_path / "fleet.toml"
    toml.write_text(f'[server]\nhttp = "127.0.0.1:0"\ngrpc = "{grpc}"\ndb = "{db}"\n')
    proc = run_cli(["fleet", "serve", "--config", str(toml)], timeout=60)
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    assert "db_made_private" not in proc.stderr  # nothing was tightened
    return one_error_line(proc.stderr)


def beside(db: Path) -> list[str]:
    """What a start left next to `db` (a lock file, SQLite's -wal, -shm, -journal)."""
    return sorted(p.name for p in db.parent.iterdir() if p.name.startswith(f"{db.name}."))


def test_a_folder_named_as_the_database_is_refused_unchanged(tmp_path: Path) -> None:
    victim = tmp_path / "victim"  # `db = "/home/alice"`: a typo must not lock its owner out
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    (victim / "notes.txt").write_text("mine")
    line = serve(tmp_path, victim)
    assert line == (
        f"error: cannot open the fleet database {victim}: it is a folder, not a file"
        " ([server] db names the database file)"
    )
    assert mode(victim) == 0o755
    assert (victim / "notes.txt").read_text() == "mine"
    assert beside(victim) == [] and sorted(os.listdir(victim)) == ["notes.txt"]


def test_a_file_that_is_no_database_is_refused_unchanged(tmp_path: Path) -> None:
    movie = tmp_path / "movie.mp4"
    data = b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000)
    movie.write_bytes(data)
    movie.chmod(0o644)
    line = serve(tmp_path, movie)
    assert line == f"error: cannot open the fleet database {movie}: file is not a database"
    assert mode(movie) == 0o644 and movie.read_bytes() == data
    assert beside(movie) == []  # no movie.mp4.lock, no -wal or -shm


def test_a_failed_start_leaves_no_lock_file_it_made(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        assert serve(tmp_path, db, grpc=address).endswith("Address already in use")
    assert not db.exists() and beside(db) == []


def test_a_lock_file_that_was_there_stays_after_a_failed_start(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite"
    lock = Path(f"{db}.lock")
    lock.write_text("12345\n")  # a manager's that ran before
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        serve(tmp_path, db, grpc=f"127.0.0.1:{taken.getsockname()[1]}")
    assert lock.exists()


@pytest.fixture()
def manager(tmp_path: Path) -> Iterator[Server]:
    toml = tmp_path / "fleet.toml"
    db = tmp_path / "db" / "fleet.sqlite"
    toml.write_text(f'[server]\nhttp = "127.0.0.1:0"\ngrpc = "127.0.0.1:0"\ndb = "{db}"\n')
    server = start(["fleet", "serve", "--config", str(toml)], want=("grpc", "http"))
    yield server
    server.stop()


def test_a_second_manager_keeps_its_hands_off_the_first_ones_lock(
    tmp_path: Path, manager: Server
) -> None:
    db = tmp_path / "db" / "fleet.sqlite"
    lock = Path(f"{db}.lock")
    held = lock.stat().st_ino
    line = serve(tmp_path / "db", db)  # same database, other ports
    assert line.startswith("error: another fleet manager (pid ") and line.endswith(str(db))
    assert lock.stat().st_ino == held  # not removed (nor made anew): still the first's
    line = serve(tmp_path / "db", db)  # and still held
    assert line.startswith("error: another fleet manager (pid ")


def test_ls_at_an_origins_port_asks_whether_it_is_the_managers(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    with serving_origin(tmp_path / "store") as origin:
        proc = run_cli(["fleet", "ls", "--fleet", origin.url], timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert one_error_line(proc.stderr) == (
        f"error: {origin.url} sent HTTP 404 for GET /appliances: {HINT}"
    )


def test_ls_at_the_managers_grpc_port_asks_whether_it_is_the_http_one(manager: Server) -> None:
    grpc_url = f"http://{manager.urls['grpc']}"
    proc = run_cli(["fleet", "ls", "--fleet", grpc_url], timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    line = one_error_line(proc.stderr)
    assert line.startswith(f"error: fleet manager at {grpc_url} did not answer in HTTP (")
    assert line.endswith(f"): {HINT}")


def test_the_managers_own_404_is_said_as_it_is(manager: Server) -> None:
    proc = run_cli(["fleet", "show", "nope", "--fleet", manager.urls["http"]], timeout=60)
    line = one_error_line(proc.stderr)
    assert line == "error: fleet manager: no appliance named 'nope' (HTTP 404)"


@pytest.mark.parametrize(
    ("args", "shown"),
    [(["fleet", "show", ""], "NAME"), (["fleet", "keys", "revoke", ""], "KEY_ID")],
)
def test_an_empty_argument_is_named_as_the_usage_line_names_it(args: list[str], shown: str) -> None:
    proc = run_cli(args, timeout=60)
    assert proc.returncode == 2
    assert one_error_line(proc.stderr).startswith(f"error: Invalid value for '{shown}': ")
    usage = run_cli([*args[:-1], "--help"], check=True, timeout=60).stdout
    assert shown in usage.splitlines()[0]  # `Usage: edgeflix fleet show [OPTIONS] {NAME}`


def test_the_default_the_fleet_option_names_is_one_it_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGEFLIX_FLEET", raising=False)
    help_text = " ".join(run_cli(["fleet", "ls", "--help"], check=True, timeout=60).stdout.split())
    assert f"(default: $EDGEFLIX_FLEET or {DEFAULT_FLEET})" in help_text
    assert DEFAULT_FLEET == "http://127.0.0.1:7080"
    assert fleet_url(DEFAULT_FLEET) == fleet_url(None) == DEFAULT_FLEET

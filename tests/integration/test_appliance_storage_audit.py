"""Crash and damage cases of the appliance's storage, through the real CLI and daemon: a load
killed at several points, a store damaged behind the daemon's back before it starts, a damaged
or lost index, `rm` under a response in flight, disks sharing one small filesystem, and the
daemon killed in the middle of a tier move. Each ends with one-line errors, nothing half
written, and nothing lost that could be kept."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.diskclaim import is_marker
from tests.appliance.storage_fixtures import make_title
from tests.conftest import run_cli
from tests.integration.daemon_support import poll
from tests.integration.serve_support import Server, connect, read_response, start
from tests.integration.test_appliance_store import cli, error_line


def write_config(tmp: Path, disks: list[tuple[Path, str]], extra: str = "") -> Path:
    for path, _ in disks:
        path.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(f'{{ path = "{p}", tier = "{t}" }}' for p, t in disks)
    config = tmp / "appliance.toml"
    config.write_text(
        f"""
[storage]
index = "{tmp / "var" / "index.sqlite"}"
disks = [ {listed} ]
{extra}
[serve]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[fill]
staging = "{tmp / "staging"}"
"""
    )
    return config


def ls(config: Path) -> dict[str, dict[str, object]]:
    code, out, err = cli("ls", "--config", str(config), "--json")
    assert code == 0, err
    return {t["id"]: t for t in json.loads(out)}


def files_under(*folders: Path) -> list[Path]:
    found = (p for f in folders for p in f.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(p for p in found if not is_marker(p.name))  # the disk's own, not a title's


def run_daemon(config: Path) -> Server:
    return start(["appliance", "run", "--config", str(config)], ("listening", "admin"))


@pytest.fixture
def daemons() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def test_load_killed_at_any_point_leaves_nothing_and_reloads(tmp_path: Path) -> None:
    src = make_title(tmp_path / "src", "film", sizes=[150_000] * 40)
    disks = [tmp_path / "ssd0", tmp_path / "ssd1"]
    config = write_config(tmp_path, [(d, "ssd") for d in disks])
    for kill_after in (1, 15, 35):
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", "appliance", "load", "--config", str(config),
             "--title", "film", "--from", str(src)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if len(files_under(*disks)) >= kill_after:
                break
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.returncode != -signal.SIGKILL:
            continue  # finished first: nothing to learn from this round
        # What the daemon's start does (`ls` only reads the index: it would list it loading).
        code, found, err = cli("reconcile", "--config", str(config))
        assert code == 0, found + err
        code, out, err = cli("ls", "--config", str(config), "--json")
        assert code == 0, err
        listed = {t["id"]: t["state"] for t in json.loads(out)}
        assert listed in ({}, {"film": "ready"}), listed  # a half title is never left
        if not listed:
            assert files_under(*disks) == [], "a killed load left files behind"
            assert "removed an interrupted load" in found or len(found.splitlines()) == 1
        else:
            assert cli("rm", "--config", str(config), "--title", "film")[0] == 0
    code, _, err = cli("load", "--config", str(config), "--title", "film", "--from", str(src))
    assert code == 0, err
    code, out, err = cli("verify", "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["problems"] == [], out + err


def test_daemon_starts_and_serves_around_damage_done_while_it_was_down(
    tmp_path: Path, daemons: list[Server]
) -> None:
    disk = tmp_path / "hdd0"
    config = write_config(tmp_path, [(disk, "hdd")])
    src = make_title(tmp_path / "src", "film", sizes=[30_000] * 6)
    assert cli("load", "--config", str(config), "--title", "film", "--from", str(src))[0] == 0
    top = disk / "titles" / "film"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "same.m4s").write_bytes((top / "v1/seg0001.m4s").read_bytes())
    (top / "v0/seg0000.m4s").unlink()
    (top / "v0/seg0000.m4s").mkdir()  # a folder where a file was
    (top / "v1/seg0001.m4s").unlink()
    (top / "v1/seg0001.m4s").symlink_to(outside / "same.m4s")  # identical bytes, via a link
    (top / "v0/seg0002.m4s").unlink()
    (top / "v0/seg0002.m4s").symlink_to("/etc/passwd")
    os.truncate(top / "v1/seg0003.m4s", 100)
    (disk / "titles" / "evil").symlink_to(outside)

    server = run_daemon(config)
    daemons.append(server)
    for rel in ("v0/seg0000.m4s", "v1/seg0001.m4s", "v0/seg0002.m4s", "v1/seg0003.m4s"):
        assert httpx.get(f"{server.url}/titles/film/{rel}", timeout=5).status_code == 404, rel
    for rel in ("v0/seg0004.m4s", "master.m3u8"):
        reply = httpx.get(f"{server.url}/titles/film/{rel}", timeout=5)
        assert reply.status_code == 200 and reply.content == (src / rel).read_bytes()
    # The start's check of every file (it drops and sweeps) runs once the daemon serves.
    done = poll(server, lambda doc: doc["daemon"]["startup_check"]["state"] == "done", 30)
    assert done is not None, "the start-up check did not end"
    assert (outside / "same.m4s").exists() and Path("/etc/passwd").exists()
    assert not (disk / "titles" / "evil").exists()
    film = ls(config)["film"]
    assert film["state"] == "incomplete" and film["missing"] == 4
    # Reloading mends it, while the daemon keeps serving.
    code, _, err = cli(
        "load", "--config", str(config), "--title", "film", "--from", str(src), "--replace"
    )
    assert code == 0, err
    reply = httpx.get(f"{server.url}/titles/film/v1/seg0001.m4s", timeout=5)
    assert reply.status_code == 200 and reply.content == (src / "v1/seg0001.m4s").read_bytes()


def test_damaged_index_is_one_line_and_a_new_index_keeps_the_titles(
    tmp_path: Path, daemons: list[Server]
) -> None:
    disks = [tmp_path / "ssd0", tmp_path / "hdd0"]
    config = write_config(tmp_path, [(disks[0], "ssd"), (disks[1], "hdd")])
    src = make_title(tmp_path / "src", "film")
    assert cli("load", "--config", str(config), "--title", "film", "--from", str(src))[0] == 0
    index = tmp_path / "var" / "index.sqlite"
    with sqlite3.connect(index) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = bytearray(index.read_bytes())
    raw[4096 : 4096 + 3000] = os.urandom(3000)
    index.write_bytes(bytes(raw))
    for args in (("ls",), ("verify",), ("rm", "--title", "film")):
        code, _, err = cli(*args, "--config", str(config))
        assert code != 0 and "is damaged" in error_line(err) and "aside" in error_line(err)
    proc = run_cli(["appliance", "run", "--config", str(config)], timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "is damaged" in error_line(proc.stderr)

    # The way out the message gives: move it aside. Nothing on the disks is lost.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    server = run_daemon(config)
    daemons.append(server)
    reply = httpx.get(f"{server.url}/titles/film/v0/seg0000.m4s", timeout=5)
    assert reply.status_code == 200 and reply.content == (src / "v0/seg0000.m4s").read_bytes()
    assert ls(config)["film"]["state"] == "ready"
    code, out, _ = cli("verify", "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["checked_files"] == 8


def test_rm_while_a_response_is_in_flight(tmp_path: Path, daemons: list[Server]) -> None:
    disk = tmp_path / "hdd0"
    config = write_config(tmp_path, [(disk, "hdd")])
    src = make_title(tmp_path / "src", "film", sizes=[24 << 20, 1000])
    assert cli("load", "--config", str(config), "--title", "film", "--from", str(src))[0] == 0
    server = run_daemon(config)
    daemons.append(server)
    big = (src / "v0/seg0000.m4s").read_bytes()
    with connect(server.addr) as sock:
        sock.sendall(b"GET /titles/film/v0/seg0000.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)  # the response has started; most of it is still to come
        assert first.startswith(b"HTTP/1.1 200")
        code, _, err = cli("rm", "--config", str(config), "--title", "film")
        assert code == 0, err
        assert not (disk / "titles" / "film").exists()
        buf = bytearray(first)
        reply = read_response(sock, buf)
        assert reply.status == 200 and hashlib.sha256(reply.body).digest() == (
            hashlib.sha256(big).digest()
        )
        sock.sendall(b"GET /titles/film/v1/seg0001.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, buf).status == 404
    code, _, err = cli("rm", "--config", str(config), "--title", "film")
    assert code == 1 and "no title 'film'" in error_line(err)


def test_two_disks_on_one_small_filesystem_refuse_what_does_not_fit(
    tmp_path: Path, small_fs: Path
) -> None:
    disks = [small_fs / "a", small_fs / "b"]
    config = write_config(tmp_path, [(d, "hdd") for d in disks])
    # 3.4 MB in all: more than the 3 MiB both share, less than either may take alone.
    src = make_title(tmp_path / "src", "film", sizes=[50_000] * 68)
    code, _, err = cli("load", "--config", str(config), "--title", "film", "--from", str(src))
    assert code == 1
    line = error_line(err)
    assert "does not fit" in line and "one filesystem" in line, line
    assert files_under(*disks) == [] and ls(config) == {}
    small = make_title(tmp_path / "src", "short", sizes=[400_000] * 3)
    assert cli("load", "--config", str(config), "--title", "short", "--from", str(small))[0] == 0


@pytest.mark.slow
def test_daemon_killed_mid_tier_move_keeps_one_whole_copy(
    tmp_path: Path, daemons: list[Server]
) -> None:
    ssd, hdd = tmp_path / "ssd0", tmp_path / "hdd0"
    extra = "hot_rate = 0.5\nmove_interval_s = 0.5\nmove_bytes_per_s = 2000000"
    config = write_config(tmp_path, [(ssd, "ssd"), (hdd, "hdd")], extra)
    src = make_title(tmp_path / "src", "film", sizes=[200_000] * 30)
    assert cli("load", "--config", str(config), "--title", "film", "--from", str(src))[0] == 0
    assert ls(config)["film"]["tier"] == "hdd"
    hits = tmp_path / "var" / "index.sqlite.hits.sqlite"
    with sqlite3.connect(hits) as conn:
        conn.execute("INSERT INTO rates VALUES ('film', 100.0, ?)", (time.time(),))
    server = run_daemon(config)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(files_under(ssd)) < 10:
        time.sleep(0.02)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    assert len(files_under(ssd)) >= 10, "the move did not start"
    with sqlite3.connect(hits) as conn:
        conn.execute("DELETE FROM rates")
    code, found, err = cli("reconcile", "--config", str(config))  # as the next start does
    assert code == 0, found + err
    film = ls(config)["film"]
    assert film["state"] == "ready" and film["tier"] == "hdd"
    assert files_under(ssd) == [], "the half-done copy was not swept"
    code, out, _ = cli("verify", "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["checked_files"] == 32


def test_errors_quoting_brackets_are_one_line_not_a_crash(tmp_path: Path) -> None:
    config = write_config(tmp_path, [(tmp_path / "hdd0", "hdd")])
    odd = tmp_path / "[/]odd"
    code, _, err = cli("load", "--config", str(config), "--title", "film", "--from", str(odd))
    assert code == 1 and error_line(err) == f"error: {odd}: not a folder"
    # A warning naming a bracketed disk path keeps its brackets too (a missing disk is out
    # of service: `ls` lists from the index and says so).
    gone = tmp_path / "[red]gone[/red]"
    config = write_config(tmp_path, [(gone, "hdd")])
    gone.rmdir()
    code, _, err = cli("ls", "--config", str(config))
    assert code == 0 and f"warning: disk {gone} is out of service" in err, err


def test_index_on_a_full_filesystem_is_one_line_and_writes_nothing(
    tmp_path: Path, small_fs: Path
) -> None:
    disk = tmp_path / "hdd0"
    config = write_config(tmp_path, [(disk, "hdd")])
    text = config.read_text().replace(str(tmp_path / "var"), str(small_fs / "var"))
    config.write_text(text)
    src = make_title(tmp_path / "src", "film")
    assert cli("load", "--config", str(config), "--title", "film", "--from", str(src))[0] == 0
    with (small_fs / "ballast").open("wb") as ballast:
        try:
            for _ in range(200):  # 3 MiB fills in 48 of these
                ballast.write(b"\0" * 65536)
                ballast.flush()
        except OSError:
            pass
    other = make_title(tmp_path / "src", "other")
    code, _, err = cli("load", "--config", str(config), "--title", "other", "--from", str(other))
    assert code == 1
    assert "aside" not in error_line(err)  # a full disk is not damage: no new index advised
    assert not (disk / "titles" / "other").exists()
    (small_fs / "ballast").unlink()
    assert set(ls(config)) == {"film"}


@pytest.fixture
def bind_alias(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """One folder at two paths (a bind mount; root only), unmounted afterwards."""
    real, alias = tmp_path / "real", tmp_path / "alias"
    real.mkdir()
    alias.mkdir()
    made = subprocess.run(["mount", "--bind", str(real), str(alias)],
                          capture_output=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {made.stderr.decode().strip()}")
    try:
        yield real, alias
    finally:
        subprocess.run(["umount", "-l", str(alias)], check=False)


def test_one_folder_listed_as_two_disks_is_refused(
    tmp_path: Path, bind_alias: tuple[Path, Path]
) -> None:
    # Each disk's reconcile took the other's files for strays: `ls` deleted the whole title.
    real, alias = bind_alias
    config = write_config(tmp_path, [(real, "hdd"), (alias, "hdd")])
    src = make_title(tmp_path / "src", "film")
    code, _, err = cli("load", "--config", str(config), "--title", "film", "--from", str(src))
    assert code == 1 and "are the same folder" in error_line(err)
    assert files_under(real) == []


def test_verify_counts_what_its_reconcile_dropped(tmp_path: Path) -> None:
    # verify reconciles first (size checks), and that used to swallow the damage: a truncated
    # file was a warning on stderr, `problems: []` and exit 0.
    disk = tmp_path / "hdd0"
    config = write_config(tmp_path, [(disk, "hdd")])
    src = make_title(tmp_path / "src", "film")
    assert cli("load", "--config", str(config), "--title", "film", "--from", str(src))[0] == 0
    os.truncate(disk / "titles/film/v0/seg0000.m4s", 10)
    code, out, _ = cli("verify", "--config", str(config), "--json")
    assert code == 1
    assert [(p["path"], p["problem"].split(";")[0]) for p in json.loads(out)["problems"]] == [
        ("v0/seg0000.m4s", "size 10 != 70000 in the index")
    ]

"""`edgeflix appliance load/ls/rm/verify` as a user runs them: real processes, real disks
(two folders in tmp_path with their tiers set), real SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from appliance import config as appliance_config
from appliance.diskclaim import is_marker
from appliance.safefiles import TitleLocks
from appliance.store import locks_folder
from tests.appliance.storage_fixtures import make_title, storage_toml, title_bytes
from tests.conftest import run_cli


def cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = run_cli(["appliance", *args], timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def ls(config: Path) -> list[dict[str, object]]:
    code, out, err = cli("ls", "--config", str(config), "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def disk_files(tmp_path: Path) -> list[Path]:
    disks = [tmp_path / d for d in ("ssd0", "hdd1")]
    return sorted(p for d in disks for p in d.rglob("*") if p.is_file() and not is_marker(p.name))


def test_load_ls_verify_rm(tmp_path: Path) -> None:
    config = storage_toml(tmp_path)
    src = make_title(tmp_path / "src", "bunny")
    code, out, err = cli("load", "--config", str(config), "--title", "bunny", "--from", str(src))
    assert code == 0, err
    assert f"loaded bunny: {title_bytes(src)} bytes on the hdd tier" in out
    (title,) = ls(config)
    assert title["id"] == "bunny" and title["state"] == "ready" and title["tier"] == "hdd"
    assert title["bytes"] == title_bytes(src) and title["files"] == 8
    assert title["disks"] == [str((tmp_path / "hdd1").resolve())]
    for path in src.rglob("*"):
        if path.is_file():
            copy = tmp_path / "hdd1" / "titles" / "bunny" / path.relative_to(src)
            assert copy.read_bytes() == path.read_bytes()
    code, out, _ = cli("ls", "--config", str(config))  # a pipe: plain tab-separated text
    assert out.splitlines()[0].split("\t") == ["title", "state", "tier", "disks", "bytes", "files"]
    assert out.splitlines()[1].startswith("bunny\tready\thdd\t")
    code, out, err = cli("verify", "--config", str(config), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["checked_files"] == 8 and report["problems"] == []
    assert report["checked_bytes"] == title_bytes(src)
    code, out, err = cli("load", "--config", str(config), "--title", "bunny", "--from", str(src))
    assert code != 0 and "already loaded" in error_line(err) and "--replace" in error_line(err)
    code, _, err = cli(
        "load", "--config", str(config), "--title", "bunny", "--from", str(src), "--replace"
    )
    assert code == 0, err
    code, out, err = cli("rm", "--config", str(config), "--title", "bunny")
    assert code == 0 and "removed bunny" in out
    assert ls(config) == [] and disk_files(tmp_path) == []
    code, _, err = cli("rm", "--config", str(config), "--title", "bunny")
    assert code != 0 and "no title 'bunny'" in error_line(err)


def test_refusals_leave_nothing_behind(tmp_path: Path) -> None:
    config = storage_toml(tmp_path)
    src = make_title(tmp_path / "src", "bunny")
    victim = next(src.rglob("*.m4s"))
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.write_bytes(bytes(data))
    code, _, err = cli("load", "--config", str(config), "--title", "bunny", "--from", str(src))
    assert code != 0 and f"{victim.name}: SHA-256 mismatch" in error_line(err)
    assert ls(config) == [] and disk_files(tmp_path) == []

    small = storage_toml(tmp_path / "small", max_bytes=100_000)
    big = make_title(tmp_path / "src2", "big")
    code, _, err = cli("load", "--config", str(small), "--title", "big", "--from", str(big))
    line = error_line(err)
    assert code != 0 and "title big does not fit on the hdd tier" in line
    assert f"needs {title_bytes(big)} bytes" in line
    assert ls(small) == []


def test_user_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    config = storage_toml(tmp_path)
    src = make_title(tmp_path / "src", "bunny")
    cases = [
        (["load", "--title", "bunny", "--from", str(tmp_path / "nope")], "not a folder"),
        (["load", "--title", "bunny", "--from", str(tmp_path)], "no files.json"),
        (["load", "--title", "other", "--from", str(src)], "is for title 'bunny'"),
        (["load", "--title", "../x", "--from", str(src)], "invalid title id"),
    ]
    for args, expected in cases:
        code, _, err = cli(*args, "--config", str(config))
        assert code != 0 and expected in error_line(err), (args, err)
    code, _, err = cli("load", "--title", "bunny", "--from", str(src), "--config", str(config))
    assert code == 0, err
    missing_disk = tmp_path / "missing.toml"
    index = tmp_path / "var" / "index.sqlite"  # the one the load made (storage_toml's)
    missing_disk.write_text(
        f'[storage]\nindex = "{index}"\ndisks = [ {{ path = "{tmp_path / "gone"}" }} ]\n'
    )
    # A missing disk is one out of service (a dead or unmounted disk looks the same): `ls`
    # still lists from the index and says so in one line; writing to it is an error.
    code, _, err = cli("ls", "--config", str(missing_disk))
    assert code == 0 and "gone is out of service (missing" in err, err
    code, _, err = cli("load", "--title", "bunny", "--from", str(src), "--config",
                       str(missing_disk))  # fmt: skip
    assert code != 0 and "no disk is in service: all are out" in error_line(err), err
    # A NUL or a newline in a files.json path: one line, not a traceback.
    lying = make_title(tmp_path / "lying", "liar")
    doc = json.loads((lying / "files.json").read_text())
    for bad in ("a\u0000b", "a\nb"):
        doc["files"][0]["path"] = bad
        (lying / "files.json").write_text(json.dumps(doc))
        code, _, err = cli("load", "--config", str(config), "--title", "liar", "--from",
                           str(lying))  # fmt: skip
        assert code != 0 and "invalid file path" in error_line(err), err
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("[storage]\nhot_rat = 3\n")
    code, _, err = cli("ls", "--config", str(bad_key))
    assert code != 0 and "unknown key 'storage.hot_rat'" in error_line(err)


def two_titles_loaded(tmp_path: Path) -> tuple[Path, Path]:
    """Titles `a` and `b` loaded by the CLI: (config, the titles folder they are on)."""
    config = storage_toml(tmp_path)
    for title_id in ("a", "b"):
        src = make_title(tmp_path / "src", title_id)
        code, _, err = cli("load", "--config", str(config), "--title", title_id, "--from", str(src))
        assert code == 0, err
    return config, tmp_path / "hdd1" / "titles"


def test_rm_reconciles_its_own_title_only(tmp_path: Path) -> None:
    """Removing one title must not pay for a scan of every stored file: the other titles'
    leftovers wait for the next full reconcile (the daemon's, or `appliance reconcile`)."""
    config, stored = two_titles_loaded(tmp_path)
    partial = stored / "b" / "v1" / ".seg0001.m4s.dead.tmp"
    partial.write_bytes(b"partial")
    ghost = stored / "ghost" / "seg.m4s"  # a title not in the index
    ghost.parent.mkdir()
    ghost.write_bytes(b"x")
    unfinished = stored / "a~0123abcd"  # a version of `a` an update was writing when killed
    (unfinished / "v0").mkdir(parents=True)
    (unfinished / "v0" / "seg0000.m4s").write_bytes(b"y")
    os.utime(unfinished, (0, 0))  # retired long ago, not moments ago
    code, out, err = cli("rm", "--config", str(config), "--title", "a")
    assert code == 0 and out.strip() == "removed a", out + err
    assert "a: removed 1 files of an unfinished or replaced version (a~0123abcd)" in err
    assert not unfinished.exists() and not (stored / "a").exists()
    assert partial.exists() and ghost.exists() and "partial" not in err and "ghost" not in err
    code, out, err = cli("reconcile", "--config", str(config))
    assert code == 0, out + err  # leftovers only: no stored file lost
    assert f"b/v1/{partial.name}: removed partial file on {tmp_path / 'hdd1'}" in out
    assert "ghost: removed 1 stray files of a title not in the index" in out
    assert not partial.exists() and not ghost.exists()
    assert [(t["id"], t["state"]) for t in ls(config)] == [("b", "ready")]


def test_files_changed_behind_our_back_are_found_on_restart(tmp_path: Path) -> None:
    config, stored = two_titles_loaded(tmp_path)
    os.truncate(stored / "a" / "v0" / "seg0000.m4s", 10)
    (stored / "b" / "master.m3u8").unlink()
    (stored / "b" / "v1" / ".seg0001.m4s.dead.tmp").write_bytes(b"partial")
    # `ls` reads the index only (a scan of every stored file takes minutes on a full
    # appliance): it lists what the index says and changes nothing on the disks.
    code, out, err = cli("ls", "--config", str(config), "--json")
    assert code == 0 and err == "", err
    states = {t["id"]: (t["state"], t["missing"]) for t in json.loads(out)}
    assert states == {"a": ("ready", 0), "b": ("ready", 0)}
    assert (stored / "b" / "v1" / ".seg0001.m4s.dead.tmp").exists()
    assert (stored / "a" / "v0" / "seg0000.m4s").stat().st_size == 10
    # A reconcile (the daemon's start, or this command) finds it all; lost files: exit 1.
    code, out, err = cli("reconcile", "--config", str(config))
    assert code == 1, out + err
    assert "a/v0/seg0000.m4s: size 10 != 70000 in the index" in out
    assert "b/master.m3u8: missing from its disk" in out
    assert "removed partial file" in out
    states = {t["id"]: (t["state"], t["missing"]) for t in ls(config)}
    assert states == {"a": ("incomplete", 1), "b": ("incomplete", 1)}
    assert not (stored / "b" / "v1" / ".seg0001.m4s.dead.tmp").exists()
    assert not (stored / "a" / "v0" / "seg0000.m4s").exists()
    code, out, _ = cli("reconcile", "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["findings"] == []  # settled
    # Flipped bytes keep the size: only verify finds them, and then exits non-zero.
    src_c = make_title(tmp_path / "src", "c")
    assert cli("load", "--config", str(config), "--title", "c", "--from", str(src_c))[0] == 0
    seg = stored / "c" / "v1" / "seg0001.m4s"
    data = bytearray(seg.read_bytes())
    data[5] ^= 1
    seg.write_bytes(bytes(data))
    code, out, err = cli("verify", "--config", str(config))
    assert code == 1
    assert "c/v1/seg0001.m4s: SHA-256 does not match the index" in out
    assert {t["id"]: t["state"] for t in ls(config)}["c"] == "incomplete"
    # Reloading repairs a title.
    code, _, err = cli(
        "load", "--config", str(config), "--title", "c", "--from", str(src_c), "--replace"
    )
    assert code == 0 and {t["id"]: t["state"] for t in ls(config)}["c"] == "ready"


def test_a_command_waiting_for_a_busy_title_says_so(tmp_path: Path) -> None:
    """`rm` (or `load --replace`) of a title another process works on waits for it, which
    for a tier move of a big title can take minutes: it says why instead of hanging silent."""
    config = storage_toml(tmp_path)
    src = make_title(tmp_path / "src", "bunny")
    code, _, err = cli("load", "--config", str(config), "--title", "bunny", "--from", str(src))
    assert code == 0, err
    locks = TitleLocks(locks_folder(appliance_config.load(config).storage.index))
    with locks.hold("bunny"):  # as a tier move would
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", "appliance", "rm", "--config", str(config),
             "--title", "bunny"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        seen = ""
        while "title.waiting" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            seen += proc.stderr.readline()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "removed bunny" in out, err

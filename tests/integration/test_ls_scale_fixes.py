"""`appliance load` and `appliance ls` on an appliance holding much: a load reconciles its own
title and those a crash or a config edit left unsettled, not every stored file (a full
reconcile only when the title does not fit, as the others' leftovers may hold its room); `ls`
shows a cell quoting `[storage]` as written on a terminal. Real processes, real folders."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from tests.appliance.storage_fixtures import make_title, storage_toml
from tests.conftest import run_cli
from tests.integration.tty_support import run_in_pty

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli(*args: str) -> tuple[int, str, str]:
    proc = run_cli(["appliance", *args], timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def load(config: Path, title_id: str, source: Path) -> tuple[int, str, str]:
    return cli("load", "--config", str(config), "--title", title_id, "--from", str(source))


def test_load_reconciles_its_own_title_and_the_unsettled_ones_not_every_title(
    tmp_path: Path,
) -> None:
    config = storage_toml(tmp_path)
    for title_id in ("a", "b", "c"):
        code, _, err = load(config, title_id, make_title(tmp_path / "src", title_id))
        assert code == 0, err
    stored = tmp_path / "hdd1" / "titles"
    # Leftovers inside a title the index holds: only a reconcile reading b's folders sees
    # them (the daemon's, every reconcile_interval_s, or `appliance reconcile`).
    partial = stored / "b" / "v1" / ".seg0001.m4s.dead.tmp"
    partial.write_bytes(b"partial")
    unfinished = stored / "b~0123abcd" / "v0" / "seg0000.m4s"  # a killed update of b
    unfinished.parent.mkdir(parents=True)
    unfinished.write_bytes(b"y")
    os.utime(unfinished.parents[1], (0, 0))  # not retired moments ago
    # What the index and one listing of titles/ tell of: a title not in the index, and an
    # interrupted removal (its rows count as used room until it is finished).
    ghost = stored / "ghost" / "seg.m4s"
    ghost.parent.mkdir()
    ghost.write_bytes(b"x")
    with sqlite3.connect(tmp_path / "var" / "index.sqlite") as conn:
        conn.execute("UPDATE titles SET state = 'removing' WHERE id = 'c'")
    conn.close()

    code, out, err = load(config, "d", make_title(tmp_path / "src", "d"))
    assert code == 0 and out.startswith("loaded d: "), err
    assert "ghost: removed 1 stray files of a title not in the index" in err
    assert "c: removed an interrupted removal" in err
    assert not ghost.parent.exists() and not (stored / "c").exists()
    # b was not visited: its leftovers wait, and nothing about it was said.
    assert partial.exists() and unfinished.exists(), err
    assert not re.search(r"^warning: b[:/]", err, re.MULTILINE), err

    code, out, err = cli("reconcile", "--config", str(config))
    assert code == 0, out + err
    assert "removed partial file" in out and "b~0123abcd" in out
    assert not partial.exists() and not unfinished.exists()


def small_disk_toml(tmp_path: Path, disk: Path) -> Path:
    """One disk on its own small filesystem, no max_bytes: its free space is what counts."""
    disk.mkdir()
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'[storage]\nindex = "{tmp_path / "var" / "index.sqlite"}"\n'
        f'disks = [{{ path = "{disk}", tier = "hdd" }}]\n'
    )
    return path


def test_a_title_without_room_for_the_leftovers_of_another_loads_after_a_full_reconcile(
    tmp_path: Path, small_fs: Path
) -> None:
    config = small_disk_toml(tmp_path, small_fs / "disk")
    code, _, err = load(config, "a", make_title(tmp_path / "src", "a"))
    assert code == 0, err
    # 2 MiB a killed load left in a's folder: the 3 MiB filesystem is nearly full.
    partial = small_fs / "disk" / "titles" / "a" / "v0" / ".seg0009.m4s.dead.tmp"
    partial.write_bytes(b"\0" * (2 << 20))
    big = make_title(tmp_path / "src", "big", sizes=[400_000] * 3)
    code, out, err = load(config, "big", big)
    assert code == 0 and out.startswith("loaded big: "), err
    assert "a/v0/.seg0009.m4s.dead.tmp: removed partial file" in err
    assert not partial.exists()

    # Too big whatever is swept: the refusal stands, said once.
    huge = make_title(tmp_path / "src", "huge", sizes=[900_000] * 3)
    code, _, err = load(config, "huge", huge)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1 and "does not fit" in errors[0], err
    assert not (small_fs / "disk" / "titles" / "huge").exists()


def test_ls_on_a_terminal_shows_brackets_in_a_cell_as_written(tmp_path: Path) -> None:
    config = storage_toml(tmp_path)
    code, _, err = load(config, "film", make_title(tmp_path / "src", "film"))
    assert code == 0, err
    # The hdd disk taken out of the config: ls says where film's files are.
    text = config.read_text()
    config.write_text("\n".join(line for line in text.splitlines() if "hdd1" not in line))
    run = run_in_pty(["appliance", "ls", "--config", str(config)], columns=160)
    shown = ANSI.sub("", run.output)
    assert run.returncode == 0, shown
    assert "8 (8 on disks not in [storage] disks)" in shown, shown

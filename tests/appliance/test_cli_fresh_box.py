"""A new user's first commands on a box that never loaded a title: `appliance ls` lists
nothing and `appliance status` reports the box, both exiting as on any box (0 for `ls`, the
health's code for `status`), with no daemon yet (no index: nothing is made) and with one
running (an empty index). A broken setup still fails in one line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from appliance.index import INDEX_SCHEMA
from appliance.status import exit_code
from tests.appliance.storage_fixtures import make_title
from tests.integration.daemon_support import start_daemon, write_config
from tests.integration.daemon_support import status as daemon_status
from tests.integration.test_appliance_store import cli, error_line
from tests.integration.tty_support import run_in_pty

HEADER = "title\tstate\ttier\tdisks\tbytes\tfiles\n"


def fresh(tmp_path: Path) -> tuple[Path, Path]:
    """A box's config (two empty disk folders) and its index path, which does not exist."""
    config = write_config(tmp_path)
    index = tmp_path / "index.sqlite"
    assert not index.exists()
    return config, index


def made_nothing(tmp_path: Path) -> None:
    """Nothing but the config and the two empty disk folders."""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["appliance.toml", "d0", "d1"]
    assert not [p for d in ("d0", "d1") for p in (tmp_path / d).iterdir()]


def status_json(config: Path) -> tuple[int, dict[str, object]]:
    code, out, err = cli("status", "--config", str(config), "--json")
    assert out, err
    doc: dict[str, object] = json.loads(out)
    return code, doc


def health_code(code: int, doc: dict[str, object]) -> None:
    """The exit status is the health's (the state depends on this machine's load too), never
    an error's; and nothing in it is about the index."""
    health = doc["health"]
    assert isinstance(health, dict)
    assert code == exit_code(health["state"]) and code not in (1, 2), (code, health)
    assert not [r for r in health["reasons"] if "index" in r], health


def test_ls_on_a_box_with_no_index_lists_nothing(tmp_path: Path) -> None:
    config, _ = fresh(tmp_path)
    assert cli("ls", "--config", str(config)) == (0, HEADER, "")
    assert cli("ls", "--config", str(config), "--json") == (0, "[]\n", "")
    made_nothing(tmp_path)


def test_ls_on_a_terminal_says_there_are_no_titles_and_names_the_index(tmp_path: Path) -> None:
    config, index = fresh(tmp_path)
    run = run_in_pty(["appliance", "ls", "--config", str(config)], columns=400)
    assert run.returncode == 0, run.output
    assert run.output.strip() == (
        f"no titles on this appliance yet (no index at {index} until the first load or run)"
    )
    made_nothing(tmp_path)


def test_status_on_a_box_with_no_index_reports_it(tmp_path: Path) -> None:
    config, index = fresh(tmp_path)
    code, doc = status_json(config)
    health_code(code, doc)
    assert doc["titles"] == {"count": 0, "bytes": 0}
    profile = doc["profile"]
    assert isinstance(profile, dict)
    assert sorted(d["path"] for d in profile["disks"]) == [
        str(tmp_path / "d0"),
        str(tmp_path / "d1"),
    ]
    code, out, err = cli("status", "--config", str(config))
    assert code not in (1, 2), err
    assert f"titles\tnone yet (no index at {index})\n" in out
    assert f"disk\t{tmp_path / 'd0'}" in out and "health\t" in out
    made_nothing(tmp_path)


def test_ls_and_status_beside_a_running_daemon_on_an_empty_box(tmp_path: Path) -> None:
    config, index = fresh(tmp_path)
    server = start_daemon(config)
    try:
        assert index.exists()  # the daemon made it, empty
        assert cli("ls", "--config", str(config), "--json") == (0, "[]\n", "")
        code, out, err = cli("ls", "--config", str(config))
        assert (code, out) == (0, HEADER), err
        code, doc = status_json(config)
        health_code(code, doc)
        assert doc["titles"] == {"count": 0, "bytes": 0}
        code, out, err = cli("status", "--config", str(config))
        assert code not in (1, 2) and "titles\tnone\n" in out, err
        assert daemon_status(server)["titles"] == {"count": 0, "bytes": 0}
    finally:
        assert server.stop() == 0


def test_status_counts_the_titles_once_one_is_loaded(tmp_path: Path) -> None:
    config, _ = fresh(tmp_path)
    src = make_title(tmp_path / "src", "film")
    assert cli("load", "--config", str(config), "--title", "film", "--from", str(src))[0] == 0
    _, doc = status_json(config)
    titles = doc["titles"]
    assert isinstance(titles, dict) and titles["count"] == 1 and titles["bytes"] > 0, titles
    code, out, err = cli("status", "--config", str(config))
    assert code not in (1, 2) and "titles\t1 (" in out, err


def test_an_index_of_a_newer_edgeflix_still_fails(tmp_path: Path) -> None:
    config, index = fresh(tmp_path)
    conn = sqlite3.connect(index)
    conn.execute(f"PRAGMA user_version = {INDEX_SCHEMA + 1}")
    conn.close()
    for args in (["ls"], ["ls", "--json"]):
        code, out, err = cli(*args, "--config", str(config))
        assert code == 1 and out == "", err
        assert "was written by a newer Edgeflix" in error_line(err)
    code, doc = status_json(config)
    health = doc["health"]
    assert isinstance(health, dict)
    assert code == 4 and health["state"] == "failing"
    assert "was written by a newer Edgeflix" in health["reasons"][0]


def test_a_config_that_cannot_be_read_still_fails(tmp_path: Path) -> None:
    config, _ = fresh(tmp_path)
    config.write_text("[storage\n")
    for args in (["ls"], ["ls", "--json"], ["status"], ["status", "--json"]):
        code, out, err = cli(*args, "--config", str(config))
        assert code == 2 and out == "", err
        assert "not valid TOML" in error_line(err)

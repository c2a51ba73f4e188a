"""`edgeflix appliance …` against the mistakes a hostile review made on real processes: a
fill plan file of `{}` (or one listing none of the titles held) that would empty the box, a
mistyped [storage] index that read commands made a new empty index for, `status` exit codes
that collided with a bad command line, an empty --key, and a `--cap-mbps nan`."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from appliance.status import EXIT_CODES
from tests.appliance.storage_fixtures import make_title
from tests.integration.test_appliance_store import cli, error_line
from tests.integration.test_fill import appliance_config


def _held(config: Path) -> list[str]:
    code, out, err = cli("ls", "--config", str(config), "--json")
    assert code == 0, err
    return [t["id"] for t in json.loads(out)]


def _loaded(tmp_path: Path, *titles: str) -> Path:
    config = appliance_config(tmp_path)
    for title in titles:
        src = make_title(tmp_path / "src", title)
        code, _, err = cli("load", "--config", str(config), "--title", title, "--from", str(src))
        assert code == 0, err
    return config


def _fill_plan(config: Path, plan: Path, *extra: str) -> tuple[int, str, str]:
    return cli("fill", "--config", str(config), "--plan", str(plan), "--now", *extra)


# -- 1. a plan file that would remove every title ------------------------------------------


def test_an_empty_plan_document_removes_nothing(tmp_path: Path) -> None:
    config = _loaded(tmp_path, "film", "show")
    plan = tmp_path / "p.json"
    plan.write_text("{}")
    code, _, err = _fill_plan(config, plan)
    assert code != 0
    line = error_line(err)
    assert f"{plan}: not a valid fill plan: titles: missing" in line, line
    assert _held(config) == ["film", "show"]


def test_a_plan_listing_none_of_the_titles_held_is_refused(tmp_path: Path) -> None:
    config = _loaded(tmp_path, "film", "show")
    plan = tmp_path / "p.json"
    for body in ({"titles": []}, {"titles": [{"id": "other", "sources": ["http://127.0.0.1:9"]}]}):
        plan.write_text(json.dumps(body))
        code, out, err = _fill_plan(config, plan)
        assert code != 0 and out == ""
        line = error_line(err)
        assert "lists none of the 2 titles this appliance holds (film, show)" in line, line
        assert "--prune-all" in line
        assert _held(config) == ["film", "show"]


def test_prune_all_says_it_is_meant_and_a_partial_plan_prunes_as_before(tmp_path: Path) -> None:
    config = _loaded(tmp_path, "film", "show", "clip")
    plan = tmp_path / "p.json"
    # One title kept: the others go, as a plan's prune always did (no flag needed).
    plan.write_text(json.dumps({"titles": [{"id": "film", "sources": ["http://127.0.0.1:9"]}]}))
    code, _, err = _fill_plan(config, plan, "--json")
    assert code == 0, err
    assert _held(config) == ["film"]
    plan.write_text('{"titles": []}')
    code, out, err = _fill_plan(config, plan, "--json", "--prune-all")
    assert code == 0, err
    assert json.loads(out)["deleted"] == ["film"] and _held(config) == []


# -- 2. read commands make no index --------------------------------------------------------


# `ls` and `status` on a box with no index: an empty listing, the box's state, and no index
# made either (tests/appliance/test_cli_fresh_box.py).
@pytest.mark.parametrize(
    "args",
    [["verify"], ["reconcile"], ["rm", "--title", "film"]],
    ids=lambda a: " ".join(a),
)
def test_a_mistyped_index_is_one_line_and_nothing_is_made(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "d0").mkdir()
    index = tmp_path / "nonexistent" / "i2.sqlite"
    config = tmp_path / "nx2.toml"
    config.write_text(f'[storage]\ndisks = [{{ path = "{tmp_path}/d0" }}]\nindex = "{index}"\n')
    code, out, err = cli(*args, "--config", str(config))
    assert code == 1 and out == "", err
    assert error_line(err) == (
        f"error: no index at {index}: nothing loaded yet, or [storage] index is mistyped"
    )
    assert not index.parent.exists()
    assert list((tmp_path / "d0").iterdir()) == []  # no titles folder made either


def test_ls_in_an_empty_folder_makes_no_index_there(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        proc = run_cli(["appliance", "ls", "--json"], timeout=120)
    finally:
        os.chdir(cwd)
    assert (proc.returncode, proc.stdout) == (0, "[]\n"), proc.stderr  # a fresh box: no titles
    assert list(tmp_path.iterdir()) == []


def test_load_still_makes_the_index_and_ls_then_reads_it(tmp_path: Path) -> None:
    config = _loaded(tmp_path, "film")
    assert (tmp_path / "index.sqlite").is_file()
    assert _held(config) == ["film"]


# -- 3. status exit codes apart from usage and config errors ---------------------------------


def test_status_exit_codes_do_not_collide_with_errors(tmp_path: Path) -> None:
    assert set(EXIT_CODES.values()) == {0, 3, 4}
    code, _, err = cli("status", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and code not in EXIT_CODES.values(), err
    code, out, _ = cli("status", "--help")
    assert "3 degraded" in out and "4 failing" in out


def test_a_disk_out_of_service_is_degraded_with_exit_3(tmp_path: Path) -> None:
    config = _loaded(tmp_path, "film")
    text = config.read_text().replace(f'{{ path = "{tmp_path}/d1", tier = "ssd" }}',
                                      f'{{ path = "{tmp_path}/gone", tier = "ssd" }}')  # fmt: skip
    config.write_text(text)
    code, out, err = cli("status", "--config", str(config), "--json")
    state = json.loads(out)["health"]["state"]
    assert state in ("degraded", "failing"), out  # failing only on an overloaded machine
    assert code == {"degraded": 3, "failing": 4}[state], err


# -- 4. an empty --key ------------------------------------------------------------------------


def test_sign_with_an_empty_key_id_says_so(tmp_path: Path) -> None:
    secret = base64.b64encode(os.urandom(32)).decode()
    config = tmp_path / "appk.toml"
    config.write_text(f'[auth]\nkeys = [ {{ id = "k1", secret = "{secret}" }} ]\n')
    code, _, err = cli("sign", "--config", str(config), "--title", "bbb", "--key", "")
    line = error_line(err)
    assert code == 2 and "key id is empty" in line and "keys is empty" not in line, line
    code, _, err = cli("sign", "--config", str(config), "--title", "bbb", "--key", "k9")
    assert code == 2 and "no such key in [auth] keys" in error_line(err)
    code, out, err = cli("sign", "--config", str(config), "--title", "bbb", "--key", "k1")
    assert code == 0 and "/master.m3u8" in out, err


# -- 5. --cap-mbps nan ------------------------------------------------------------------------


@pytest.mark.parametrize("cap", ["nan", "inf", "-1", "1000000.5"])
def test_a_cap_that_is_no_finite_number_says_so(tmp_path: Path, cap: str) -> None:
    config = appliance_config(tmp_path)
    code, _, err = cli("fill", "--config", str(config), "--from", "http://127.0.0.1:9",
                       "--title", "clip", "--now", "--cap-mbps", cap)  # fmt: skip
    line = error_line(err)
    assert code == 2 and "--cap-mbps" in line and "finite number" in line, line
    assert "1000000" in line and not (tmp_path / "index.sqlite").exists()

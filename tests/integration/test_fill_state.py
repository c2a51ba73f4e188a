"""The fill's progress file (`[fill] staging/state.json`, read by `appliance status`) when
it cannot be written: the fill goes on and says so once, with no traceback and no stray
temporary file (a full disk: its temporary name points at /dev/full, which answers every
write with ENOSPC; a path taken by a folder fails every time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.serve_support import serving_origin
from tests.integration.test_fill import appliance_config, fill, listing, make_title


@pytest.mark.parametrize("how", ["disk_full", "path_taken"])
def test_an_unwritable_state_file_does_not_stop_the_fill(tmp_path: Path, how: str) -> None:
    store = tmp_path / "origin"
    make_title(store, "small", [200_000, 100_000], seed=31)
    (tmp_path / "app").mkdir()
    config = appliance_config(tmp_path / "app")
    staging = tmp_path / "app/staging"
    staging.mkdir()
    if how == "disk_full":
        (staging / "state.json.tmp").symlink_to("/dev/full")
    else:
        (staging / "state.json").mkdir()
    with serving_origin(store) as origin:
        proc = fill(config, "--from", origin.url, "--title", "small")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("fill.state_unwritable") == 1, proc.stderr
    assert json.loads(proc.stdout)["titles"]["small"]["state"] == "ready"
    assert listing(config)["small"]["state"] == "ready"
    tmp = staging / "state.json.tmp"
    assert not tmp.exists() and not tmp.is_symlink()

"""Two appliance indexes over one disk are refused (appliance/diskclaim.py), through the real
CLI and daemon: each would adopt the other's titles and sweep its loads in progress."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from appliance import diskclaim
from tests.appliance.storage_fixtures import make_title, storage_toml
from tests.conftest import run_cli


def appliance(*args: str) -> subprocess.CompletedProcess[str]:
    proc = run_cli(["appliance", *args], timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_a_second_index_over_the_same_disks_is_refused(tmp_path: Path) -> None:
    config = storage_toml(tmp_path)
    src = make_title(tmp_path / "src", "bunny")
    assert appliance("load", "--config", str(config), "--title", "bunny", "--from", str(src))
    index = tmp_path / "var" / "index.sqlite"
    for disk in ("ssd0", "hdd1"):
        marker = json.loads((tmp_path / disk / diskclaim.MARKER).read_text())
        assert marker == {"index": str(index)}

    # The same disks under another index: a copied config, a test pointed at real disks.
    other = tmp_path / "other.toml"
    other_index = tmp_path / "elsewhere" / "index.sqlite"
    other.write_text(config.read_text().replace(str(index), str(other_index)))
    src2 = make_title(tmp_path / "src2", "film")
    proc = appliance("load", "--config", str(other), "--title", "film", "--from", str(src2))
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert f"disk {tmp_path / 'ssd0'} holds the titles of the appliance index {index}" in line
    assert not other_index.exists(), "a refused command must create nothing"
    assert sorted(p.name for p in (tmp_path / "hdd1" / "titles").iterdir()) == ["bunny"]

    daemon = subprocess.run(
        [sys.executable, "-m", "edgeflix.cli", "appliance", "run", "--config", str(other)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert daemon.returncode != 0 and "holds the titles of the appliance index" in daemon.stderr
    assert "Traceback" not in daemon.stderr
    assert not other_index.exists()

    # The first index is fine, and moving it (config changed with it) keeps the disks.
    listing = appliance("ls", "--config", str(config), "--json")
    assert [t["id"] for t in json.loads(listing.stdout)] == ["bunny"]
    moved = tmp_path / "moved" / "index.sqlite"
    moved.parent.mkdir()
    index.rename(moved)
    moved_config = tmp_path / "moved.toml"
    moved_config.write_text(config.read_text().replace(str(index), str(moved)))
    listing = appliance("ls", "--config", str(moved_config), "--json")
    assert [t["id"] for t in json.loads(listing.stdout)] == ["bunny"]
    assert appliance("load", "--config", str(moved_config), "--title", "film", "--from", str(src2))
    marker = json.loads((tmp_path / "hdd1" / diskclaim.MARKER).read_text())
    assert marker == {"index": str(moved)}


def test_a_file_where_the_titles_folder_goes_is_one_line(tmp_path: Path) -> None:
    config = storage_toml(tmp_path)
    (tmp_path / "ssd0" / "titles").write_bytes(b"not a folder")
    src = make_title(tmp_path / "src", "bunny")
    proc = appliance("load", "--config", str(config), "--title", "bunny", "--from", str(src))
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert f"{tmp_path / 'ssd0' / 'titles'} is not a folder" in line

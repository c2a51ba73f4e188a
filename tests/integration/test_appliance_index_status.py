"""What the CLI says of an index the daemon cannot open, through real commands: `appliance
status` reports failing (exit 4) with the reason where `appliance run` refuses, and an index
on a full filesystem is named as such, by `status` and by the commands that open it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.appliance.storage_fixtures import make_title
from tests.integration.test_appliance_storage_audit import write_config
from tests.integration.test_appliance_store import cli, error_line


def status(config: Path) -> tuple[int, dict[str, object]]:
    code, out, err = cli("status", "--config", str(config), "--json")
    assert out, err
    health: dict[str, object] = json.loads(out)["health"]
    return code, health


def test_status_fails_on_an_index_run_refuses(tmp_path: Path) -> None:
    config = write_config(tmp_path, [(tmp_path / "hdd0", "hdd")])
    index = tmp_path / "var" / "index.sqlite"
    index.parent.mkdir(parents=True)
    index.write_bytes(b"this is no SQLite database, just bytes " * 200)
    code, _, err = cli("run", "--config", str(config))
    assert code == 1 and "index" in error_line(err)
    code, health = status(config)
    assert code == 4 and health["state"] == "failing", health
    reasons = health["reasons"]
    assert isinstance(reasons, list)
    assert reasons[0].startswith(f"cannot open the index {index}: file is not a database")
    assert "move it (and its -wal and -shm files) aside" in reasons[0]
    # The table says it too, and the index is left as it was.
    code, out, _ = cli("status", "--config", str(config))
    assert code == 4 and "failing" in out and "file is not a database" in out
    assert index.read_bytes().startswith(b"this is no SQLite")


def test_status_of_a_sound_index_says_nothing_of_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, [(tmp_path / "hdd0", "hdd")])
    src = make_title(tmp_path / "src", "film")
    assert cli("load", "--config", str(config), "--title", "film", "--from", str(src))[0] == 0
    _, health = status(config)
    assert not [r for r in health["reasons"] if "index" in r], health  # type: ignore[attr-defined]


def fill_up(folder: Path) -> Path:
    ballast = folder / "ballast"
    with ballast.open("wb") as out:
        try:
            for _ in range(200):  # 3 MiB fills in 48 of these
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return ballast


def test_an_index_on_a_full_filesystem_is_named_so(tmp_path: Path, small_fs: Path) -> None:
    config = write_config(tmp_path, [(tmp_path / "hdd0", "hdd")])
    config.write_text(config.read_text().replace(str(tmp_path / "var"), str(small_fs / "var")))
    index = small_fs / "var" / "index.sqlite"
    src = make_title(tmp_path / "src", "film")
    assert cli("load", "--config", str(config), "--title", "film", "--from", str(src))[0] == 0
    ballast = fill_up(small_fs)

    code, _, err = cli("ls", "--config", str(config))
    assert code == 1
    line = error_line(err)
    assert line.startswith(f"error: cannot open the index {index}: the filesystem holding the "
                           "index is full ("), line  # fmt: skip
    assert line.endswith(" bytes free)") and "disk I/O error" not in line, line
    code, health = status(config)
    assert code == 4 and health["state"] == "failing", health
    assert "the filesystem holding the index is full" in str(health["reasons"]), health

    ballast.unlink()
    code, out, err = cli("ls", "--config", str(config))
    assert code == 0 and "film" in out, err
    _, health = status(config)
    assert "index" not in str(health["reasons"]), health

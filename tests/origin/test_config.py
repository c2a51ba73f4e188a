"""The origin's TOML config: typed, bounded, unknown keys refused (origin/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeflix.errors import ConfigError
from origin import config, replaced


def test_defaults_without_a_file() -> None:
    cfg = config.load(None)
    assert cfg.encode.preset == "medium"
    assert cfg.publish.replaced_keep_s == replaced.KEEP_S


def test_the_replaced_keep_time_is_read_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "origin.toml"
    path.write_text("[publish]\nreplaced_keep_s = 0\n")
    assert config.load(path).publish.replaced_keep_s == 0
    for bad in ("-1", "1e9", "nan", '"long"'):
        path.write_text(f"[publish]\nreplaced_keep_s = {bad}\n")
        with pytest.raises(ConfigError, match="replaced_keep_s"):
            config.load(path)
    path.write_text("[publish]\nkeep = 1\n")
    with pytest.raises(ConfigError, match="keep"):
        config.load(path)

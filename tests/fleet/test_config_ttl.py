"""fleet.toml's steering token_ttl_s is bounded by the same MAX_TTL_S as `appliance sign`:
a longer lifetime would make URLs appliances refuse (or keep retired keys for ages)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeflix.errors import ConfigError
from edgeflix.tokens import MAX_TTL_S
from fleet.config import load


def write(tmp_path: Path, ttl: int) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(f"[steering]\ntoken_ttl_s = {ttl}\n")
    return path


@pytest.mark.parametrize("ttl", [MAX_TTL_S + 1, 999_999_999_999])
def test_a_token_ttl_past_the_bound_is_refused(tmp_path: Path, ttl: int) -> None:
    with pytest.raises(ConfigError, match="token_ttl_s"):
        load(write(tmp_path, ttl))


def test_the_bound_itself_loads(tmp_path: Path) -> None:
    assert load(write(tmp_path, MAX_TTL_S)).steering.token_ttl_s == MAX_TTL_S

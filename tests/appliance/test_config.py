"""The appliance's config values that parse as TOML but cannot work: refused at load in one
line naming the key, never a crash later in the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config as appliance_config
from edgeflix.errors import ConfigError


@pytest.mark.parametrize("value", ["inf", "nan", "1e12"])
def test_a_peer_wait_for_ever_is_refused_in_one_line(tmp_path: Path, value: str) -> None:
    """`peer_wait_s = inf` is valid TOML that reads as "for ever": it crashed the fill in
    round() or timedelta. No config takes inf or nan; waits are bounded to a day."""
    path = tmp_path / "appliance.toml"
    path.write_text(f"[fill]\npeer_wait_s = {value}\n")
    with pytest.raises(ConfigError) as refused:
        appliance_config.load(path)
    assert "peer_wait_s" in str(refused.value) and "\n" not in str(refused.value)

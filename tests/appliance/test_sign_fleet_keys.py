"""`edgeflix appliance sign` on a fleet-managed appliance ([auth] keys empty): it signs with
the key the fleet signs with now, from the key set its fleet link cached, so the URL is one
the appliance (and its peers) accept."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from appliance.fleetlink_keys import FleetKey
from appliance.fleetlink_state import LinkState
from edgeflix import tokens
from edgeflix.versioning import Versioned
from tests.appliance.storage_fixtures import storage_toml
from tests.conftest import run_cli
from tests.edgeflix.test_cli import one_error_line


def fleet_managed(tmp_path: Path) -> tuple[Path, Path]:
    config = storage_toml(tmp_path)
    state = tmp_path / "fleet-state"
    with config.open("a") as out:
        out.write(
            '[serve]\nlisten = "127.0.0.1:8081"\n[auth]\ntokens = "required"\n'
            f'[fleet]\nurl = "127.0.0.1:7070"\nstate_dir = "{state}"\n'
        )
    return config, state


def sign(config: Path, *extra: str) -> tuple[int, str, str]:
    proc = run_cli(["appliance", "sign", "--config", str(config), "--title", "bbb", "--json",
                    *extra], timeout=60)  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def test_sign_uses_the_key_the_fleet_signs_with_now(tmp_path: Path) -> None:
    config, state = fleet_managed(tmp_path)
    now = time.time()
    old = FleetKey("k1", b"o" * 32, now - 7200, now + 600, now + 4000)  # retires soon
    new = FleetKey("k2", b"n" * 32, now - 60, 0, 0, 4 * 3600)  # the one signing now
    ahead = FleetKey("k3", b"a" * 32, now + 3600, 0, 0, 4 * 3600)  # announced, not active
    LinkState(state).save_keys(Versioned("keys", 3, (old, new, ahead)))
    code, out, err = sign(config)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["key"] == "k2"
    token = doc["url"].split("/t/", 1)[1].split("/", 1)[0]
    secrets = {k.id: k.secret for k in (old, new, ahead)}
    tokens.verify(token, title_id="bbb", client_ip=None, keys=secrets, now=time.time())
    # --key picks a key the appliance still verifies with.
    code, out, err = sign(config, "--key", "k1")
    assert code == 0 and json.loads(out)["key"] == "k1", err


def test_sign_before_the_fleet_sent_keys_says_who_signs(tmp_path: Path) -> None:
    config, state = fleet_managed(tmp_path)
    code, out, err = sign(config)
    assert code == 2 and out == ""  # a ConfigError, as "[auth] keys is empty" was
    line = one_error_line(err)
    assert "no fleet keys are cached" in line and "edgeflix fleet steer" in line, line
    assert not state.exists()  # asked, not made


def test_sign_with_a_key_the_fleet_does_not_hold_is_one_line(tmp_path: Path) -> None:
    config, state = fleet_managed(tmp_path)
    now = time.time()
    gone = FleetKey("k1", b"o" * 32, now - 7200, now - 3600, now - 60)  # verifies no more
    LinkState(state).save_keys(Versioned("keys", 2, (gone, FleetKey("k2", b"n" * 32, now, 0, 0))))
    code, _, err = sign(config, "--key", "k1")
    assert code != 0
    assert "no such key in the fleet's keys" in one_error_line(err)


def test_a_ttl_beyond_what_the_fleet_verifies_the_key_for_is_refused(tmp_path: Path) -> None:
    """The fleet has a key verified until its retirement plus its longest token lifetime
    and the skew (fleet/keys.py verify_until); a URL expiring later dies early, at a key
    rotation. The fleet's key set says how long: a longer --ttl is one line naming it."""
    config, state = fleet_managed(tmp_path)
    now = time.time()
    old = FleetKey("k1", b"o" * 32, now - 7200, now - 60, now + 600, 660)  # retired
    new = FleetKey("k2", b"n" * 32, now - 60, 0, 0, 10.0)  # signing; 10 s once retired
    LinkState(state).save_keys(Versioned("keys", 3, (old, new)))
    code, out, err = sign(config, "--ttl", str(10 * 365 * 86_400))
    assert code == 2 and out == "", err
    line = one_error_line(err)
    assert "--ttl" in line and "key k2" in line and re.search(r"use --ttl (9|10) or less", line)
    code, out, err = sign(config, "--ttl", "8")
    assert code == 0 and json.loads(out)["key"] == "k2", err
    # A retired key: until its verify_until, exactly.
    code, out, err = sign(config, "--key", "k1", "--ttl", "3600")
    assert code == 2 and re.search(r"key k1 .* use --ttl (59\d|600) or less", err), err
    code, out, err = sign(config, "--key", "k1", "--ttl", "500")
    assert code == 0 and json.loads(out)["expires"] <= now + 600 + 1, err


def test_a_key_set_that_does_not_say_how_long_signs_with_a_warning(tmp_path: Path) -> None:
    """Keys cached from a fleet manager from before Key.verify_for_s: nothing to judge the
    --ttl by, so the URL is signed, and the warning says it may die at a rotation."""
    config, state = fleet_managed(tmp_path)
    LinkState(state).save_keys(Versioned("keys", 1, (FleetKey("k1", b"o" * 32, 0, 0, 0),)))
    code, out, err = sign(config, "--ttl", "86400")
    assert code == 0 and json.loads(out)["key"] == "k1", err
    assert "may stop working" in err

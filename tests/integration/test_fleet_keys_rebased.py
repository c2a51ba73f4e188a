"""`edgeflix fleet keys` on a real manager restored from its backup (`fleet backup`, a
rotation, `fleet restore`): once an appliance reports the key set made after the backup, the
manager's set is re-stamped above it (fleet/catchup.py), and the listing says so, in the
table and in --json, until the next rotation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc

from edgeflix.proto.gen import fleet_pb2_grpc
from tests.conftest import run_cli
from tests.fleet.test_dr_server import config, serve
from tests.integration.serve_support import Server
from tests.integration.test_fleet import ApplianceClient


def keys(fleet: Server, *args: str) -> str:
    argv = ["fleet", "keys", *args, "--fleet", fleet.urls["http"]]
    return run_cli(argv, check=True, timeout=60).stdout


def listing(fleet: Server) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(keys(fleet, "--json"))
    return doc


def reconnect(box: ApplianceClient, fleet: Server) -> None:
    box.channel.close()
    box.channel = grpc.insecure_channel(fleet.urls["grpc"])
    box.stub = fleet_pb2_grpc.FleetStub(box.channel)  # type: ignore[no-untyped-call]


def test_fleet_keys_shows_a_key_set_re_stamped_after_a_restore(tmp_path: Path) -> None:
    db = tmp_path / "fleet" / "fleet.sqlite"
    toml = config(tmp_path, db)
    fleet = serve(toml)
    box = ApplianceClient(fleet.urls["grpc"], "h1", "http://192.168.1.20:8081")
    try:
        token = run_cli(["fleet", "join-token", "--site", "home", "--fleet", fleet.urls["http"]],
                        check=True, timeout=60).stdout.split()[-1]  # fmt: skip
        box.enrol(token)
        box.beat({})
        before = listing(fleet)
        assert before["rebased"] is None and len(before["keys"]) == 1
        (k1,) = before["keys"]
        assert k1["signing"] and k1["verify_until"] is None and "secret" not in k1
        assert "rebased" not in keys(fleet)  # the table: no such line
        assert listing(fleet) == json.loads(keys(fleet, "ls", "--json"))

        run_cli(["fleet", "backup", str(tmp_path / "bk"), "--config", str(toml)], check=True)
        keys(fleet, "rotate", "--immediate")
        box.beat({})  # fetches the new set: it runs version 2 now
        assert box.keys_version == before["version"] + 1
        fleet.stop()
        run_cli(["fleet", "restore", str(tmp_path / "bk"), "--config", str(toml)], check=True)
        fleet = serve(toml)
        reconnect(box, fleet)
        restored_at = time.time()
        box.beat({})  # a key set this manager did not issue: it re-stamps its own above it

        after = listing(fleet)
        rebased = after["rebased"]
        assert rebased is not None, after
        assert after["version"] > box.keys_version - 1
        assert abs(rebased["at"] - restored_at) < 30, rebased
        ttl_and_skew = 4 * 3600 + 60  # the default [steering] token_ttl_s, and [keys] skew_s
        assert rebased["carried_until"] == rebased["at"] + ttl_and_skew
        assert rebased["note"].startswith("re-stamped after a restore from backup at "), rebased
        assert "keys made after the backup kept for verifying until about " in rebased["note"]
        signing = [k["id"] for k in after["keys"] if k["signing"]]
        assert signing == [after["keys"][-1]["id"]] and signing[0] != k1["id"]
        table = keys(fleet)
        assert f"rebased: {rebased['note']}" in " ".join(table.split()), table

        keys(fleet, "rotate")  # this manager's own rotation: no more a catch-up's set
        assert listing(fleet)["rebased"] is None
    finally:
        box.channel.close()
        fleet.stop()


def test_keys_options_before_a_sub_command_are_a_usage_error() -> None:
    proc = run_cli(["fleet", "keys", "--json", "rotate"], timeout=60)
    assert proc.returncode == 2 and "go after the sub-command" in proc.stderr, proc.stderr

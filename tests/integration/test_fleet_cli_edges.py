"""`edgeflix fleet` at its edges: a manager that cannot listen says why in one line of its
own, and `fleet show` prints the plan its help promises, as its --json does."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import run_cli
from tests.edgeflix.test_cli import one_error_line
from tests.integration import test_fleet
from tests.integration.serve_support import Server
from tests.integration.test_fleet import Agents, ApplianceClient, cli, wait_for

# test_fleet's manager and appliances, started anew for this module
config, fleet, boxes, agents = (
    test_fleet.config,
    test_fleet.fleet,
    test_fleet.boxes,
    test_fleet.agents,
)


def _serve_on(tmp_path: Path, grpc: str) -> str:
    toml = tmp_path / "fleet.toml"
    db = tmp_path / "fleet.sqlite"
    toml.write_text(f'[server]\ngrpc = "{grpc}"\nhttp = "127.0.0.1:0"\ndb = "{db}"\n')
    proc = run_cli(["fleet", "serve", "--config", str(toml)], timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert not db.exists()  # refused before anything was made
    return one_error_line(proc.stderr)  # gRPC's own "Failed to add port" line is not shown


def test_a_grpc_port_in_use_is_one_line_saying_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        line = _serve_on(tmp_path, address)
    assert line == f"error: cannot listen on {address}: Address already in use"


def test_a_grpc_address_of_no_interface_is_one_line_saying_so(tmp_path: Path) -> None:
    line = _serve_on(tmp_path, "192.0.2.1:7070")  # TEST-NET-1: no host has it
    assert line == "error: cannot listen on 192.0.2.1:7070: Cannot assign requested address"


def test_show_prints_the_plan_as_its_json_has_it(
    fleet: Server, boxes: dict[str, ApplianceClient], agents: Agents
) -> None:
    def planned() -> list[dict[str, object]]:
        cli(fleet, "plan", "--now")
        return cli(fleet, "show", "h1")["plan"]  # type: ignore[index,no-any-return]

    wait_for(lambda: planned(), 15)
    info = cli(fleet, "show", "h1")
    proc = run_cli(["fleet", "show", "h1", "--fleet", fleet.urls["http"]], check=True)
    lines = proc.stdout.splitlines()
    plan = info["plan"]  # type: ignore[index]
    assert f"plan: {len(plan)} titles" in lines
    rows = lines[lines.index(f"plan: {len(plan)} titles") + 1 :]
    assert rows[0].split("\t") == ["title", "tier", "GB", "source", "digest"]
    assert [r.split("\t") for r in rows[1:]] == [
        [p["title_id"], p["tier"], f"{p['size_bytes'] / 1e9:.2f}", p["source"], p["digest"]]
        for p in plan
    ]
    held = info["held"]  # type: ignore[index]
    assert f"held: {len(held)} titles" in lines

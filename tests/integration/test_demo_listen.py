"""`edgeflix demo --check` with the origin given as `:PORT` (an empty host, which listens on
loopback): the fleet's origin URL it writes is one the fleet accepts and a client dials,
where `http://:PORT` was refused and the demo stopped at the fleet's start."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli
from tests.integration.test_demo import free_port


def test_demo_check_with_an_origin_on_an_empty_host(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(5)]
    proc = run_cli(
        ["demo", "--var", str(tmp_path / "var"), "--check",
         "--origin-listen", f":{ports[0]}",
         "--appliance-listen", f"127.0.0.1:{ports[1]}",
         "--admin-listen", f"127.0.0.1:{ports[2]}",
         "--fleet-grpc", f"127.0.0.1:{ports[3]}",
         "--fleet-http", f"127.0.0.1:{ports[4]}"],
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    fleet_toml = (tmp_path / "var" / "fleet.toml").read_text()
    assert f'url = "http://127.0.0.1:{ports[0]}"' in fleet_toml
    assert f"origin:     http://127.0.0.1:{ports[0]}/titles/bbb/master.m3u8" in proc.stdout
    assert f"play:       http://127.0.0.1:{ports[1]}/t/" in proc.stdout

"""The fleet link's phase is part of the appliance's own health, where an operator looks:
/status and `edgeflix appliance status` (whose exit status monitoring reads). A real
`fleet serve` and `appliance run` on loopback: the fleet killed, the box is ok with a warning
within its grace period, then failing once it is over under `after_grace = "stop"` (token
URLs refused). A box whose [fleet] url answers no enrolment is degraded. A disk over its
max_bytes is degraded, and a disk path that is not UTF-8 is refused at load."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from tests.conftest import run_cli
from tests.integration.daemon_support import poll, write_config
from tests.integration.serve_support import Server, make_title, start
from tests.integration.test_fleet_appliances import free_port

FLEET_TOML = """
[server]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{db}"
[heartbeat]
interval_s = 1.0
[origin]
url = "http://127.0.0.1:9"
[[sites]]
name = "home"
prefixes = ["127.0.0.0/8"]
"""
# The beats are a second apart and the fleet is lost after three missed: the grace period
# then lasts two seconds more, long enough to be seen by a poll.
GRACE_S = 5


def fleet_section(url: str, token: str) -> str:
    return f"""
[auth]
tokens = "required"
[fleet]
url = "{url}"
join_token = "{token}"
grace_period_s = {GRACE_S}
after_grace = "stop"
"""


def launch(args: list[str], log: Path, want: tuple[str, ...]) -> Server:
    with log.open("ab") as err:
        try:
            return start(args, want, stderr=err)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {log.read_text()}") from None


def status_cli(config: Path, *extra: str) -> tuple[int, str]:
    proc = run_cli(["appliance", "status", "--config", str(config), *extra], timeout=60)
    assert proc.returncode in (0, 3, 4), proc.stderr
    return proc.returncode, proc.stdout


def phase(doc: dict[str, Any]) -> str:
    """The running link's phase (its own section of /status)."""
    return str(doc["daemon"]["fleet"]["phase"])


def fleet_notes(doc: dict[str, Any]) -> list[str]:
    health = doc["health"]
    return [r for r in health["reasons"] + health.get("warnings", []) if "fleet manager" in r]


def test_a_fleet_lost_past_its_grace_period_fails_the_box(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    fleet = launch(
        ["fleet", "serve", "--config", str(tmp_path / "fleet.toml")],
        tmp_path / "fleet.log",
        ("grpc", "http"),
    )
    try:
        made = run_cli(
            ["fleet", "join-token", "--site", "home", "--fleet", fleet.urls["http"], "--json"],
            check=True,
            timeout=60,
        )
        token = json.loads(made.stdout)["token"]
        (tmp_path / "d0").mkdir()
        config = write_config(
            tmp_path, fleet_section(fleet.urls["grpc"], token), disks=[tmp_path / "d0"]
        )
        box = launch(
            ["appliance", "run", "--config", str(config)], tmp_path / "box.log", ("admin",)
        )
        try:
            doc = poll(box, lambda d: phase(d) == "connected", 30)
            assert doc is not None, (tmp_path / "box.log").read_text()
            assert not fleet_notes(doc)

            os.kill(fleet.proc.pid, signal.SIGKILL)
            fleet.proc.wait(10)
            doc = poll(box, lambda d: phase(d) == "grace", 10, step=0.05)
            assert doc is not None
            assert [w for w in doc["health"].get("warnings", []) if "grace period over in" in w]
            assert not [r for r in doc["health"]["reasons"] if "fleet" in r]

            doc = poll(box, lambda d: phase(d) == "expired", GRACE_S + 10)
            assert doc is not None
            assert doc["health"]["state"] == "failing" and doc["capacity_bps"] == 0
            (reason,) = [r for r in doc["health"]["reasons"] if "grace period over" in r]
            assert "token URLs refused" in reason and fleet.urls["grpc"] in reason
            assert doc["fleet"]["phase"] == "expired"

            code, out = status_cli(config, "--json")
            cli = json.loads(out)
            assert code == 4 and cli["health"]["state"] == "failing"
            assert cli["fleet"]["phase"] == "expired" and cli["fleet"]["after_grace"] == "stop"
            assert [r for r in cli["health"]["reasons"] if "grace period over" in r]
            code, table = status_cli(config)
            assert code == 4 and "expired" in table and "grace period over" in table
        finally:
            box.stop()
    finally:
        fleet.stop()


def test_an_appliance_that_cannot_enrol_is_degraded(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there: as a fleet address mistyped
    (tmp_path / "d0").mkdir()
    config = write_config(
        tmp_path, fleet_section(f"127.0.0.1:{closed}", "some-token"), disks=[tmp_path / "d0"]
    )
    box = launch(["appliance", "run", "--config", str(config)], tmp_path / "box.log", ("admin",))
    try:
        doc = poll(box, lambda d: d["daemon"]["fleet"]["last_error"] is not None, 20)
        assert doc is not None and phase(doc) == "unenrolled"
        assert doc["health"]["state"] in ("degraded", "failing")
        (reason,) = [r for r in doc["health"]["reasons"] if "not enrolled" in r]
        assert f"127.0.0.1:{closed}" in reason and doc["fleet"]["phase"] == "unenrolled"
        code, out = status_cli(config, "--json")
        cli = json.loads(out)
        assert code in (3, 4) and cli["fleet"]["phase"] == "unenrolled"
        assert [r for r in cli["health"]["reasons"] if "not enrolled" in r]
    finally:
        box.stop()


def test_a_disk_over_its_max_bytes_is_degraded(tmp_path: Path) -> None:
    disk = tmp_path / "d0"
    disk.mkdir()

    def configured(max_bytes: int) -> Path:
        config = write_config(tmp_path, disks=[disk])
        text = config.read_text().replace('tier = "ssd"', f'tier = "ssd", max_bytes = {max_bytes}')
        config.write_text(text)
        return config

    config = configured(10_000_000)
    source = make_title(tmp_path / "src" / "film", "film")
    run_cli(
        ["appliance", "load", "--config", str(config), "--title", "film", "--from", str(source)],
        check=True,
    )
    held = sum(p.stat().st_size for p in (disk / "titles").rglob("*") if p.is_file())
    _, out = status_cli(config, "--json")
    (sample,) = json.loads(out)["metrics"]["disks"]
    assert sample["used_fraction"] == held / 10_000_000  # the store's bytes, not the filesystem's

    config = configured(held * 9 // 10)  # max_bytes lowered below what the disk holds
    code, out = status_cli(config, "--json")
    doc = json.loads(out)
    assert code in (3, 4) and doc["health"]["state"] != "ok"
    (sample,) = doc["metrics"]["disks"]
    assert sample["used_fraction"] > 1.1
    (reason,) = [r for r in doc["health"]["reasons"] if "over its max_bytes" in r]
    assert f"holds {held} of {held * 9 // 10} bytes" in reason


def test_a_disk_path_that_is_not_utf8_is_refused_with_one_line(tmp_path: Path) -> None:
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/d\xe9sk")
    proc = run_cli(
        ["appliance", "status"],
        env={"EDGEFLIX_APPLIANCE__STORAGE__DISKS": f'[{{ path = "{bad}" }}]'},
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "storage.disks.0.path" in line and "d\\xe9sk' is not UTF-8 text" in line

"""The database refusing writes outside the ticks, on real processes and a real ext4 disk
(a loop device filled to ENOSPC): an operator's change through the admin API, or an
enrolment, that fails for it shows on /healthz and /metrics as the ticks' own failed writes
do, until a write goes through; an unenrolled caller's failed Enrol says nothing of where
the database lives (the log does)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import httpx
import pytest

from edgeflix.proto import auth
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from fleet.grpc_api import ENROL_UNSAVED, FleetServicer
from fleet.service import FleetService
from fleet.ticker import TickHealth
from tests.conftest import run_cli
from tests.fleet.test_dr_server import config, events, fill_up, serve
from tests.fleet.test_exhaustion_fixes_beats import service
from tests.integration.realdisk_support import MakeDisks, real_disks
from tests.integration.test_fleet import ApplianceClient

__all__ = ["real_disks"]  # the fixture, imported for pytest to find


def join_token(http: str) -> tuple[int, str, str]:
    proc = run_cli(["fleet", "join-token", "--site", "home", "--fleet", http], timeout=60)
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def health_of(http: str) -> tuple[dict[str, str], str]:
    doc = httpx.get(f"{http}/healthz", timeout=10).json()
    writable = [
        ln for ln in httpx.get(f"{http}/metrics", timeout=10).text.splitlines()
        if ln.startswith("edgeflix_fleet_store_writable ")
    ]  # fmt: skip
    return doc, writable[0]


def test_an_admin_write_the_full_disk_refuses_shows_on_healthz_until_one_goes_through(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    (disk,) = real_disks(1)
    db = disk.mount / "fleet" / "fleet.sqlite"
    log = tmp_path / "manager.log"
    fleet = serve(config(tmp_path, db), log)
    try:
        http = fleet.urls["http"]
        assert join_token(http)[0] == 0
        assert health_of(http) == ({"status": "ok"}, "edgeflix_fleet_store_writable 1")
        junk = fill_up(disk.mount)
        # Join tokens until one fails (SQLite fills its -wal's room first); a handful.
        for _ in range(200):
            code, _, err = join_token(http)
            if code != 0:
                break
        assert code == 1 and "the fleet database is not writable now" in err, err
        doc, writable = health_of(http)
        # No appliance: the ticks plan nothing and write nothing, and said nothing of it.
        assert doc["status"] == "degraded", doc
        assert doc["reason"].startswith(f"writes to {db} fail: "), doc
        assert writable == "edgeflix_fleet_store_writable 0"
        (said,) = events(log, "fleet.store_write_failed")
        assert f"db={db}" in said and "/join-tokens" in said and "free space on" in said, said

        junk.unlink()  # room again: the operator's next change goes through, and says so
        assert join_token(http)[0] == 0
        assert health_of(http) == ({"status": "ok"}, "edgeflix_fleet_store_writable 1")
        assert len(events(log, "fleet.store_recovered")) == 1
    finally:
        fleet.stop()


def open_config(folder: Path, db: Path) -> Path:
    """Open enrolment (no join token to spend: each enrolment is the one write it makes)."""
    toml = config(folder, db)
    toml.write_text(toml.read_text().replace("[server]\n", '[server]\nenrolment = "open"\n'))
    return toml


def enrol_until_refused(grpc_url: str) -> grpc.RpcError:
    for i in range(300):  # SQLite fills the room left in its -wal first: a few enrolments
        box = ApplianceClient(grpc_url, f"b{i}", f"http://192.168.1.{i % 250 + 1}:8081")
        try:
            box.enrol("")
        except grpc.RpcError as exc:
            return exc
        finally:
            box.channel.close()
    raise AssertionError("every enrolment went through on a full disk")


def test_an_unenrolled_caller_is_not_told_where_the_database_is(
    tmp_path: Path, real_disks: MakeDisks
) -> None:
    (disk,) = real_disks(1)
    db = disk.mount / "fleet" / "fleet.sqlite"
    log = tmp_path / "manager.log"
    fleet = serve(open_config(tmp_path, db), log)
    try:
        fill_up(disk.mount)
        refused = enrol_until_refused(fleet.urls["grpc"])
        assert refused.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert refused.details() == ENROL_UNSAVED  # type: ignore[attr-defined]
        assert str(db) in log.read_text()  # the operator's log has it
        # ...and the manager's health says the store cannot be written.
        doc, writable = health_of(fleet.urls["http"])
        assert doc["status"] == "degraded", doc
        assert writable.endswith(" 0"), writable
    finally:
        fleet.stop()


def test_an_enrolment_the_full_disk_refuses_shows_in_the_managers_health(
    tmp_path: Path, real_disks: MakeDisks, caplog: pytest.LogCaptureFixture
) -> None:
    """FleetServicer reports to the TickHealth it is given (`fleet serve` gives its own:
    fleet/server.py), on a real gRPC server on loopback and a real full disk."""
    (disk,) = real_disks(1)
    svc = service(disk.mount)
    health = TickHealth(svc.store.path)
    with caplog.at_level(logging.INFO, logger="fleet"):
        asyncio.run(_enrol_on_a_full_disk(svc, health, disk.mount))
    said = [r for r in caplog.records if r.getMessage() == "fleet.store_write_failed"]
    assert len(said) == 1 and getattr(said[0], "edgeflix_fields", {})["write"] == "enrolment"


async def _enrol_on_a_full_disk(svc: FleetService, health: TickHealth, mount: Path) -> None:
    server = grpc.aio.server()
    servicer = FleetServicer(svc, health=health)
    fleet_pb2_grpc.add_FleetServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = fleet_pb2_grpc.FleetStub(channel)  # type: ignore[no-untyped-call]

            async def enrol(name: str) -> None:
                key = auth.public_key(auth.new_private_key())
                req = fleet_pb2.EnrolRequest(name=name, public_key=key, url="http://10.1.0.9:80")
                await stub.Enrol(req, timeout=10)

            await enrol("first")
            assert health.problem() is None
            junk = fill_up(mount)
            for i in range(300):
                try:
                    await enrol(f"b{i}")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    assert exc.details() == ENROL_UNSAVED
                    break
            else:
                raise AssertionError("every enrolment went through on a full disk")
            assert not health.store_writable()
            assert (health.problem() or "").startswith(f"writes to {svc.store.path} fail: ")
            junk.unlink()
            await enrol("after")  # room again: the next enrolment clears it
            assert health.store_writable() and health.problem() is None
    finally:
        await server.stop(None)

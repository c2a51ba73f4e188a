"""Secrets review, on a real `edgeflix fleet serve` on loopback: only the holder of an
appliance's key enrols it again (a replayed Enrol neither moves it nor gets a certificate in
its name), while real appliances still enrol again when they must; `fleet rm` says how to
retire the URL-signing keys the removed box still holds; `fleet serve` warns when gRPC
listens beyond loopback without TLS."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.config import ApplianceConfig
from appliance.fleetlink import FleetLink, LinkSinks
from appliance.fleetlink_figures import BoxHealth, Traffic
from appliance.index import connect_writer
from edgeflix.proto import auth
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from tests.conftest import run_cli
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import FLEET_TOML, ApplianceClient, cli, token
from tests.integration.test_fleet_link_recovery import Clock
from tests.integration.test_fleet_tls import _spki, write_tls_fleet_config

METHOD = "/edgeflix.fleet.v1.Fleet/"
HOME_URL = "http://127.0.0.31:8081"
ELSEWHERE = "http://127.0.0.66:8081"  # where a replayed Enrol would send v1's players


def serve(folder: Path, toml: str) -> Server:
    config = folder / "fleet.toml"
    config.write_text(toml)
    return start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))


@pytest.fixture(params=["token", "open"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    toml = FLEET_TOML.format(db=tmp_path / "fleet.sqlite")
    if request.param == "open":  # no join token at all: the key is the only proof
        toml = toml.replace("[server]\n", '[server]\nenrolment = "open"\n', 1)
    server = serve(tmp_path, toml)
    yield server
    server.stop()


@pytest.fixture
def token_fleet(tmp_path: Path) -> Iterator[Server]:
    server = serve(tmp_path, FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    yield server
    server.stop()


def signed(name: str, key: bytes, req: fleet_pb2.EnrolRequest) -> tuple[tuple[str, str], ...]:
    body = req.SerializeToString(deterministic=True)
    return auth.sign_call(name, key, METHOD + "Enrol", body, time.time())


def url_of(fleet: Server, name: str) -> str:
    return str(cli(fleet, "show", name)["url"])  # type: ignore[index]


def test_a_replayed_enrol_neither_moves_the_appliance_nor_is_accepted(fleet: Server) -> None:
    """The reviewer's replay: the spent join token (it stays in appliance.toml) and the
    appliance's public key (in any captured Enrol), another URL. It was accepted and the
    fleet sent v1's players there until v1's next beat; in open enrolment it needed no
    token at all. Now only an Enrol signed with v1's key is taken, and it moves nothing."""
    grpc_addr = fleet.urls["grpc"]
    victim = ApplianceClient(grpc_addr, "v1", HOME_URL)
    spent = "" if _open(fleet) else token(fleet, "home")
    victim.enrol(spent)
    victim.beat({})
    assert url_of(fleet, "v1") == HOME_URL
    replay = fleet_pb2.EnrolRequest(
        name="v1", join_token=spent, public_key=auth.public_key(victim.key), url=ELSEWHERE
    )
    other = ApplianceClient(grpc_addr, "ev1", "http://127.0.0.32:8081")
    other.enrol("" if _open(fleet) else token(fleet, "home"))
    stranger = auth.new_private_key()
    for metadata in (
        None,  # unsigned
        signed("ev1", other.key, replay),  # signed by another appliance, as itself
        signed("v1", stranger, replay),  # signed by a key v1 never had, in v1's name
    ):
        with pytest.raises(grpc.RpcError) as err:
            victim.stub.Enrol(replay, metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert "v1' is enrolled already" in (err.value.details() or "")
        assert url_of(fleet, "v1") == HOME_URL
    # v1 itself enrolling again (its reply was lost) is taken, with the same answer; where
    # it serves moves with its beats, as before.
    again = victim.stub.Enrol(replay, metadata=signed("v1", victim.key, replay), timeout=10)
    assert (again.appliance, again.site) == ("v1", "home")
    assert url_of(fleet, "v1") == HOME_URL
    victim.beat({}, url=ELSEWHERE)
    assert url_of(fleet, "v1") == ELSEWHERE


def _open(fleet: Server) -> bool:
    args = fleet.proc.args
    assert isinstance(args, list)
    return 'enrolment = "open"' in Path(args[-1]).read_text()


# -- the real appliance (appliance/fleetlink.py, in this process) -------------------------


def link(tmp: Path, fleet: Server, token: str, tls: Path | None = None) -> FleetLink:
    """Appliance a1's fleet link over `tmp` (its key and enrolment in `tmp/fleet`); with
    `tls`, the fleet's CA for a fleet running TLS."""
    connect_writer(tmp / "index.sqlite").close()
    fleet_section: dict[str, Any] = {
        "url": fleet.urls["grpc"],
        "join_token": token,
        "heartbeat_s": 0.5,
    }
    if tls is not None:
        fleet_section |= {"ca": str(tls), "enrol_url": fleet.urls["grpc-enrol"]}
    config = ApplianceConfig.model_validate(
        {
            "name": "a1",
            "storage": {"disks": [{"path": str(tmp / "d0")}], "index": str(tmp / "index.sqlite")},
            "fill": {"staging": str(tmp / "staging")},
            "fleet": fleet_section,
        }
    )
    sinks = LinkSinks(
        health=lambda: BoxHealth("ok", (), 1e9),
        traffic=lambda: Traffic({}, 0, 0),
        submit_plan=lambda plan: None,
        set_keys=lambda keys: None,
    )
    lk = FleetLink(config, "http://127.0.0.41:8081", sinks, clock=Clock())
    lk.restore()
    return lk


def beating(lk: FleetLink, rounds: int = 6) -> dict[str, Any]:
    """The link's state once it has beaten (bounded: `rounds` rounds)."""
    for _ in range(rounds):
        lk.step()
        if lk.state()["beats"] >= 1:
            break
    return lk.state()


def test_a_real_appliance_restarts_on_its_key_and_enrols_again_after_a_lost_reply(
    tmp_path: Path, token_fleet: Server
) -> None:
    fleet = token_fleet
    spent = token(fleet, "home")
    first = link(tmp_path, fleet, spent)
    assert beating(first)["beats"] >= 1
    first.stop()
    # A restart with its state kept: it beats on its enrolment, no Enrol.
    restarted = link(tmp_path, fleet, spent)
    restarted.step()
    assert restarted.state()["beats"] == 1, restarted.state()
    restarted.stop()
    # The fleet recorded it, but the box never kept the answer (lost reply, or a crash
    # before enrolment.json was written): it enrols again with its key and spent token.
    (tmp_path / "fleet" / "enrolment.json").unlink()
    lost = link(tmp_path, fleet, spent)
    assert lost.state()["appliance"] is None
    st = beating(lost)
    assert st["beats"] >= 1 and st["refused"] is None and st["phase"] == "connected", st
    assert st["appliance"] == "a1" and st["site"] == "home"
    lost.stop()


def test_a_box_whose_fleet_state_was_wiped_needs_rm_and_a_fresh_token(
    tmp_path: Path, token_fleet: Server
) -> None:
    """A new key under an enrolled name is refused whatever token it brings, until `fleet
    rm`; then its spent token is refused too, and a fresh one enrols it."""
    fleet = token_fleet
    spent = token(fleet, "home")
    first = link(tmp_path, fleet, spent)
    assert beating(first)["beats"] >= 1
    first.stop()
    shutil.rmtree(tmp_path / "fleet")  # its key, enrolment, plan and keys
    wiped = link(tmp_path, fleet, spent)
    fresh = token(fleet, "home")
    for tok in (spent, fresh):
        wiped.reconfigure(wiped.fleet.model_copy(update={"join_token": tok}))
        st = beating(wiped, 2)
        assert st["beats"] == 0 and "enrolled with another key" in (st["refused"] or ""), st
    run_cli(["fleet", "rm", "a1", "--fleet", fleet.urls["http"]], check=True, timeout=60)
    wiped.reconfigure(wiped.fleet.model_copy(update={"join_token": spent}))
    st = beating(wiped, 2)
    assert st["beats"] == 0 and "already used" in (st["refused"] or ""), st
    wiped.reconfigure(wiped.fleet.model_copy(update={"join_token": fresh}))
    st = beating(wiped)
    assert st["beats"] >= 1 and st["refused"] is None and st["phase"] == "connected", st
    wiped.stop()


# -- with TLS ------------------------------------------------------------------------------


@pytest.fixture
def tls_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, Path]]:
    top = tmp_path / "fleet-tls"
    top.mkdir()
    config = write_tls_fleet_config(top)
    fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http", "grpc-enrol"))
    # Its HTTP API is HTTPS under the fleet's CA: the CLI verifies it with this.
    monkeypatch.setenv("EDGEFLIX_FLEET_CA", str(top / "db" / "fleet-ca.pem"))
    try:
        yield fleet, top / "db" / "fleet-ca.pem"
    finally:
        fleet.stop()


def _cert_key(pem: bytes) -> bytes:
    """DER SubjectPublicKeyInfo of the key a certificate is for."""
    return (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_a_replayed_enrol_gets_no_certificate_for_another_tls_key(
    tls_fleet: tuple[Server, Path],
) -> None:
    """With TLS the replay got a client certificate in x1's name for the sender's TLS key:
    x1's identity on the mutual-TLS listener. Only x1's own signature gets one now (a new
    TLS key of its own, say)."""
    fleet, ca_path = tls_fleet
    ca = ca_path.read_bytes()
    with grpc.secure_channel(fleet.urls["grpc-enrol"], grpc.ssl_channel_credentials(ca)) as ch:
        stub = fleet_pb2_grpc.FleetStub(ch)
        signing = auth.new_private_key()
        spent = token(fleet, "home")
        first = fleet_pb2.EnrolRequest(
            name="x1",
            join_token=spent,
            public_key=auth.public_key(signing),
            url=HOME_URL,
            tls_public_key=_spki(ec.generate_private_key(ec.SECP256R1())),
        )
        assert stub.Enrol(first, timeout=10).client_cert_pem
        theirs = _spki(ec.generate_private_key(ec.SECP256R1()))
        replay = fleet_pb2.EnrolRequest(
            name="x1",
            join_token=spent,
            public_key=auth.public_key(signing),
            url=ELSEWHERE,
            tls_public_key=theirs,
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.Enrol(replay, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert url_of(fleet, "x1") == HOME_URL
        # x1 itself, with a new TLS key: a certificate for that key.
        mine = _spki(ec.generate_private_key(ec.SECP256R1()))
        rekey = fleet_pb2.EnrolRequest(
            name="x1",
            join_token=spent,
            public_key=auth.public_key(signing),
            url=HOME_URL,
            tls_public_key=mine,
        )
        resp = stub.Enrol(rekey, metadata=signed("x1", signing, rekey), timeout=10)
        assert _cert_key(resp.client_cert_pem) == mine


def test_a_real_appliance_that_lost_its_client_certificate_enrols_again(
    tmp_path: Path, tls_fleet: tuple[Server, Path]
) -> None:
    """Its beats on the enrolment listener are refused (no certificate): it enrols again,
    signed, gets a certificate for its TLS key and beats over mutual TLS."""
    fleet, ca = tls_fleet
    spent = token(fleet, "home")
    box = tmp_path / "box"
    box.mkdir()
    first = link(box, fleet, spent, tls=ca)
    assert beating(first)["beats"] >= 1
    first.stop()
    (box / "fleet" / "tls.crt").unlink()
    again = link(box, fleet, spent, tls=ca)
    st = beating(again, 8)
    assert st["beats"] >= 1 and st["refused"] is None and st["phase"] == "connected", st
    assert (box / "fleet" / "tls.crt").exists()
    again.stop()


# -- `fleet rm` and the keys the box holds ------------------------------------------------


def test_fleet_rm_says_how_to_retire_the_keys_the_box_still_holds(token_fleet: Server) -> None:
    fleet = token_fleet
    http = fleet.urls["http"]
    for name in ("gone1", "gone2"):
        box = ApplianceClient(fleet.urls["grpc"], name, HOME_URL)
        box.enrol(token(fleet, "home"))
        box.keys()  # it holds the fleet's URL-signing keys now
    out = run_cli(["fleet", "rm", "gone1", "--fleet", http], check=True, timeout=60)
    assert out.stdout == "gone1: removed\n"
    assert "warning: gone1 still holds the fleet's URL-signing keys" in out.stderr
    said = " ".join(out.stderr.split())
    assert "`edgeflix fleet keys rotate`" in said
    assert "`edgeflix fleet keys revoke KEY_ID`" in said
    doc = json.loads(
        run_cli(["fleet", "rm", "gone2", "--fleet", http, "--json"], check=True).stdout
    )
    assert doc["name"] == "gone2" and doc["removed"] is True
    assert "`edgeflix fleet keys rotate`" in doc["advice"]
    # Nothing removed: no advice, one line of error.
    failed = run_cli(["fleet", "rm", "gone1", "--fleet", http], timeout=60)
    assert failed.returncode == 1
    assert "keys" not in failed.stderr and len(failed.stderr.strip().splitlines()) == 1


# -- `fleet serve` with gRPC in clear beyond loopback --------------------------------------


def _log_of_a_start(tmp_path: Path, grpc_listen: str) -> str:
    """`fleet serve` started with gRPC on `grpc_listen` and stopped; its log. Nothing is ever
    sent to the gRPC listener: the warning is read from the log alone."""
    folder = tmp_path / grpc_listen.replace(":", "_").replace(".", "_")
    folder.mkdir()
    config = folder / "fleet.toml"
    config.write_text(
        FLEET_TOML.format(db=folder / "fleet.sqlite").replace(
            'grpc = "127.0.0.1:0"', f'grpc = "{grpc_listen}"', 1
        )
    )
    log = folder / "log"
    with log.open("wb") as err:
        server = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=err)
    assert server.stop() == 0
    return log.read_text()


def test_fleet_serve_warns_once_when_grpc_is_in_clear_beyond_loopback(tmp_path: Path) -> None:
    """All interfaces, TLS off: key secrets (GetKeys) and join tokens (Enrol) cross the
    network unencrypted. Said once, with the settings that turn TLS on; it still starts."""
    log = _log_of_a_start(tmp_path, "0.0.0.0:0")
    warned = [line for line in log.splitlines() if "fleet.grpc_in_clear" in line]
    assert len(warned) == 1, log
    assert "level=warning" in warned[0] or '"level": "warning"' in warned[0]
    for words in ("unencrypted", "[server] tls = true", "[server] enrol_grpc", "[fleet] ca"):
        assert words in warned[0], words
    assert "fleet.grpc_in_clear" not in _log_of_a_start(tmp_path, "127.0.0.1:0")

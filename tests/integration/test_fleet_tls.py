"""A fleet with `[server] tls = true` on loopback: a real appliance enrols over the TLS
enrolment listener with the operator-copied CA, then beats over mutual TLS and is steered to;
plaintext, foreign-CA and wrong-name clients are refused."""

from __future__ import annotations

import datetime as dt
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeflix.proto import auth
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from tests.conftest import run_cli
from tests.integration.serve_support import Server, make_title, start
from tests.integration.test_fleet_appliances import appliance_toml, free_port, launch, wait_for

METHOD = "/edgeflix.fleet.v1.Fleet/"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_tls_fleet_config(top: Path) -> Path:
    """A TLS fleet on loopback ports of its own, its database (and CA) under `top`."""
    config = top / "fleet.toml"
    config.write_text(f"""
[server]
grpc = "127.0.0.1:0"
enrol_grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
db = "{top}/db/fleet.sqlite"
tls = true
[heartbeat]
interval_s = 0.5
[origin]
url = "http://127.0.0.1:9"
[[sites]]
name = "home"
prefixes = ["192.168.1.0/24"]
""")
    return config


@pytest.fixture(scope="module")
def tls_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    top = tmp_path_factory.mktemp("fleet-tls")
    config = write_tls_fleet_config(top)
    fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http", "grpc-enrol"))
    try:
        with pytest.MonkeyPatch.context() as env:
            # Its HTTP API is HTTPS under the fleet's CA: the CLI verifies it with this.
            env.setenv("EDGEFLIX_FLEET_CA", str(top / "db" / "fleet-ca.pem"))
            yield fleet, top
    finally:
        fleet.stop()


def fleet_cli(fleet: Server, *args: str) -> object:
    out = run_cli(["fleet", *args, "--fleet", fleet.urls["http"], "--json"], check=True)
    return json.loads(out.stdout)


def test_appliance_enrols_and_beats_over_tls(tls_fleet: tuple[Server, Path]) -> None:
    fleet, top = tls_fleet
    ca = top / "db" / "fleet-ca.pem"
    assert stat.S_IMODE((top / "db" / "fleet-ca.key").stat().st_mode) == 0o600
    make_title(top / "film", "film")
    token = fleet_cli(fleet, "join-token", "--site", "home")["token"]  # type: ignore[index]
    root = top / "t1"
    cfg = appliance_toml(root, "t1", fleet.urls["grpc"], token)
    with cfg.open("a") as f:
        f.write(f'ca = "{ca}"\nenrol_url = "{fleet.urls["grpc-enrol"]}"\n')
    run_cli(
        ["appliance", "load", "--title", "film", "--from", str(top / "film"), "--config", str(cfg)],
        check=True,
    )
    box = launch(["appliance", "run", "--config", str(cfg)], root / "log.jsonl")
    try:

        def steered() -> bool:
            doc = fleet_cli(fleet, "steer", "--client-ip", "192.168.1.5", "--title", "film")
            return any(c["name"] == "t1" for c in doc["candidates"])  # type: ignore[index]

        wait_for(steered, 30, "t1 steered to after enrolling over TLS")
        assert (root / "fleet" / "tls.crt").exists()
        listed = fleet_cli(fleet, "ls")
        assert [(a["name"], a["site"]) for a in listed] == [("t1", "home")]  # type: ignore[index, union-attr]
    finally:
        box.stop()


def _foreign_identity(name: str) -> tuple[bytes, bytes]:
    """A key and a self-signed certificate the fleet's CA never issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = time.time()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - 300, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + 3600, dt.UTC))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def test_plaintext_foreign_and_wrong_name_clients_are_refused(
    tls_fleet: tuple[Server, Path],
) -> None:
    fleet, top = tls_fleet
    ca = (top / "db" / "fleet-ca.pem").read_bytes()
    enrol = grpc.secure_channel(fleet.urls["grpc-enrol"], grpc.ssl_channel_credentials(ca))
    stub = fleet_pb2_grpc.FleetStub(enrol)

    def enrol_as(name: str) -> tuple[bytes, ec.EllipticCurvePrivateKey, bytes]:
        signing, tls_key = auth.new_private_key(), ec.generate_private_key(ec.SECP256R1())
        token = fleet_cli(fleet, "join-token", "--site", "home")["token"]  # type: ignore[index]
        req = fleet_pb2.EnrolRequest(
            name=name,
            join_token=token,
            public_key=auth.public_key(signing),
            url=f"http://127.0.0.77:{free_port()}",
            tls_public_key=_spki(tls_key),
        )
        resp = stub.Enrol(req, timeout=10)
        assert resp.ca_cert_pem == ca
        return signing, tls_key, resp.client_cert_pem

    # Without a TLS key the fleet refuses before spending the token.
    token = fleet_cli(fleet, "join-token", "--site", "home")["token"]  # type: ignore[index]
    bare = fleet_pb2.EnrolRequest(name="x0", join_token=token, public_key=b"k" * 32)
    with pytest.raises(grpc.RpcError) as err:
        stub.Enrol(bare, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A name no certificate can carry is a bad argument, not an internal error.
    for name in ("n" * 65, "ü", "a b"):
        with pytest.raises(grpc.RpcError) as err:
            enrol_as(name)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "appliance name" in (err.value.details() or "")

    x1_sign, x1_tls, x1_cert = enrol_as("x1")
    x2_sign, _, _ = enrol_as("x2")

    def beat(channel: grpc.Channel, name: str, signing: bytes) -> fleet_pb2.HeartbeatResponse:
        req = fleet_pb2.HeartbeatRequest(appliance=name, sequence=1, health=1, capacity_bps=1e9)
        body = req.SerializeToString(deterministic=True)
        md = auth.sign_call(name, signing, METHOD + "Heartbeat", body, time.time())
        return fleet_pb2_grpc.FleetStub(channel).Heartbeat(req, metadata=md, timeout=10)

    mtls = grpc.ssl_channel_credentials(ca, _key_pem(x1_tls), x1_cert)
    with grpc.secure_channel(fleet.urls["grpc"], mtls) as ch:
        assert beat(ch, "x1", x1_sign).heartbeat_interval_ms == 500
        # x1's certificate does not make x2's signed call good.
        with pytest.raises(grpc.RpcError) as err:
            beat(ch, "x2", x2_sign)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A signed call without a client certificate (the enrolment listener) is refused.
    with pytest.raises(grpc.RpcError) as err:
        beat(enrol, "x1", x1_sign)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    enrol.close()
    # Plaintext, and a certificate from another CA, never get past the handshake.
    foreign = grpc.ssl_channel_credentials(ca, *_foreign_identity("x1"))
    for channel in (
        grpc.insecure_channel(fleet.urls["grpc"]),
        grpc.secure_channel(fleet.urls["grpc"], foreign),
    ):
        with channel, pytest.raises(grpc.RpcError) as err:
            beat(channel, "x1", x1_sign)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

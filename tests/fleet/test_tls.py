"""fleet/tls.py: the CA is made once and kept 0600, certificates name what they should and
chain to it, and a key grpc cannot use is refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pydantic import ValidationError

from fleet.config import ServerConfig
from fleet.errors import FleetInputError
from fleet.tls import CertAuthority, listener_hosts


def _spki(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_ca_is_created_once_and_kept_private(tmp_path: Path) -> None:
    first = CertAuthority.load_or_create(tmp_path / "db")
    again = CertAuthority.load_or_create(tmp_path / "db")
    assert first.ca_pem == again.ca_pem
    # The key is secret; the certificate is public (the CLI's users read it).
    assert stat.S_IMODE((tmp_path / "db" / "fleet-ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "db" / "fleet-ca.pem").stat().st_mode) == 0o644


def test_certificates_name_their_holder_and_chain_to_the_ca(tmp_path: Path) -> None:
    ca = CertAuthority.load_or_create(tmp_path)
    client = x509.load_pem_x509_certificate(
        ca.client_cert("box-1", _spki(ec.generate_private_key(ec.SECP256R1())))
    )
    client.verify_directly_issued_by(ca.cert)
    assert client.subject.rfc4514_string() == "CN=box-1"
    san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["box-1"]
    server = x509.load_pem_x509_certificate(
        ca.server_identity(listener_hosts(["127.0.0.1", "fleet.lan"], ())).cert_pem
    )
    server.verify_directly_issued_by(ca.cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["fleet.lan"]


def test_keys_grpc_cannot_use_are_refused(tmp_path: Path) -> None:
    ca = CertAuthority.load_or_create(tmp_path)
    with pytest.raises(FleetInputError):
        ca.client_cert("box", _spki(ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(FleetInputError):
        ca.client_cert("box", b"not a key")


def test_tls_needs_an_enrolment_listener() -> None:
    with pytest.raises(ValidationError, match="enrol_grpc"):
        ServerConfig(tls=True)
    assert ServerConfig(tls=True, enrol_grpc="127.0.0.1:0").tls


@pytest.mark.parametrize(
    "wildcard", ["0.0.0.0", "::", "0:0:0:0:0:0:0:0", "0::0", "::ffff:0.0.0.0", "0"]
)
def test_every_spelling_of_a_wildcard_listener_stands_for_this_machine(wildcard: str) -> None:
    hosts = listener_hosts([wildcard], ())
    assert wildcard not in hosts  # no client dials it: a useless SAN
    assert {"localhost", "127.0.0.1", "::1"} <= set(hosts)

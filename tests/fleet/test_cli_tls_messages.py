"""The pure choices behind the fleet CLI's TLS lines (fleet/cli.py) and the manager's
`http_tls` setting (fleet/config.py, fleet/server.py): which host keeps a token on this
machine, which advice an OpenSSL verify code gets, what an unreadable CA file is told (and
that fleet-ca.pem is readable: fleet/tls.py), and when a plain HTTP listener is warned of.
The real processes: tests/integration/test_fleet_https.py."""

from __future__ import annotations

import errno
import ssl
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleet.client import ENV_CA, ca_file_line, tls_failure_line, token_stays_local
from fleet.config import ServerConfig
from fleet.server import http_in_clear
from fleet.tls import CertAuthority

SHOWN = "https://fleet.lan:7080"
TLS = {"tls": True, "enrol_grpc": "127.0.0.1:7071"}


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("LocalHost.", True),
        # Loopback too, but checked like any other host: the check is cheap.
        ("127.0.0.2", False),
        ("::ffff:127.0.0.1", False),
        ("fleet.lan", False),
        ("192.0.2.1", False),
        ("localhost.example", False),
        ("", False),
        (None, False),
    ],
)
def test_only_this_machines_usual_names_keep_the_token_local(host: str | None, local: bool) -> None:
    assert token_stays_local(host) is local


def test_a_hostname_mismatch_and_an_address_mismatch_point_to_tls_names() -> None:
    for code, what in ((62, "host"), (64, "address")):
        line = tls_failure_line(SHOWN, code, "mismatch", "/ca.pem", token_in_clear=False)
        assert f"does not name that {what}" in line and "[server] tls_names" in line, line
        assert f"set ${ENV_CA}" not in line, line


def test_an_expired_certificate_says_restart_or_check_the_clock() -> None:
    line = tls_failure_line(SHOWN, 10, "certificate has expired", "/ca.pem", False)
    assert "expired" in line and "restart it" in line and "clock" in line, line
    assert f"set ${ENV_CA}" not in line, line
    line = tls_failure_line(SHOWN, 9, "certificate is not yet valid", "/ca.pem", False)
    assert "clock" in line and f"set ${ENV_CA}" not in line, line


def test_any_other_verify_failure_names_the_ca_variable() -> None:
    why = "unable to get local issuer certificate"
    line = tls_failure_line(SHOWN, 20, why, "", False)
    assert f"set ${ENV_CA}" in line and why in line and "against" not in line, line
    line = tls_failure_line(SHOWN, 20, why, "/other.pem", False)
    assert f"against ${ENV_CA} (/other.pem)" in line, line


def test_a_plain_answer_to_tls_advises_http_only_without_a_token_in_clear() -> None:
    line = tls_failure_line(SHOWN, None, "wrong version number", "", token_in_clear=False)
    assert "use http://fleet.lan:7080" in line, line
    line = tls_failure_line(SHOWN, None, "wrong version number", "", token_in_clear=True)
    assert "use http://" not in line, line
    assert "does not speak TLS there" in line and "cross the network in clear" in line, line
    assert "man in the middle" in line, line


def test_an_unreadable_ca_file_is_told_to_copy_the_public_fleet_ca() -> None:
    for code in (errno.EACCES, errno.EPERM):
        line = ca_file_line("/srv/db/fleet-ca.pem", OSError(code, "Permission denied"))
        assert "(Permission denied)" in line and "/srv/db/fleet-ca.pem" in line, line
        assert "copy the manager's fleet-ca.pem (it is public)" in line, line
        assert "/etc/edgeflix/" in line, line
    line = ca_file_line("/nope.pem", OSError(errno.ENOENT, "No such file or directory"))
    assert line.endswith("(No such file or directory)") and "copy" not in line, line
    # An SSLError's errno is OpenSSL's, whatever number it happens to be.
    line = ca_file_line("/x.toml", ssl.SSLError(errno.EACCES, "no certificate"))
    assert line.endswith("(no PEM certificate in it)"), line


@pytest.mark.parametrize(
    ("given", "https"),
    [
        ({}, False),
        (TLS, True),
        ({**TLS, "http_tls": False}, False),
        ({**TLS, "http_tls": True}, True),
    ],
)
def test_http_tls_follows_tls_unless_told(given: dict[str, object], https: bool) -> None:
    assert ServerConfig.model_validate(given).https is https


def test_http_tls_without_tls_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"needs server\.tls"):
        ServerConfig.model_validate({"http_tls": True})
    assert ServerConfig.model_validate({"http_tls": False}).https is False


@pytest.mark.parametrize(
    ("given", "addresses", "warned"),
    [
        ({**TLS, "http_tls": False}, ["0.0.0.0"], True),
        ({**TLS, "http_tls": False}, ["192.0.2.1"], True),
        ({**TLS, "http_tls": False, "admin": "token"}, ["192.0.2.1"], True),
        ({**TLS, "http_tls": False}, ["127.0.0.1"], False),
        ({**TLS, "http_tls": False}, ["::1"], False),
        ({**TLS, "http_tls": False}, None, True),  # does not resolve: said rather than not
        (TLS, ["0.0.0.0"], False),  # HTTPS
        ({}, ["0.0.0.0"], False),  # tls off: grpc_in_clear asks for tls, which covers HTTP
    ],
)
def test_a_plain_http_listener_beyond_loopback_with_tls_on_is_in_clear(
    given: dict[str, object], addresses: list[str] | None, warned: bool
) -> None:
    def resolve(host: str) -> list[str]:
        if addresses is None:
            raise OSError("no such host")
        return addresses

    server = ServerConfig.model_validate({**given, "http": "fleet.lan:7080"})
    assert http_in_clear(server, resolve) is warned


def test_the_ca_certificate_is_public_and_an_older_private_one_is_widened(tmp_path: Path) -> None:
    def mode(name: str) -> int:
        return stat.S_IMODE((tmp_path / name).stat().st_mode)

    CertAuthority.load_or_create(tmp_path)
    assert (mode("fleet-ca.pem"), mode("fleet-ca.key")) == (0o644, 0o600)
    (tmp_path / "fleet-ca.pem").chmod(0o600)  # as earlier versions wrote it
    CertAuthority.load_or_create(tmp_path)
    assert (mode("fleet-ca.pem"), mode("fleet-ca.key")) == (0o644, 0o600)
    (tmp_path / "fleet-ca.pem").chmod(0o640)  # the operator's choice: left as it is
    CertAuthority.load_or_create(tmp_path)
    assert mode("fleet-ca.pem") == 0o640

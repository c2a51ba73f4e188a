"""A fleet with `[server] tls = true` serves its HTTP API (the admin token, signed /steer URLs)
as HTTPS only, under the fleet's CA: the CLI verifies it against $EDGEFLIX_FLEET_CA, says in
one line which variable to set when it cannot, and plain HTTP gets no answer at all."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration.serve_support import Server, raw, start
from tests.integration.test_fleet_tls import _foreign_identity

CA_ENV = "EDGEFLIX_FLEET_CA"
TOKEN_ENV = "EDGEFLIX_FLEET_TOKEN"


@pytest.fixture(scope="module")
def https_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """The manager and its database folder. HTTP on another loopback address than gRPC:
    the certificate must name the HTTP listener's host, not only the gRPC ones."""
    top = tmp_path_factory.mktemp("fleet-https")
    config = top / "fleet.toml"
    config.write_text(f"""
[server]
grpc = "127.0.0.1:0"
enrol_grpc = "127.0.0.1:0"
http = "127.0.0.2:0"
db = "{top}/db/fleet.sqlite"
tls = true
admin = "token"
[origin]
url = "http://127.0.0.1:9"
""")
    with (top / "fleet.log").open("wb") as log:
        fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=log)
    try:
        yield fleet, top / "db"
    finally:
        fleet.stop()


def _https(fleet: Server) -> str:
    """The HTTP listener's URL with https://, whatever scheme the manager printed."""
    return "https://" + fleet.urls["http"].partition("://")[2]


def _ls(url: str, ca: str, token: str) -> subprocess.CompletedProcess[str]:
    """`edgeflix fleet ls --json` at `url`; an empty variable counts as unset."""
    env = {"EDGEFLIX_FLEET": url, CA_ENV: ca, TOKEN_ENV: token}
    return run_cli(["fleet", "ls", "--json"], env=env, timeout=60)


def _one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_the_cli_reaches_the_manager_over_https_with_the_fleet_ca(
    https_fleet: tuple[Server, Path],
) -> None:
    fleet, db = https_fleet
    assert fleet.urls["http"].startswith("https://127.0.0.2:")
    token = (db / "admin-token").read_text().strip()
    out = _ls(fleet.urls["http"], str(db / "fleet-ca.pem"), token)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    for name in ("fleet-http.key", "fleet-http.pem"):
        assert stat.S_IMODE((db / name).stat().st_mode) == 0o600, name
    log = (db.parent / "fleet.log").read_text()
    assert "event=fleet.started" in log and "http_scheme=https" in log


def test_a_manager_the_cli_cannot_verify_is_one_line_naming_the_variable(
    https_fleet: tuple[Server, Path],
) -> None:
    fleet, db = https_fleet
    token = (db / "admin-token").read_text().strip()
    # No CA given: httpx's default trust store knows no fleet's own CA.
    line = _one_line_error(_ls(_https(fleet), "", token))
    assert CA_ENV in line and "fleet-ca.pem" in line, line
    # Another CA than the manager's.
    other = db.parent / "other-ca.pem"
    other.write_bytes(_foreign_identity("other")[1])
    line = _one_line_error(_ls(_https(fleet), str(other), token))
    assert CA_ENV in line and str(other) in line, line


def test_plain_http_gets_no_answer_from_the_https_listener(
    https_fleet: tuple[Server, Path],
) -> None:
    fleet, db = https_fleet
    token = (db / "admin-token").read_text().strip()
    host, _, port = _https(fleet).partition("://")[2].rpartition(":")
    request = (
        f"GET /appliances HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    reply = raw((host, int(port)), request)
    assert b"HTTP/1." not in reply and b"[" not in reply, reply[:200]
    # The CLI given http:// says to use https:// (and the CA).
    plain = "http://" + _https(fleet).partition("://")[2]
    line = _one_line_error(_ls(plain, "", token))
    assert _https(fleet) in line and CA_ENV in line, line


def test_the_admin_token_is_asked_for_over_https(https_fleet: tuple[Server, Path]) -> None:
    fleet, db = https_fleet
    ca = str(db / "fleet-ca.pem")
    line = _one_line_error(_ls(_https(fleet), ca, ""))
    assert "needs a token" in line and "HTTP 401" in line, line
    line = _one_line_error(_ls(_https(fleet), ca, "not-the-token"))
    assert "admin token refused" in line and "HTTP 401" in line, line

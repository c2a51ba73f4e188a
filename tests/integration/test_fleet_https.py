"""A fleet with `[server] tls = true` serves its HTTP API (the admin token, signed /steer URLs)
as HTTPS only, under the fleet's CA: the CLI verifies it against $EDGEFLIX_FLEET_CA, says in
one line which variable to set when it cannot, and plain HTTP gets no answer at all. The CLI
sends no admin token in clear to a manager that serves HTTPS, nor advises http:// with one;
`http_tls = false` keeps HTTP plain; fleet-ca.pem is public, and other users are told to copy
it when they cannot read it where the manager keeps it.

127.0.0.2 and 127.0.0.3 stand for other machines: the CLI counts only 127.0.0.1, ::1 and
localhost as its own (fleet/client.py `token_stays_local`). A relay there keeps every byte the
CLI sent, i.e. what would have crossed the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

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


# -- the CLI and a manager "on another machine" (127.0.0.2/3: see the module's docstring) --


class Relay:
    """A TCP relay from 127.0.0.3 to `target`, keeping every byte the client sent."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._sent = bytearray()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.3", 0))
        self._listener.settimeout(0.2)
        host, port = self._listener.getsockname()[:2]
        self.hostport = f"{host}:{port}"
        self._stop = threading.Event()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def sent(self) -> bytes:
        with self._lock:
            return bytes(self._sent)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target, timeout=10)
            client.settimeout(10)
            with self._lock:
                self._socks += [client, upstream]
            for src, dst, keep in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, keep), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, keep: bool) -> None:
        with contextlib.suppress(OSError):  # either side gone, or a 10 s silence: done
            while data := src.recv(65536):
                if keep:
                    with self._lock:
                        self._sent += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._listener.close()
        self._accepting.join(5)
        with self._lock:
            for sock in self._socks:
                sock.close()


def _hostport(url: str) -> tuple[str, int]:
    host, _, port = url.partition("://")[2].rpartition(":")
    return host, int(port)


def test_no_admin_token_goes_in_clear_to_a_manager_that_serves_https(
    https_fleet: tuple[Server, Path],
) -> None:
    """http:// given for the HTTPS listener of a manager elsewhere: refused before the token
    is sent, with the https:// URL to use."""
    fleet, db = https_fleet
    token = (db / "admin-token").read_text().strip()
    with Relay(_hostport(fleet.urls["http"])) as relay:
        line = _one_line_error(_ls(f"http://{relay.hostport}", "", token))
        sent = relay.sent
    assert f"https://{relay.hostport}" in line and CA_ENV in line, line
    assert sent, "the CLI never reached the relay"
    assert token.encode() not in sent and b"authorization" not in sent.lower(), sent[:300]


def test_an_address_the_certificate_does_not_name_points_to_tls_names(
    https_fleet: tuple[Server, Path],
) -> None:
    """The right CA, an IP address the certificate lacks (OpenSSL's code 64): not "set
    $EDGEFLIX_FLEET_CA", which is already right."""
    fleet, db = https_fleet
    token = (db / "admin-token").read_text().strip()
    with Relay(_hostport(fleet.urls["http"])) as relay:
        line = _one_line_error(_ls(f"https://{relay.hostport}", str(db / "fleet-ca.pem"), token))
    assert "does not name that address" in line and "tls_names" in line, line
    assert "set $" not in line, line


# -- fleet-ca.pem is public; another user told to copy it ---------------------------------

_AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _ls_as_nobody(url: str, ca: str, token: str) -> subprocess.CompletedProcess[str]:
    """`edgeflix fleet ls --json` run as user nobody: another local user than the manager's."""
    env = {**os.environ, "EDGEFLIX_FLEET": url, CA_ENV: ca, TOKEN_ENV: token}
    env.pop("EDGEFLIX_LOG_JSON", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [*_AS_NOBODY, sys.executable, "-m", "edgeflix.cli", "fleet", "ls", "--json"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_another_user_is_told_to_copy_the_public_ca_and_the_copy_works(
    https_fleet: tuple[Server, Path],
) -> None:
    fleet, db = https_fleet
    token = (db / "admin-token").read_text().strip()
    ca = db / "fleet-ca.pem"
    assert stat.S_IMODE(ca.stat().st_mode) == 0o644
    assert stat.S_IMODE((db / "fleet-ca.key").stat().st_mode) == 0o600
    # Beside the database, in its 0700 folder: out of this user's reach.
    line = _one_line_error(_ls_as_nobody(fleet.urls["http"], str(ca), token))
    assert "Permission denied" in line and "copy the manager's fleet-ca.pem" in line, line
    assert "/etc/edgeflix/" in line, line
    # A copy as `cp` makes it (the mode comes along) in a folder others may enter.
    shared = Path(tempfile.mkdtemp(prefix="edgeflix-ca-"))
    try:
        shared.chmod(0o755)
        copy = Path(shutil.copy(ca, shared / "fleet-ca.pem"))
        out = _ls_as_nobody(fleet.urls["http"], str(copy), token)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == []
    finally:
        shutil.rmtree(shared)


# -- [server] http_tls ---------------------------------------------------------------------


def _start_fleet(top: Path, http: str, extra: str) -> tuple[Server, Path]:
    """A tls = true manager with HTTP on `http` and `extra` in [server]; its log file."""
    top.mkdir()
    config = top / "fleet.toml"
    config.write_text(f"""
[server]
grpc = "127.0.0.1:0"
enrol_grpc = "127.0.0.1:0"
http = "{http}"
db = "{top}/db/fleet.sqlite"
tls = true
admin = "token"
{extra}
[origin]
url = "http://127.0.0.1:9"
""")
    log = top / "fleet.log"
    with log.open("wb") as err:
        fleet = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"), stderr=err)
    return fleet, log


def test_http_tls_false_keeps_the_http_api_plain_with_tls_on(tmp_path: Path) -> None:
    """As before tls covered HTTP: plain scrapes and health checks, the CLI over http://.
    Elsewhere (the relay), the CLI's check before sending the token costs the manager no
    log line; https:// there is answered in plain text, and with a token set the CLI does
    not advise http://."""
    fleet, log = _start_fleet(tmp_path / "plain", "127.0.0.1:0", "http_tls = false")
    try:
        assert fleet.urls["http"].startswith("http://127.0.0.1:")
        host, port = _hostport(fleet.urls["http"])
        request = f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        assert raw((host, port), request.encode()).startswith(b"HTTP/1.1 200 ")
        token = (tmp_path / "plain" / "db" / "admin-token").read_text().strip()
        ca = str(tmp_path / "plain" / "db" / "fleet-ca.pem")
        out = _ls(fleet.urls["http"], "", token)
        assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr
        with Relay((host, port)) as relay:
            out = _ls(f"http://{relay.hostport}", "", token)
            assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr
            assert "Invalid HTTP request" not in log.read_text()
            line = _one_line_error(_ls(f"https://{relay.hostport}", ca, token))
            assert "did not answer in TLS" in line and "in clear" in line, line
            assert "use http://" not in line, line
            line = _one_line_error(_ls(f"https://{relay.hostport}", ca, ""))
            assert f"use http://{relay.hostport}" in line, line
    finally:
        fleet.stop()
    assert "fleet.http_in_clear" not in log.read_text()  # on loopback only


def test_http_tls_false_beyond_loopback_is_warned_of_once(tmp_path: Path) -> None:
    """Nothing is ever sent to it: the warning is read from the log alone."""
    fleet, log = _start_fleet(tmp_path / "wide", "0.0.0.0:0", "http_tls = false")
    assert fleet.stop() == 0
    warned = [line for line in log.read_text().splitlines() if "fleet.http_in_clear" in line]
    assert len(warned) == 1, log.read_text()
    assert "level=warning" in warned[0] and "admin token" in warned[0], warned[0]
    assert "[server] http_tls" in warned[0], warned[0]


def test_http_tls_without_tls_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(f"""
[server]
http = "127.0.0.1:0"
grpc = "127.0.0.1:0"
db = "{tmp_path}/db/fleet.sqlite"
http_tls = true
""")
    line = _one_line_error(run_cli(["fleet", "serve", "--config", str(config)], timeout=60))
    assert "http_tls" in line and "needs server.tls" in line, line
    assert not (tmp_path / "db").exists()

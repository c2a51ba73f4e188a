"""The admin API's gate (fleet/admin.py): who may drain, remove, rotate and hand out join
tokens, decided purely, then through the real ASGI front in http.py."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fleet.admin import AdminAccess, is_loopback, load_or_create_token
from tests.fleet.test_http import get, service

TOKEN = b"secret-admin-token"
BEARER = b"Bearer " + TOKEN


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.168.1.5", False),
        ("::ffff:192.168.1.5", False),
        ("2001:db8::1", False),
        ("localhost", False),  # a name is not an address the socket reported
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_loopback_mode_lets_this_machine_in_and_asks_others_for_the_token() -> None:
    gate = AdminAccess("loopback", TOKEN, "/var/fleet/admin-token")
    assert gate.check("/appliances", "127.0.0.1", None) is None
    refusal = gate.check("/appliances", "192.168.1.5", None)
    assert refusal is not None and refusal.status == 401
    assert "EDGEFLIX_FLEET_TOKEN" in refusal.message and "/var/fleet/admin-token" in refusal.message
    assert gate.check("/appliances", "192.168.1.5", BEARER) is None
    assert gate.check("/appliances", "192.168.1.5", b"bearer  " + TOKEN + b" ") is None


def test_token_mode_asks_everyone() -> None:
    gate = AdminAccess("token", TOKEN)
    refused = gate.check("/keys/rotate", "127.0.0.1", None)
    assert refused is not None and refused.status == 401
    assert gate.check("/keys/rotate", "127.0.0.1", BEARER) is None


@pytest.mark.parametrize(
    "auth", [b"Bearer wrong", b"Basic " + TOKEN, TOKEN, b"Bearer", b"Bearer " + TOKEN[:-1]]
)
def test_a_wrong_token_is_refused_even_from_loopback(auth: bytes) -> None:
    refusal = AdminAccess("loopback", TOKEN).check("/appliances", "127.0.0.1", auth)
    assert refusal is not None and refusal.status == 401 and "refused" in refusal.message


@pytest.mark.parametrize("path", ["/steer", "/healthz", "/metrics"])
def test_players_and_probes_need_nothing(path: str) -> None:
    assert AdminAccess("token", TOKEN).check(path, "203.0.113.9", None) is None


def test_the_token_file_is_made_once_private(tmp_path: Path) -> None:
    token, path = load_or_create_token(tmp_path / "fleet")
    assert len(token) >= 32 and path == tmp_path / "fleet" / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(tmp_path / "fleet") == (token, path)
    assert load_or_create_token(tmp_path / "other")[0] != token


def test_the_asgi_front_refuses_another_machine_and_still_steers_it(tmp_path: Path) -> None:
    svc = service(tmp_path)
    status, headers, body = get(svc, "/appliances/h1/drain", "POST", client="192.0.2.9")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert "token" in json.loads(body)["error"]
    assert {a.state for a in svc.snapshot().appliances} == {"ok"}  # refused before any change
    status, _, body = get(svc, "/steer?client_ip=192.168.1.7&title=film", client="192.0.2.9")
    assert status == 200 and json.loads(body)["urls"]
    status, _, _ = get(
        svc, "/appliances", client="192.0.2.9", headers=((b"authorization", BEARER),)
    )
    assert status == 200
    status, _, _ = get(svc, "/appliances", client="127.0.0.1")
    assert status == 200

"""Token lifetimes are bounded: a token verify() would refuse as malformed (expiry over 12
digits) is never signed, and `appliance sign --ttl` refuses lifetimes past MAX_TTL_S in one
line instead of printing a URL the appliance rejects."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from edgeflix import tokens
from tests.appliance.storage_fixtures import storage_toml
from tests.conftest import run_cli

KEY = tokens.SigningKey("k1", b"secretsecretsecretsecret")
SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"  # base64 of "secret" * 4


def test_the_bound_fits_a_token_for_centuries() -> None:
    assert tokens.MAX_TTL_S >= 365 * 24 * 3600
    assert len(str(4_000_000_000 + tokens.MAX_TTL_S)) <= len(str(tokens.MAX_EXPIRES))


def test_sign_refuses_an_expiry_verify_would_call_malformed() -> None:
    with pytest.raises(tokens.TokenError, match="expiry"):
        tokens.sign("t", KEY, tokens.MAX_EXPIRES + 1)
    with pytest.raises(tokens.TokenError, match="expiry"):
        tokens.sign("t", KEY, -1)
    token = tokens.sign("t", KEY, tokens.MAX_EXPIRES)
    now = tokens.MAX_EXPIRES - tokens.MAX_TTL_S  # verify() refuses it sooner: too far ahead
    claims = tokens.verify(token, title_id="t", client_ip=None, keys={"k1": KEY.secret}, now=now)
    assert claims.expires == tokens.MAX_EXPIRES


def signing_config(tmp_path: Path) -> Path:
    config = storage_toml(tmp_path)
    with config.open("a") as f:
        f.write(f'[auth]\nkeys = [ {{ id = "k1", secret = "{SECRET}" }} ]\n')
    return config


def test_sign_cli_refuses_a_ttl_no_token_can_carry(tmp_path: Path) -> None:
    config = signing_config(tmp_path)
    for ttl in ("999999999999", str(tokens.MAX_TTL_S + 1)):
        proc = run_cli(["appliance", "sign", "--config", str(config), "--title", "t", "--ttl", ttl])
        assert proc.returncode == 2 and proc.stdout == ""
        lines = [line for line in proc.stderr.splitlines() if "level=" not in line]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--ttl" in lines[0]


def test_sign_cli_at_the_bound_gives_a_url_that_verifies(tmp_path: Path) -> None:
    config = signing_config(tmp_path)
    args = ["--config", str(config), "--title", "t", "--json", "--ttl", str(tokens.MAX_TTL_S)]
    doc = json.loads(run_cli(["appliance", "sign", *args], check=True).stdout)
    token = urlsplit(doc["url"]).path.split("/")[2]
    keys = {"k1": b"secret" * 4}
    claims = tokens.verify(token, title_id="t", client_ip=None, keys=keys, now=time.time())
    assert claims.expires == doc["expires"]


def test_sign_uses_the_public_url_and_warns_of_an_unreachable_host(tmp_path: Path) -> None:
    config = signing_config(tmp_path)
    base = config.read_text()
    args = ["appliance", "sign", "--config", str(config), "--title", "t"]
    config.write_text(base + '[serve]\nlisten = "0.0.0.0:8081"\n')
    wildcard = run_cli(args, check=True)
    assert wildcard.stdout.startswith("http://0.0.0.0:8081/t/")
    assert "all interfaces" in wildcard.stderr and "public_url" in wildcard.stderr
    config.write_text(
        base + '[serve]\nlisten = "0.0.0.0:8081"\n[fleet]\npublic_url = "http://edge1.lan:8081/"\n'
    )
    public = run_cli(args, check=True)
    assert public.stdout.startswith("http://edge1.lan:8081/t/") and public.stderr == ""

"""Join tokens are capped per site (/tmp/rev_abuse/t8.py minted 2000 in a loop, each a row
kept for weeks): beyond MAX_OPEN_JOIN_TOKENS unused, unexpired ones, minting is refused
with a 429 and a message saying what frees a slot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from edgeflix.proto import auth
from fleet import store as fleet_store
from fleet.enrolment import JOIN_TOKEN_TTL_S
from fleet.http import create_app
from fleet.store import JoinTokenLimit
from tests.fleet.test_http import ADMIN
from tests.fleet.test_service import Clock, service

LIMIT = 5  # the rule, not the figure (1000), is under test: small keeps it fast


@pytest.fixture(autouse=True)
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_store, "MAX_OPEN_JOIN_TOKENS", LIMIT)


def test_unused_tokens_are_capped_per_site(tmp_path: Path) -> None:
    clock = Clock()
    svc = service(tmp_path, clock)
    tokens = [svc.join_token("home") for _ in range(LIMIT)]
    with pytest.raises(JoinTokenLimit, match=f"site 'home' has {LIMIT} unused join tokens"):
        svc.join_token("home")
    assert JoinTokenLimit.http_status == 429
    svc.join_token("lab")  # another site has its own allowance
    # A token used frees a slot; so does one expired.
    svc.enrol(tokens[0], "h1", "http://h1:8081", auth.public_key(auth.new_private_key()))
    svc.join_token("home")
    with pytest.raises(JoinTokenLimit):
        svc.join_token("home")
    clock.now += JOIN_TOKEN_TTL_S + 1
    assert len({svc.join_token("home") for _ in range(LIMIT)}) == LIMIT
    with pytest.raises(JoinTokenLimit):
        svc.join_token("home")


def test_the_admin_api_answers_429_beyond_the_cap(tmp_path: Path) -> None:
    svc = service(tmp_path, Clock())

    async def mint(n: int) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(svc, ADMIN), client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as client:
            return [await client.post("/join-tokens", json={"site": "home"}) for _ in range(n)]

    answers = asyncio.run(mint(LIMIT + 1))
    assert [r.status_code for r in answers] == [200] * LIMIT + [429]
    assert "unused join tokens" in answers[-1].json()["error"]

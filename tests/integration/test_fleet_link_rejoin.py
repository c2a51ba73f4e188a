"""`edgeflix fleet rm` of an appliance, then a new join token and SIGHUP: it enrols again at
once, not after the backoff its refused beats had built up (up to 30 s). The link runs in
this process against a real `edgeflix fleet serve` on loopback (test_fleet_link_recovery's
harness)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import FLEET_TOML
from tests.integration.test_fleet_link_recovery import Clock, enrolled, join_token, link, steps


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Server]:
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    server = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    yield server
    server.stop()


def test_a_new_token_after_fleet_rm_enrols_without_the_old_backoff(
    tmp_path: Path, fleet: Server
) -> None:
    clock = Clock()
    enrolled(tmp_path, fleet, clock)
    run_cli(["fleet", "rm", "a1", "--fleet", fleet.urls["http"]], check=True, timeout=60)
    lk = link(tmp_path, fleet.urls["grpc"], clock, token="spent")
    # Beats refused, enrolling again refused (the token is spent): backing off, to 30 s.
    waits = steps(lk, 8)
    assert waits[-1] == 30.0, waits
    assert lk.state()["refused"], lk.state()

    lk.reconfigure(lk.fleet.model_copy(update={"join_token": join_token(fleet)}))
    first, second = steps(lk, 2)  # a beat, refused (not enrolled); then the enrolment
    assert first <= 1.0, "the new token waited out the old backoff"
    assert second == 0.0  # enrolled: first beat right away
    steps(lk, 1)
    st = lk.state()
    assert st["refused"] is None and st["beats"] >= 1 and st["phase"] == "connected", st
    lk.stop()

"""Titles removed at the origin (`edgeflix origin rm`) stay withdrawn from a real fleet
manager's steering: when the origin's store is left with none, and when the manager is
restarted while the origin is away. A title published again is steered again. A title
the origin never listed is refused as unknown once it has listed titles since the start.

An origin on a fixed loopback port (it comes back) and a fleet manager, through the CLI.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli
from tests.integration.serve_support import Server, make_title, start
from tests.integration.test_fleet_appliances import fleet_toml, free_port, wait_for

TITLES = ("film", "show", "extra")


class Setup:
    def __init__(self, top: Path) -> None:
        self.store = top / "origin"
        self.origin_addr = f"127.0.0.1:{free_port()}"
        self.config = fleet_toml(top, f"http://{self.origin_addr}", free_port(), free_port())
        self.db = top / "fleet.sqlite"
        self.log = top / "fleet.log"
        self.origin: Server | None = None
        self.fleet: Server | None = None

    def start_origin(self) -> None:
        args = ["origin", "serve", "--store", str(self.store), "--listen", self.origin_addr]
        self.origin = start(args, ("listening",))

    def start_fleet(self) -> None:
        with self.log.open("ab") as log:
            args = ["fleet", "serve", "--config", str(self.config)]
            self.fleet = start(args, ("grpc", "http"), stderr=log)

    def origin_empty_logged(self) -> bool:
        return "event=fleet.origin_empty" in self.log.read_text()

    def steer(self, title: str) -> tuple[int, str]:
        assert self.fleet is not None
        params = {"client_ip": "192.168.1.50", "title": title, "probe": "1"}
        resp = httpx.get(self.fleet.urls["http"] + "/steer", params=params, timeout=10)
        return resp.status_code, resp.text

    def withdrawn(self, title: str) -> bool:
        status, text = self.steer(title)
        assert status in (200, 404), text
        return status == 404 and "withdrawn" in text

    def unknown(self, title: str) -> bool:
        status, text = self.steer(title)
        return status == 404 and "unknown title" in text

    def origin_rm(self, title: str) -> None:
        run_cli(["origin", "rm", "--id", title, "--store", str(self.store)], check=True)

    def listed_once(self) -> set[str]:
        """What the manager has seen the origin list (read from its database)."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return {r[0] for r in conn.execute("SELECT title FROM catalog")}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    for title in TITLES:
        make_title(s.store / "titles" / title, title)
    try:
        s.start_origin()
        s.start_fleet()
        yield s
    finally:
        for server in (s.fleet, s.origin):
            if server is not None:
                server.stop()


def test_removed_titles_stay_withdrawn_when_none_are_left_and_across_a_restart(
    setup: Setup,
) -> None:
    wait_for(lambda: setup.listed_once() == set(TITLES), 15, "the origin's titles read")
    setup.origin_rm("show")
    wait_for(lambda: setup.withdrawn("show"), 15, "show withdrawn")
    assert not setup.withdrawn("film")
    setup.origin_rm("film")
    wait_for(lambda: setup.withdrawn("film"), 15, "film withdrawn")
    # The last title removed too: the origin lists nothing, which withdraws nothing more
    # (an origin on a mistyped store lists nothing as well) and keeps what was withdrawn.
    setup.origin_rm("extra")
    wait_for(lambda: setup.origin_empty_logged(), 15, "the empty listing read")
    assert setup.withdrawn("show") and setup.withdrawn("film") and not setup.withdrawn("extra")
    # Never listed: refused too, as unknown (not withdrawn). It used to be steered to the
    # origin ("it may serve it"), whose URL then 404s; one ingested since the last poll
    # is refused until the next poll lists it ([origin] poll_s).
    assert setup.unknown("never-listed")

    # The origin goes away and the manager restarts: the withdrawals hold.
    assert setup.origin is not None and setup.fleet is not None
    setup.origin.stop()
    setup.fleet.stop()
    setup.start_fleet()
    assert setup.withdrawn("show") and setup.withdrawn("film") and not setup.withdrawn("extra")
    # No listing since this start: the catalogue is unknown, the origin may have it.
    assert setup.steer("never-listed")[0] == 200

    # Published again, the origin back: steered again; extra, not listed, withdrawn now.
    make_title(setup.store / "titles" / "film", "film")
    setup.start_origin()
    wait_for(lambda: not setup.withdrawn("film"), 15, "film steered again")
    assert setup.withdrawn("show") and setup.withdrawn("extra")
    assert setup.unknown("never-listed")

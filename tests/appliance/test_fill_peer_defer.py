"""A fill run whose planned site peer lacks a title yet (it is still filling it from the
origin: 404, or an older version's files.json): the title is deferred, the run's other
titles go on, and it comes back to the peer later instead of every appliance of the site
taking it from the origin at once. Real sockets (fill_server.py) into a real store; the fill
clock and its sleeps are faked, so the minutes of waiting take no time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance.fill.downloader import Pacer
from appliance.fill.peerwait import PeerWaitPolicy
from appliance.fill.plan import FillPlan, PlannedTitle
from appliance.fill.runner import FillReport, FillRun
from appliance.fill.storage import StoreStorage
from appliance.fill.window import parse_window
from edgeflix import titlefiles
from edgeflix.fillwindow import FillWindow
from tests.appliance.fill_server import ScriptedServer, serve_files
from tests.appliance.storage_fixtures import make_title, storage_toml

START = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)


def served(folder: Path, title_id: str) -> dict[str, bytes]:
    """A title folder as a file server's request targets → bytes."""
    return {
        f"/titles/{title_id}/{p.relative_to(folder).as_posix()}": p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file()
    }


class Site:
    """An origin holding titles `a` and `b`, and a peer that holds what the test gives it."""

    def __init__(self, tmp: Path) -> None:
        self.a = make_title(tmp / "src", "a", seed=1)
        self.b = make_title(tmp / "src", "b", seed=2)
        self.old_a = make_title(tmp / "old", "a", seed=9)  # an earlier version of `a`
        self.origin_log: list[dict[str, str]] = []
        self.peer_log: list[dict[str, str]] = []
        self.peer_files: dict[str, bytes] = {}
        self.origin = ScriptedServer(
            serve_files({**served(self.a, "a"), **served(self.b, "b")}, self.origin_log)
        )
        self.peer = ScriptedServer(serve_files(self.peer_files, self.peer_log))

    def peer_gets(self, folder: Path) -> None:
        self.peer_files.clear()
        self.peer_files.update(served(folder, "a"))

    def digest(self, title: str) -> str:
        return titlefiles.read(self.a if title == "a" else self.b)[1]

    def origin_asked_for(self, title: str) -> bool:
        return any(r[":target"].startswith(f"/titles/{title}/") for r in self.origin_log)

    def close(self) -> None:
        self.origin.close()
        self.peer.close()


@pytest.fixture()
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.close()


class Clock:
    """The fill's wall clock; each sleep moves it on, is recorded, and may change the world."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now
        self.slept: list[float] = []
        self.on_sleep: Callable[[int], None] = lambda n: None

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        self.on_sleep(len(self.slept))
        await asyncio.sleep(0)


def run_fill(
    tmp: Path,
    site: Site,
    clock: Clock,
    *,
    window: FillWindow | None = None,
    wait_for_peers: bool = True,
    size: int | None = None,
    cap_bps: int | None = None,
) -> FillReport:
    config = appliance_config.load(storage_toml(tmp / "app"))
    plan = FillPlan(
        titles=(
            PlannedTitle(
                id="a", digest=site.digest("a"), sources=(site.peer.url, site.origin.url), size=size
            ),
            PlannedTitle(id="b", digest=site.digest("b"), sources=(site.origin.url,)),
        ),
        wait_for_peers=wait_for_peers,
        streams=2,
    )
    pacer = Pacer(cap_bps, window, now=lambda: clock.now, sleep=clock.sleep)
    run = FillRun(
        plan, StoreStorage(config.storage), tmp / "staging", pacer, peer_wait=PeerWaitPolicy()
    )

    async def bounded() -> FillReport:
        return await asyncio.wait_for(run.run(), 30)

    return asyncio.run(bounded())


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [getattr(r, "edgeflix_fields", {}) for r in caplog.records if r.getMessage() == name]


@pytest.mark.parametrize("lacks", ["404", "older version"])
def test_a_title_the_peer_lacks_waits_for_it_while_the_others_fill(
    tmp_path: Path, site: Site, lacks: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "appliance.fill")
    if lacks == "older version":
        site.peer_gets(site.old_a)
    clock = Clock()
    b_done_before_the_wait: list[bool] = []

    def peer_finishes(n: int) -> None:  # its own fill of `a` from the origin, while we wait
        b_done_before_the_wait.append(site.origin_asked_for("b"))
        site.peer_gets(site.a)

    clock.on_sleep = peer_finishes
    report = run_fill(tmp_path, site, clock)

    a, b = report.titles["a"], report.titles["b"]
    assert (a.state, b.state) == ("ready", "ready")
    assert a.source == site.peer.url and a.deferrals == 1
    assert clock.slept == [120]  # one wait, then the peer had it
    assert not site.origin_asked_for("a")  # the point: one fill per site from the origin
    assert site.origin_asked_for("b")
    assert b_done_before_the_wait == [True]  # the run went on with `b` first
    assert [r[":target"] for r in site.peer_log].count("/titles/a/files.json") == 2
    deferred = events(caplog, "fill.title_deferred")
    assert [(e["title"], e["wait_s"]) for e in deferred] == [("a", 120)]
    assert events(caplog, "fill.peer_bypassed") == [] == events(caplog, "fill.source_failed")


def test_a_peer_that_never_gets_it_leaves_the_title_to_the_origin_after_the_waits(
    tmp_path: Path, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "appliance.fill")
    clock = Clock()
    report = run_fill(tmp_path, site, clock)

    a = report.titles["a"]
    assert a.state == "ready" and a.source == site.origin.url and a.deferrals == 4
    assert clock.slept == [120, 240, 480, 480]  # bounded: the run ends
    assert site.origin_asked_for("a")
    (bypassed,) = events(caplog, "fill.peer_bypassed")
    assert bypassed["reason"] == "peer_waits_spent" and bypassed["waited"] == 4


def test_too_little_window_left_goes_to_the_origin_at_once(
    tmp_path: Path, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "appliance.fill")
    # 05:59 of a 02:00-06:00 window: a 2 min wait would leave none of the hour kept for it.
    clock = Clock(START + timedelta(hours=3, minutes=59))
    report = run_fill(tmp_path, site, clock, window=parse_window("02:00-06:00", "UTC"))

    assert report.titles["a"].state == "ready" and report.titles["a"].source == site.origin.url
    assert clock.slept == []
    (bypassed,) = events(caplog, "fill.peer_bypassed")
    assert bypassed["reason"] == "window_short" and bypassed["window_left_s"] == 60


def test_a_window_closing_meanwhile_is_waited_out_before_the_peer_is_asked_again(
    tmp_path: Path, site: Site
) -> None:
    """Deferred near the end of the window with room to spare at first: the retry after the
    wait finds the window shut, waits for the next night, and the peer has the title."""
    clock = Clock(START + timedelta(hours=2, minutes=50))  # 04:50: 70 min left
    clock.on_sleep = lambda n: site.peer_gets(site.a) if n == 2 else None
    window = parse_window("02:00-06:00", "UTC")
    # The fill itself takes no fake time: shut the window during the first wait.
    real_sleep = clock.sleep

    async def sleep(seconds: float) -> None:
        await real_sleep(seconds)
        if len(clock.slept) == 1:
            clock.now = START + timedelta(hours=4, minutes=1)  # 06:01

    clock.sleep = sleep  # type: ignore[method-assign]
    report = run_fill(tmp_path, site, clock, window=window)
    assert report.titles["a"].source == site.peer.url
    assert clock.now >= START + timedelta(days=1)  # waited for the next opening
    assert not site.origin_asked_for("a")


def test_an_operator_fill_from_the_command_line_does_not_wait(tmp_path: Path, site: Site) -> None:
    """`appliance fill --from PEER --from ORIGIN` (wait_for_peers off): asked for now."""
    clock = Clock()
    report = run_fill(tmp_path, site, clock, wait_for_peers=False)
    assert report.titles["a"].source == site.origin.url and clock.slept == []


def test_a_title_the_cap_needs_the_rest_of_the_window_for_goes_to_the_origin_at_once(
    tmp_path: Path, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """The plan says how big the title is (the peer, answering 404, cannot): at the cap its
    transfer takes longer than the window has left, so waiting for the peer would lose it."""
    caplog.set_level(logging.INFO, "appliance.fill")
    clock = Clock()  # 02:00 of a 02:00-06:00 window: 4 h left, a quarter of it 1 h
    window = parse_window("02:00-06:00", "UTC")
    # 1.2 GB at 600 kbit/s: 4.4 h, more than the window has left after any wait.
    report = run_fill(tmp_path, site, clock, window=window, size=1_200_000_000, cap_bps=600_000)
    assert report.titles["a"].state == "ready" and report.titles["a"].source == site.origin.url
    assert not events(caplog, "fill.title_deferred")
    (bypassed,) = events(caplog, "fill.peer_bypassed")
    assert bypassed["reason"] == "window_short"

"""The fill under real network faults: a real `edgeflix origin serve` behind a fault-injecting
proxy (faultproxy.py) on loopback, driven through the fill core (FillRun into a real store).
Resets, stalls, trickles, flipped bytes, 5xx, early closes, lying lengths and refused
connections: the fill retries with bounded backoff, resumes with Range, falls back to the
origin, never stores a file whose hash is wrong, and leaves no staging debris behind.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import config as appliance_config
from appliance.fill.downloader import Pacer
from appliance.fill.plan import FillPlan, PlannedTitle
from appliance.fill.retry import RetryPolicy
from appliance.fill.runner import FillReport, FillRun
from appliance.fill.storage import StoreStorage
from appliance.fill.transport import Timeouts
from appliance.store import Store
from edgeflix import titlefiles
from tests.integration import faultproxy as fp
from tests.integration.faultproxy import Fault, FaultProxy
from tests.integration.serve_support import serving_origin
from tests.integration.test_fill import appliance_config as write_config
from tests.integration.test_fill import make_title

MiB = 1 << 20
FAST = RetryPolicy(base_s=0.01, max_delay_s=0.05)
QUICK = Timeouts(connect=2.0, read=1.0, head=2.0, low_speed_bps=16 * 1024, low_speed_s=1.5)
BOUND_S = 60  # no fill here may take longer; old code that hangs fails on this bound


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    store = tmp_path_factory.mktemp("origin")
    make_title(store, "clip", [700_000, 500_000, 300_000], seed=11)
    make_title(store, "tiny", [40_000], seed=12)
    with serving_origin(store) as server:
        yield server.url, store


@pytest.fixture()
def proxy(origin: tuple[str, Path]) -> Iterator[FaultProxy]:
    with FaultProxy(origin[0]) as p:
        yield p


def run_fill(
    tmp: Path,
    sources: list[str],
    title: str = "clip",
    policy: RetryPolicy = FAST,
    timeouts: Timeouts = QUICK,
    streams: int = 2,
    pacer: Pacer | None = None,
) -> FillReport:
    config = appliance_config.load(write_config(tmp))
    plan = FillPlan(titles=(PlannedTitle(id=title, sources=tuple(sources)),), streams=streams)
    run = FillRun(
        plan,
        StoreStorage(config.storage),
        config.fill.staging,
        pacer or Pacer(None, None),
        policy=policy,
        timeouts=timeouts,
    )

    async def bounded() -> FillReport:
        return await asyncio.wait_for(run.run(), BOUND_S)

    return asyncio.run(bounded())


def held(tmp: Path) -> dict[str, str]:
    config = appliance_config.load(tmp / "appliance.toml")
    store = Store(config.storage)
    try:
        return {t.id: t.state for t in store.listing()}
    finally:
        store.close()


def assert_clean_and_served(tmp: Path, store: Path, title: str = "clip") -> None:
    """The title is ready, its files are the origin's bytes, and staging holds nothing but
    the run's state.json (no title folder, no .part, nothing under a disk's .staging)."""
    assert held(tmp).get(title) == "ready"
    config = tmp / "appliance.toml"
    from tests.conftest import run_cli

    verify = run_cli(["appliance", "verify", "--config", str(config), "--json"], check=True)
    assert '"problems": []' in verify.stdout
    debris = [p for p in (tmp / "staging").rglob("*") if p.name != "state.json"]
    debris += [p for d in ("d0", "d1") for p in (tmp / d / ".staging").rglob("*")]
    assert debris == []
    model = titlefiles.read(store / "titles" / title)[0]
    on_disks = {
        e.path: next(
            (tmp / d / "titles" / title / e.path)
            for d in ("d0", "d1")
            if (tmp / d / "titles" / title / e.path).exists()
        )
        for e in model.files
    }
    for entry in model.files:
        want = (store / "titles" / title / entry.path).read_bytes()
        assert on_disks[entry.path].read_bytes() == want


def test_pass_through_fills_cleanly(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    report = run_fill(tmp_path, [proxy.url])
    assert report.titles["clip"].state == "ready"
    assert_clean_and_served(tmp_path, origin[1])


def test_reset_mid_body_resumes_with_range(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.set(Fault(fp.RESET, after=200_000, match=".m4s", times=3))
    report = run_fill(tmp_path, [proxy.url])
    clip = report.titles["clip"]
    assert clip.state == "ready", clip.error
    assert proxy.applied == 3
    # Resumed, not restarted: the bytes before each reset were not fetched again.
    assert clip.downloaded == clip.total
    assert clip.retries == 3
    assert_clean_and_served(tmp_path, origin[1])


def test_files_json_blip_on_the_only_source_is_retried(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.set(Fault(fp.STATUS, status=503, match="files.json", times=2))
    report = run_fill(tmp_path, [proxy.url])
    assert report.titles["clip"].state == "ready", report.titles["clip"].error
    assert proxy.applied == 2
    assert_clean_and_served(tmp_path, origin[1])


@pytest.mark.parametrize(
    "fault",
    [
        Fault(fp.CLOSE_AFTER_HEAD, match=".m4s", times=2),
        Fault(fp.WRONG_LENGTH, delta=-1000, match=".m4s", times=2),
        Fault(fp.WRONG_LENGTH, delta=+1000, match=".m4s", times=2),
        Fault(fp.STATUS, status=500, match=".m4s", times=3),
        Fault(fp.STALL_BODY, after=100_000, match="seg000", times=1),
        Fault(fp.STALL_HEAD, match="seg001", times=1),
    ],
    ids=lambda f: f"{f.kind}{f.delta or ''}",
)
def test_transient_faults_are_retried(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path, fault: Fault
) -> None:
    proxy.set(fault)
    report = run_fill(tmp_path, [proxy.url])
    clip = report.titles["clip"]
    assert clip.state == "ready", clip.error
    assert proxy.applied == fault.times
    assert clip.retries >= 1
    assert_clean_and_served(tmp_path, origin[1])


def test_corrupt_peer_falls_back_to_origin_and_counts_it(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    url, store = origin
    proxy.set(Fault(fp.FLIP, after=4321, match="seg001"))  # every time: a corrupt peer
    report = run_fill(tmp_path, [proxy.url, url])
    clip = report.titles["clip"]
    assert clip.state == "ready", clip.error
    assert clip.digest_failures == FAST.digest_restarts + 1
    assert clip.source == url
    assert_clean_and_served(tmp_path, store)


def test_corrupt_only_source_fails_and_stores_nothing(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.set(Fault(fp.FLIP, after=10, match="seg002"))
    report = run_fill(tmp_path, [proxy.url])
    clip = report.titles["clip"]
    assert clip.state == "failed" and "SHA-256" in (clip.error or "")
    assert clip.digest_failures == FAST.digest_restarts + 1
    assert "clip" not in held(tmp_path)
    finals = [p.name for p in tmp_path.rglob("seg002.m4s*")]
    assert finals == []  # the bad bytes never took a final name, nor wait for the next run


def test_trickling_source_is_abandoned_not_waited_for(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    url, store = origin
    proxy.set(Fault(fp.TRICKLE, rate=2048, match=".m4s"))
    started = time.monotonic()
    report = run_fill(tmp_path, [proxy.url, url])
    clip = report.titles["clip"]
    assert clip.state == "ready", clip.error
    assert clip.source == url
    assert time.monotonic() - started < BOUND_S
    assert_clean_and_served(tmp_path, store)


def test_trickling_head_is_abandoned(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    """A server that dribbles its response head a byte at a time, each byte well inside the
    read timeout, must not hold a stream forever."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def dribble() -> None:
        listener.settimeout(0.2)
        conns = []
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conns.append(conn)

            def feed(c: socket.socket = conn) -> None:
                try:
                    c.recv(4096)
                    for ch in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000:
                        if stop.wait(0.5):
                            return
                        c.sendall(bytes([ch]))
                except OSError:
                    return

            threading.Thread(target=feed, daemon=True).start()
        for c in conns:
            c.close()

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    try:
        dead = f"http://127.0.0.1:{listener.getsockname()[1]}"
        report = run_fill(tmp_path, [dead, origin[0]], title="tiny")
        assert report.titles["tiny"].state == "ready", report.titles["tiny"].error
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_refused_then_back_is_retried_with_backoff(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.set(Fault(fp.REFUSE))
    timer = threading.Timer(0.3, lambda: proxy.set(Fault()))
    timer.start()
    try:
        policy = RetryPolicy(base_s=0.2, max_delay_s=0.5, attempts_per_source=8)
        report = run_fill(tmp_path, [proxy.url], policy=policy)
    finally:
        timer.cancel()
    assert report.titles["clip"].state == "ready", report.titles["clip"].error
    assert_clean_and_served(tmp_path, origin[1])


def test_dead_source_gives_up_after_bounded_attempts(proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.set(Fault(fp.STATUS, status=503))
    report = run_fill(tmp_path, [proxy.url])
    clip = report.titles["clip"]
    assert clip.state == "failed" and "503" in (clip.error or "")
    assert proxy.applied == FAST.attempts_per_source
    assert not list((tmp_path / "staging").rglob("*.part"))


def test_flaky_link_that_makes_progress_gets_a_big_file_through(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    """Every response breaks off after 100 kB, more often than attempts_per_source; each
    attempt moves the file on, so the fill resumes to the end instead of giving up."""
    proxy.set(Fault(fp.RESET, after=100_000, match="seg000"))
    policy = RetryPolicy(base_s=0.01, max_delay_s=0.05, progress_bytes=64 * 1024)
    report = run_fill(tmp_path, [proxy.url], policy=policy)
    clip = report.titles["clip"]
    assert clip.state == "ready", clip.error
    assert clip.retries > policy.attempts_per_source
    assert proxy.applied == clip.retries + 1  # the last answer came through whole
    assert clip.downloaded == clip.total
    assert_clean_and_served(tmp_path, origin[1])


def test_retry_after_is_honoured(
    origin: tuple[str, Path], proxy: FaultProxy, tmp_path: Path
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)  # recorded, not waited: the policy's backoff alone is < 0.05 s

    proxy.set(Fault(fp.STATUS, status=503, retry_after=7, match="seg001", times=2))
    policy = RetryPolicy(base_s=0.01, max_delay_s=30.0)
    pacer = Pacer(None, None, sleep=sleep)
    report = run_fill(tmp_path, [proxy.url], policy=policy, pacer=pacer)
    assert report.titles["clip"].state == "ready", report.titles["clip"].error
    assert slept.count(7.0) == 2  # the source's Retry-After, not the 10 ms backoff

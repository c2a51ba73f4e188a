"""TitleFetcher's streams against scripted loopback sources that misbehave: Range resume of a
.part file, a source that ignores Range, a wrong Content-Range, a body cut short, a length
that disagrees with files.json, and the bandwidth cap paid through the injected sleep."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from appliance.fill.downloader import FillError, Pacer, TitleFetcher, TitleProgress
from appliance.fill.layout import StagingLayout
from appliance.fill.plan import PlannedTitle
from appliance.fill.retry import RetryPolicy
from appliance.fill.stream import Stopped, StreamJob
from appliance.fill.transport import Pool
from edgeflix import titlefiles
from edgeflix.titlefiles import TitleFiles
from tests.appliance.fill_server import Handler, read_request, scripted, serve_files

FAST = RetryPolicy(base_s=0.001, max_delay_s=0.01)


def make_source(tmp_path: Path, sizes: list[int]) -> tuple[TitleFiles, dict[str, bytes]]:
    folder = tmp_path / "src"
    rnd = random.Random(7)
    (folder / "v0").mkdir(parents=True)
    for i, size in enumerate(sizes):
        (folder / "v0" / f"seg{i}.m4s").write_bytes(rnd.randbytes(size))
    entries = tuple(titlefiles.scan(folder))
    model = TitleFiles(
        id="t",
        title="t",
        duration=1.0,
        segment_seconds=1.0,
        created="2024-01-01T00:00:00Z",
        renditions=(),
        files=entries,
        total_bytes=sum(e.size for e in entries),
    )
    files = {f"/titles/t/{e.path}": (folder / e.path).read_bytes() for e in entries}
    files["/titles/t/files.json"] = titlefiles.render(model)
    return model, files


class FakeSleep:
    """Returns at once but moves its own clock, so the pacer sees the time pass."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def fill(url: str, staging: Path, pacer: Pacer | None = None, streams: int = 2) -> TitleProgress:
    progress = TitleProgress("t")
    pacer = pacer or Pacer(None, None, sleep=FakeSleep())

    async def go() -> None:
        pool = Pool()
        try:
            title = PlannedTitle(id="t", sources=(url,))
            await TitleFetcher(
                pool, title, StagingLayout(staging), pacer, FAST, streams, progress
            ).run()
        finally:
            pool.close()

    asyncio.run(go())
    return progress


def assert_verified(staging: Path, model: TitleFiles) -> None:
    assert titlefiles.verify(staging, model) == []
    assert not list(staging.rglob("*.part"))
    assert not list(staging.rglob("*.validator*"))  # each gone with its .part


def test_resume_from_part_file_with_range(tmp_path: Path) -> None:
    model, files = make_source(tmp_path, [500_000, 300_000])
    seg = "/titles/t/v0/seg0.m4s"
    part = tmp_path / "staging/v0/seg0.m4s.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files[seg][:123_456])
    log: list[dict[str, str]] = []
    with scripted(serve_files(files, log)) as server:
        progress = fill(server.url, tmp_path / "staging")
    assert_verified(tmp_path / "staging", model)
    assert progress.downloaded == model.total_bytes - 123_456
    assert progress.done == model.total_bytes
    assert [r.get("range") for r in log if r[":target"] == seg] == ["bytes=123456-"]


def _misbehaving(files: dict[str, bytes], on_range: str) -> Handler:
    """Answers requests without Range well; a ranged request gets `on_range` treatment."""

    def handler(sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            body = files[req[":target"]]
            if "range" not in req or on_range == "ignore":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                continue
            start = int(req["range"][6:-1])
            bad = f"bytes {start + 1}-{len(body) - 1}/{len(body)}"
            sock.sendall(
                f"HTTP/1.1 206 Partial Content\r\nContent-Range: {bad}\r\n"
                f"Content-Length: {len(body) - start - 1}\r\n\r\n".encode()
                + body[start + 1 :]
            )

    return handler


@pytest.mark.parametrize("on_range", ["ignore", "wrong_content_range"])
def test_source_that_botches_range_still_yields_the_right_file(
    tmp_path: Path, on_range: str
) -> None:
    model, files = make_source(tmp_path, [200_000])
    part = tmp_path / "staging/v0/seg0.m4s.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files["/titles/t/v0/seg0.m4s"][:50_000])
    with scripted(_misbehaving(files, on_range)) as server:
        progress = fill(server.url, tmp_path / "staging")
    assert_verified(tmp_path / "staging", model)
    assert progress.done == model.total_bytes


def test_body_cut_short_is_resumed(tmp_path: Path) -> None:
    model, files = make_source(tmp_path, [400_000])
    seg = "/titles/t/v0/seg0.m4s"
    log: list[dict[str, str]] = []
    cut = {"done": False}

    def handler(sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            log.append(req)
            body = files[req[":target"]]
            start = int(req["range"][6:-1]) if "range" in req else 0
            status = "206 Partial Content" if start else "200 OK"
            head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body) - start}\r\n"
            if start:
                head += f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n"
            sock.sendall(head.encode() + b"\r\n")
            if req[":target"] == seg and not cut["done"]:
                cut["done"] = True  # the segment's first answer: 150 kB, then hang up
                sock.sendall(body[:150_000])
                return
            sock.sendall(body[start:])

    with scripted(handler) as server:
        progress = fill(server.url, tmp_path / "staging", streams=1)
        assert server.connections == 2
    assert_verified(tmp_path / "staging", model)
    ranges = [r.get("range") for r in log if r[":target"] == seg]
    assert ranges[0] is None and ranges[1] is not None
    assert int(ranges[1][6:-1]) > 0  # resumed past what had arrived, not from zero
    assert progress.downloaded == model.total_bytes


def test_length_disagreeing_with_files_json_fails_the_title(tmp_path: Path) -> None:
    _, files = make_source(tmp_path, [10_000])
    files["/titles/t/v0/seg0.m4s"] += b"extra"
    with scripted(serve_files(files, [])) as server, pytest.raises(FillError, match="says"):
        fill(server.url, tmp_path / "staging")
    assert not (tmp_path / "staging/v0/seg0.m4s").exists()


def test_cap_waits_through_the_injected_sleep(tmp_path: Path) -> None:
    model, files = make_source(tmp_path, [400_000, 400_000])
    sleep = FakeSleep()
    rate = 1_000_000  # bytes/s
    # Time passes only by sleeping: every byte past the initial burst is paid for exactly.
    pacer = Pacer(rate * 8, None, clock=sleep.clock, sleep=sleep)
    with scripted(serve_files(files, [])) as server:
        fill(server.url, tmp_path / "staging", pacer, streams=1)
    assert_verified(tmp_path / "staging", model)
    owed = (model.total_bytes - rate / 4) / rate  # files.json is not counted
    assert sum(sleep.slept) == pytest.approx(owed)
    assert max(sleep.slept) < 0.2  # small batches under a cap: smooth pacing


def test_a_stream_giving_up_stops_one_stuck_waiting_for_a_head(tmp_path: Path) -> None:
    """One file is refused (403: the title fails); the other's source never answers. The
    stuck stream is aborted at once, not after its 30 s read timeout."""
    _, files = make_source(tmp_path, [10_000, 20_000])

    def handler(sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            target = req[":target"]
            if target.endswith("seg0.m4s"):
                sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            elif target.endswith("seg1.m4s"):
                sock.recv(1)  # never answer; returns when the client hangs up
                return
            else:
                body = files[target]
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    started = time.monotonic()
    with scripted(handler) as server, pytest.raises(FillError, match="403"):
        fill(server.url, tmp_path / "staging")
    assert time.monotonic() - started < 10


def test_a_file_longer_than_many_windows_is_not_given_up(tmp_path: Path) -> None:
    """Under a cap, each window lets a few batches through before it closes; a file that
    needs more windows than the retry budget still completes (a closing window is no
    failure), resumed each time, nothing fetched twice."""
    from datetime import UTC, datetime, timedelta

    from appliance.fill.window import parse_window

    model, files = make_source(tmp_path, [3_000_000])
    at = [datetime(2024, 5, 1, 5, 59, tzinfo=UTC)]
    closes = [0]

    async def sleep(seconds: float) -> None:
        if seconds >= 60 and (at[0].hour, at[0].minute) == (6, 0):
            closes[0] += 1  # the first wait after a window closed
        at[0] += timedelta(seconds=seconds)
        await asyncio.sleep(0)

    # A one-minute window each night and 32 kbit/s: each 64 KiB batch costs 16 s.
    window = parse_window("05:59-06:00", "UTC")
    pacer = Pacer(32_000, window, lambda: at[0].timestamp(), lambda: at[0], sleep)
    with scripted(serve_files(files, [])) as server:
        progress = fill(server.url, tmp_path / "staging", pacer, streams=1)
    assert_verified(tmp_path / "staging", model)
    assert closes[0] > FAST.attempts_per_source + FAST.digest_restarts + 2  # the old budget
    assert progress.downloaded == model.total_bytes and progress.retries == 0


def test_a_staged_file_left_by_an_earlier_run_is_hashed_again(tmp_path: Path) -> None:
    """A finished file in staging (an earlier, killed run verified it) was overwritten with
    zeros of the same size: it is hashed again, removed and downloaded afresh, never trusted
    on its size."""
    model, files = make_source(tmp_path, [300_000, 200_000])
    staging = tmp_path / "staging"
    good = staging / "v0/seg1.m4s"
    bad = staging / "v0/seg0.m4s"
    good.parent.mkdir(parents=True)
    good.write_bytes(files["/titles/t/v0/seg1.m4s"])
    bad.write_bytes(bytes(300_000))
    log: list[dict[str, str]] = []
    with scripted(serve_files(files, log)) as server:
        progress = fill(server.url, staging)
    assert_verified(staging, model)
    fetched = [r[":target"] for r in log]
    assert "/titles/t/v0/seg0.m4s" in fetched  # the zeroed one came again
    assert "/titles/t/v0/seg1.m4s" not in fetched  # the intact one was kept
    assert progress.downloaded == 300_000


def test_a_source_no_request_can_be_made_of_fails_over_to_the_next(tmp_path: Path) -> None:
    """A plan that slipped past validation (built in code) with an unusable first source:
    that source fails (no ValueError escapes) and the title fills from the next one."""
    model, files = make_source(tmp_path, [100_000])
    progress = TitleProgress("t")
    with scripted(serve_files(files, [])) as server:
        title = PlannedTitle.model_construct(
            id="t", digest=None, sources=("http://127.0.0.1:99999", server.url)
        )

        async def go() -> None:
            pool = Pool()
            try:
                pacer = Pacer(None, None, sleep=FakeSleep())
                staging = StagingLayout(tmp_path / "staging")
                await TitleFetcher(pool, title, staging, pacer, FAST, 2, progress).run()
            finally:
                pool.close()

        asyncio.run(go())
    assert_verified(tmp_path / "staging", model)
    assert progress.source == server.url


@pytest.mark.parametrize("answer", ["416", "wrong_content_range"])
def test_a_source_that_always_refuses_the_range_is_not_asked_in_a_loop(
    tmp_path: Path, answer: str
) -> None:
    """Every request for the segment gets a 416 (or a 206 for other bytes): each restart
    counts as an attempt and waits its backoff, so the source is given up after
    attempts_per_source requests, not hammered until the byte budget runs out."""
    _, files = make_source(tmp_path, [300_000])
    seg = "/titles/t/v0/seg0.m4s"
    asked: list[str] = []

    def handler(sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            body = files[req[":target"]]
            if req[":target"] != seg:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            elif answer == "416":
                asked.append(seg)
                sock.sendall(b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n")
            else:
                asked.append(seg)
                sock.sendall(
                    b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1-9/%d\r\n"
                    b"Content-Length: 9\r\n\r\n" % len(body) + body[1:10]
                )

    sleep = FakeSleep()
    pacer = Pacer(None, None, clock=sleep.clock, sleep=sleep)
    with scripted(handler) as server, pytest.raises(FillError, match="seg0"):
        fill(server.url, tmp_path / "staging", pacer, streams=1)
    assert len(asked) == FAST.attempts_per_source
    assert len(sleep.slept) == FAST.attempts_per_source - 1  # a backoff before each restart


def test_a_stream_thread_waiting_on_the_pacer_stops_when_cancelled() -> None:
    """Its wait runs on the loop; on the way out of a Ctrl-C the loop can be busy waiting for
    this very thread (a thread pool's exit), so the thread must not wait on the loop past
    cancel(), or the command hangs. Here the loop is not running at all."""
    loop = asyncio.new_event_loop()
    job = StreamJob(loop)
    outcome: list[BaseException | None] = []

    def stream_thread() -> None:
        try:
            job.sleep(30.0, asyncio.sleep)
            outcome.append(None)
        except BaseException as exc:  # the test reports what ended it
            outcome.append(exc)

    thread = threading.Thread(target=stream_thread, daemon=True)
    thread.start()
    time.sleep(0.3)
    job.cancel()
    thread.join(5)
    try:
        assert not thread.is_alive(), "the stream thread still waits on a loop that is busy"
        assert len(outcome) == 1 and isinstance(outcome[0], Stopped)
    finally:
        loop.run_until_complete(asyncio.sleep(0.01))  # the cancelled wait, never started
        loop.close()


def test_a_window_closing_between_files_stops_the_stream_before_its_next_file(
    tmp_path: Path,
) -> None:
    """A stream thread takes file after file itself: once the window has closed (here as
    each file is staged) it asks for no next file until the window opens again."""
    from datetime import UTC, datetime, timedelta

    from appliance.fill.window import parse_window

    model, files = make_source(tmp_path, [1_000, 2_000, 3_000])
    staging = tmp_path / "staging"
    nights = [0]
    log: list[dict[str, str]] = []

    def now() -> datetime:
        # Open (05:59) each night until that night's file is staged, then closed (06:00:30).
        evening = datetime(2024, 5, 1, 5, 59, tzinfo=UTC) + timedelta(days=nights[0])
        staged = len(list(staging.glob("v0/*.m4s")))
        return evening + timedelta(seconds=90) if staged > nights[0] else evening

    async def sleep(seconds: float) -> None:
        log.append({":target": "wait"})
        nights[0] += 1
        await asyncio.sleep(0)

    pacer = Pacer(None, parse_window("05:59-06:00", "UTC"), now=now, sleep=sleep)
    with scripted(serve_files(files, log)) as server:
        progress = fill(server.url, staging, pacer, streams=1)
    assert_verified(staging, model)
    asked = [r[":target"].rsplit("/", 1)[-1] for r in log if "files.json" not in r[":target"]]
    assert asked == ["seg2.m4s", "wait", "seg1.m4s", "wait", "seg0.m4s"]
    assert progress.retries == 0


def test_an_empty_file_is_staged_without_a_request(tmp_path: Path) -> None:
    model, files = make_source(tmp_path, [0, 5_000])
    log: list[dict[str, str]] = []
    with scripted(serve_files(files, log)) as server:
        fill(server.url, tmp_path / "staging")
    assert_verified(tmp_path / "staging", model)
    assert "/titles/t/v0/seg0.m4s" not in [r[":target"] for r in log]

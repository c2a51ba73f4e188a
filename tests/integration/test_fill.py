"""The fill client against a real `edgeflix origin serve` on loopback, through the CLI:
from scratch, resume after SIGKILL, a corrupt byte at the source, a dead peer falling back
to the origin, and a plan that prunes titles it no longer wants.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeflix import titlefiles
from edgeflix.titlefiles import TitleFiles
from tests.conftest import run_cli
from tests.integration.serve_support import serving_origin, start

MiB = 1 << 20


def make_title(store: Path, title_id: str, sizes: list[int], seed: int = 1) -> TitleFiles:
    """A fake packaged title: random segments plus a playlist, with a real files.json."""
    folder = store / "titles" / title_id
    rnd = random.Random(seed)
    (folder / "v0").mkdir(parents=True)
    (folder / "master.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:7\n")
    for i, size in enumerate(sizes):
        (folder / "v0" / f"seg{i:03d}.m4s").write_bytes(rnd.randbytes(size))
    return write_files_json(folder, title_id, len(sizes))


def write_files_json(folder: Path, title_id: str, segments: int) -> TitleFiles:
    (folder / "files.json").unlink(missing_ok=True)
    entries = tuple(titlefiles.scan(folder))
    model = TitleFiles(
        id=title_id,
        title=title_id,
        duration=float(segments),
        segment_seconds=1.0,
        created="2024-01-01T00:00:00Z",
        renditions=(),
        files=entries,
        total_bytes=sum(e.size for e in entries),
    )
    (folder / "files.json").write_bytes(titlefiles.render(model))
    return model


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    store = tmp_path_factory.mktemp("origin")
    make_title(store, "small", [300_000, 200_000, 50_000], seed=1)
    make_title(store, "big", [3 * MiB, 3 * MiB, 2 * MiB], seed=2)
    make_title(store, "other", [100_000], seed=3)
    make_title(store, "corrupt", [400_000, 400_000], seed=4)
    victim = store / "titles/corrupt/v0/seg001.m4s"
    data = bytearray(victim.read_bytes())
    data[123_456] ^= 0x01  # one flipped bit, same size: only SHA-256 can tell
    victim.write_bytes(bytes(data))
    with serving_origin(store) as origin:
        yield origin.url, store


def appliance_config(tmp: Path, plan: Path | None = None) -> Path:
    for name in ("d0", "d1"):
        (tmp / name).mkdir(exist_ok=True)
    text = f"""
[storage]
disks = [ {{ path = "{tmp}/d0", tier = "ssd" }}, {{ path = "{tmp}/d1", tier = "ssd" }} ]
index = "{tmp}/index.sqlite"
[fill]
staging = "{tmp}/staging"
"""
    if plan is not None:
        text += f'plan = "{plan}"\n'
    path = tmp / "appliance.toml"
    path.write_text(text)
    return path


def peer_pair(tmp: Path) -> tuple[Path, Path]:
    """Configs of appliance A, which serves (a peer for B), and B, which fills."""
    a_dir, b_dir = tmp / "a", tmp / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a_config = appliance_config(a_dir)
    with a_config.open("a") as fh:
        fh.write('[serve]\nlisten = "127.0.0.1:0"\n[admin]\nlisten = "127.0.0.1:0"\n')
    return a_config, appliance_config(b_dir)


def listing(config: Path) -> dict[str, dict[str, object]]:
    out = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True).stdout
    return {t["id"]: t for t in json.loads(out)}


def fill(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["appliance", "fill", "--config", str(config), "--json", *args], timeout=120)


def test_fill_from_scratch_then_status(origin: tuple[str, Path], tmp_path: Path) -> None:
    url, store = origin
    config = appliance_config(tmp_path)
    proc = fill(config, "--from", url, "--title", "small")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    small = report["titles"]["small"]
    total = titlefiles.read(store / "titles/small")[0].total_bytes
    assert small["state"] == "ready" and small["downloaded"] == total == small["total"]
    assert listing(config)["small"]["state"] == "ready"
    assert not (tmp_path / "staging/small").exists()
    verify = run_cli(["appliance", "verify", "--config", str(config), "--json"], check=True)
    assert json.loads(verify.stdout)["problems"] == []

    again = fill(config, "--from", url, "--title", "small")
    assert again.returncode == 0 and json.loads(again.stdout)["kept"] == ["small"]

    # Exit 3 when degraded (a busy test machine can be): the state is checked, not a 0.
    status = run_cli(["appliance", "status", "--config", str(config), "--json"])
    doc = json.loads(status.stdout)
    assert doc["health"]["state"] in ("ok", "degraded")
    assert status.returncode == {"ok": 0, "degraded": 3}[doc["health"]["state"]], status.stderr
    assert doc["health"]["disks_out_of_service"] == []
    assert len(doc["profile"]["disks"]) == 2 and doc["profile"]["cpu"]["logical_cores"] >= 1
    assert doc["fill"]["titles"]["small"]["state"] == "held"


def test_an_update_downloads_only_what_changed(tmp_path: Path) -> None:
    """A new version of a held title (one segment re-encoded, a new playlist): the files it
    shares with the stored version are linked from the store and re-hashed, not fetched."""
    store = tmp_path / "origin"
    make_title(store, "film", [300_000, 200_000, 100_000], seed=5)
    (tmp_path / "app").mkdir()
    config = appliance_config(tmp_path / "app")
    folder = store / "titles/film"
    with serving_origin(store) as origin:
        assert fill(config, "--from", origin.url, "--title", "film").returncode == 0
        (folder / "v0/seg001.m4s").write_bytes(random.Random(6).randbytes(250_000))
        (folder / "master.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:7\n# v2\n")
        model = write_files_json(folder, "film", 3)
        # The new digest, as the fleet's plan names it (a plain --title keeps what is held).
        plan = tmp_path / "plan.json"
        wanted = {"id": "film", "sources": [origin.url], "digest": titlefiles.read(folder)[1]}
        plan.write_text(json.dumps({"titles": [wanted]}))
        proc = fill(config, "--plan", str(plan))
    assert proc.returncode == 0, proc.stderr
    film = json.loads(proc.stdout)["titles"]["film"]
    changed = 250_000 + (folder / "master.m3u8").stat().st_size
    assert (film["state"], film["downloaded"], film["reused"]) == ("ready", changed, 400_000)
    held = listing(config)["film"]
    assert held["state"] == "ready" and held["digest"] == titlefiles.read(folder)[1]
    verify = run_cli(["appliance", "verify", "--config", str(config), "--json"], check=True)
    assert json.loads(verify.stdout)["problems"] == []
    assert model.total_bytes == film["total"]


def test_fill_resumes_after_sigkill(origin: tuple[str, Path], tmp_path: Path) -> None:
    url, store = origin
    config = appliance_config(tmp_path)
    total = titlefiles.read(store / "titles/big")[0].total_bytes
    # 16 Mbit/s: the 8 MiB title takes ~4 s, so the kill lands mid-file.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeflix.cli",
            "appliance",
            "fill",
            "--config",
            str(config),
            "--from",
            url,
            "--title",
            "big",
            "--cap-mbps",
            "16",
            "--streams",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    partial = 0
    while time.monotonic() < deadline and proc.poll() is None:
        partial = sum(p.stat().st_size for p in staged(tmp_path, "big", "*.part"))
        if partial > MiB:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert partial > MiB, "the fill finished or never started before the kill"
    assert "big" not in listing(config)  # nothing half-filled is servable

    again = fill(config, "--from", url, "--title", "big")
    assert again.returncode == 0, again.stderr
    big = json.loads(again.stdout)["titles"]["big"]
    assert big["state"] == "ready"
    assert 0 < big["downloaded"] < total - MiB  # the bytes before the kill were kept
    verify = run_cli(["appliance", "verify", "--config", str(config), "--json"], check=True)
    assert json.loads(verify.stdout)["problems"] == []
    assert listing(config)["big"]["state"] == "ready"


def test_corrupt_byte_at_source_is_caught(origin: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = origin
    config = appliance_config(tmp_path)
    proc = fill(config, "--from", url, "--title", "corrupt")
    assert proc.returncode != 0
    assert "SHA-256 mismatch" in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["titles"]["corrupt"]["state"] == "failed"
    assert "corrupt" not in listing(config)
    # The good file stays in staging (on its disk) for the next attempt; the bad one is not kept.
    names = {p.name for p in staged(tmp_path, "corrupt", "v0/*")}
    assert "seg000.m4s" in names and "seg001.m4s" not in names


def staged(tmp_path: Path, title: str, pattern: str) -> list[Path]:
    """A title's files waiting in staging: files.json under [fill] staging, each media file
    in the staging folder of the disk it will be stored on (appliance/fill/layout.py)."""
    roots = [tmp_path / "staging" / title, *(tmp_path.glob(f"d*/.staging/{title}"))]
    return [p for root in roots for p in root.rglob(pattern) if p.is_file()]


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def test_dead_peer_falls_back_to_origin(origin: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = origin
    config = appliance_config(tmp_path)
    proc = fill(config, "--from", _dead_url(), "--from", url, "--title", "other")
    assert proc.returncode == 0, proc.stderr
    assert "fill.source_failed" in proc.stderr
    assert listing(config)["other"]["state"] == "ready"


def test_plan_file_prunes_after_new_titles_are_complete(
    origin: tuple[str, Path], tmp_path: Path
) -> None:
    url, store = origin
    plan = tmp_path / "plan.json"
    config = appliance_config(tmp_path, plan)
    digest = titlefiles.read(store / "titles/small")[1]
    plan.write_text(json.dumps({"titles": [{"id": "small", "digest": digest, "sources": [url]}]}))
    assert fill(config).returncode == 0
    plan.write_text(json.dumps({"titles": [{"id": "other", "sources": [url]}], "streams": 2}))
    # None of the titles held is in it: refused as a likely mistake, unless meant.
    refused = fill(config)
    assert refused.returncode != 0 and "--prune-all" in refused.stderr
    proc = fill(config, "--prune-all")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deleted"] == ["small"]
    assert set(listing(config)) == {"other"}
    wrong = "0" * 64
    plan.write_text(json.dumps({"titles": [{"id": "small", "digest": wrong, "sources": [url]}]}))
    proc = fill(config, "--prune-all")
    assert proc.returncode != 0 and "digest" in proc.stderr
    assert set(listing(config)) == {"other"}  # a failed fill deletes nothing


def test_window_closing_mid_title_pauses_then_resumes(
    origin: tuple[str, Path], tmp_path: Path
) -> None:
    """Through the library: the window closes after some chunks; the streams stop, wait for
    the next opening (a fake sleep that moves the fake clock), then resume with Range."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from appliance.fill.downloader import Pacer, TitleFetcher, TitleProgress
    from appliance.fill.layout import StagingLayout
    from appliance.fill.plan import PlannedTitle
    from appliance.fill.transport import Pool
    from appliance.fill.window import parse_window

    url, store = origin
    clock = {"now": datetime(2024, 5, 1, 5, 59, 59, tzinfo=UTC)}
    slept: list[float] = []
    waiting: set[str] = set()
    chunks = {"n": 0}

    def now() -> datetime:
        chunks["n"] += 1
        if chunks["n"] == 10:  # close the window after a few chunks have arrived
            clock["now"] = datetime(2024, 5, 1, 6, 0, 1, tzinfo=UTC)
        return clock["now"]

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if seconds >= 60:
            waiting.add(progress.state)  # what status shows while the window is shut
        clock["now"] += timedelta(seconds=seconds)
        await asyncio.sleep(0)

    window = parse_window("02:00-06:00", "UTC")
    pacer = Pacer(None, window, now=now, sleep=sleep)
    progress = TitleProgress("big")

    async def run() -> None:
        pool = Pool()
        try:
            title = PlannedTitle(id="big", sources=(url,))
            fetcher = TitleFetcher(
                pool, title, StagingLayout(tmp_path / "big"), pacer, streams=2, progress=progress
            )
            await fetcher.run()
        finally:
            pool.close()

    asyncio.run(run())
    model = titlefiles.read(store / "titles/big")[0]
    assert titlefiles.verify(tmp_path / "big", model) == []
    assert slept and sum(slept) >= 19 * 3600  # waited for 02:00 the next day
    assert clock["now"] >= datetime(2024, 5, 2, 2, 0, tzinfo=UTC)
    assert progress.downloaded == model.total_bytes  # resumed, not restarted
    assert waiting == {"paused"} and progress.state == "downloading"


def test_peer_fill_from_a_running_appliance(origin: tuple[str, Path], tmp_path: Path) -> None:
    """Appliance A fills from the origin and serves; B fills from A alone (the peer path),
    and for a title A lacks, B falls back from A (404) to the origin."""

    url, store = origin
    a_config, b_config = peer_pair(tmp_path)
    assert fill(a_config, "--from", url, "--title", "small").returncode == 0
    peer = start(["appliance", "run", "--config", str(a_config)], ("listening", "admin"))
    try:
        proc = fill(b_config, "--from", peer.url, "--title", "small")
        assert proc.returncode == 0, proc.stderr
        total = titlefiles.read(store / "titles/small")[0].total_bytes
        assert json.loads(proc.stdout)["titles"]["small"]["downloaded"] == total
        assert "fill.source_failed" not in proc.stderr
        proc = fill(b_config, "--from", peer.url, "--from", url, "--title", "other")
        assert proc.returncode == 0, proc.stderr
        assert "fill.source_failed" in proc.stderr  # the peer said 404, the origin had it
        assert set(listing(b_config)) == {"small", "other"}
    finally:
        peer.stop()

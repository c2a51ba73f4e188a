"""Fill throughput: the appliance's fill client vs curl, same files, same parallelism, same
local `edgeflix origin serve`, alternating runs. Goal: fill >= 0.9x curl's bytes/s with
SHA-256 verification on (curl verifies nothing).

Rows: `curl` (the reference), `fill` (download + SHA-256 into staging: the network part of
a fill), `fill+load` (the same plus the hand-off into a store on the same filesystem, where
verified staging files are moved in: appliance.fill.runner.FillRun in-process, into an
existing store from which the title was removed before each round, untimed), and
`fill CLI` (the whole `edgeflix appliance fill` process, whose interpreter start-up and
imports are a fixed cost that curl does not have; `CLI start` measures that cost alone with
`appliance fill --help`). curl's own start-up (`curl --version`) is measured too, and the
in-process rows are compared with curl less it, so neither side carries a process start the
other does not. Each round runs the four in a rotated order. The load average is printed
before and after: the machine is shared.

    .venv/bin/python bench/fill.py [--files 48] [--size-mib 2] [--streams 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quiet import wait_for_quiet  # noqa: E402

from appliance import config as appliance_config  # noqa: E402
from appliance.fill.downloader import Pacer, TitleFetcher  # noqa: E402
from appliance.fill.layout import StagingLayout  # noqa: E402
from appliance.fill.plan import FillPlan, PlannedTitle  # noqa: E402
from appliance.fill.runner import FillRun  # noqa: E402
from appliance.fill.storage import StoreStorage  # noqa: E402
from appliance.fill.transport import Pool  # noqa: E402
from appliance.store import Store  # noqa: E402
from edgeflix import titlefiles  # noqa: E402
from edgeflix.titlefiles import TitleFiles  # noqa: E402


def make_title(store: Path, title_id: str, files: int, size: int) -> TitleFiles:
    folder = store / "titles" / title_id
    (folder / "v0").mkdir(parents=True)
    for i in range(files):
        (folder / "v0" / f"seg{i:04d}.m4s").write_bytes(os.urandom(size))
    entries = tuple(titlefiles.scan(folder))
    model = TitleFiles(
        id=title_id,
        title=title_id,
        duration=float(files),
        segment_seconds=1.0,
        created="2024-01-01T00:00:00Z",
        renditions=(),
        files=entries,
        total_bytes=sum(e.size for e in entries),
    )
    (folder / "files.json").write_bytes(titlefiles.render(model))
    return model


def start_origin(store: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeflix.cli",
            "origin",
            "serve",
            "--store",
            str(store),
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"origin did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def run_fill(url: str, title_id: str, staging: Path, streams: int) -> float:
    shutil.rmtree(staging, ignore_errors=True)

    async def go() -> None:
        pool = Pool(max_idle=streams * 2)
        try:
            title = PlannedTitle(id=title_id, sources=(url,))
            await TitleFetcher(
                pool, title, StagingLayout(staging), Pacer(None, None), streams=streams
            ).run()
        finally:
            pool.close()

    start = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - start


def appliance_toml(work: Path) -> Path:
    shutil.rmtree(work, ignore_errors=True)
    (work / "d0").mkdir(parents=True)
    config = work / "appliance.toml"
    config.write_text(
        f'[storage]\ndisks = [ {{ path = "{work}/d0", tier = "ssd" }} ]\n'
        f'index = "{work}/index.sqlite"\n[fill]\nstaging = "{work}/staging"\n'
    )
    return config


def fresh_title(config_path: Path, title_id: str) -> appliance_config.ApplianceConfig:
    """An appliance whose store exists (index, disks) but does not hold the title: what a
    fill meets in the field. Untimed."""
    config = appliance_config.load(config_path)
    store = Store(config.storage)
    try:
        if any(t.id == title_id for t in store.listing()):
            store.remove(title_id)
    finally:
        store.close()
    shutil.rmtree(config.fill.staging, ignore_errors=True)
    return config


def run_fill_load(url: str, title_id: str, config_path: Path, streams: int) -> float:
    config = fresh_title(config_path, title_id)
    plan = FillPlan(titles=(PlannedTitle(id=title_id, sources=(url,)),), streams=streams)
    start = time.perf_counter()
    fill = FillRun(plan, StoreStorage(config.storage), config.fill.staging, Pacer(None, None))
    report = asyncio.run(fill.run())
    elapsed = time.perf_counter() - start
    if report.titles[title_id].state != "ready":
        raise SystemExit(f"fill+load failed: {report.titles[title_id]}")
    return elapsed


def run_cli(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "edgeflix.cli", *args], check=True, capture_output=True, cwd=ROOT
    )
    return time.perf_counter() - start


def run_fill_cli(url: str, title_id: str, config_path: Path, streams: int) -> float:
    fresh_title(config_path, title_id)
    fill = ["appliance", "fill", "--config", str(config_path), "--from", url, "--title", title_id]
    return run_cli([*fill, "--streams", str(streams)])


def run_process(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - start


def run_curl(url: str, model: TitleFiles, out: Path, streams: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = ["curl", "--silent", "--fail", "--parallel", "--parallel-max", str(streams)]
    for entry in model.files:
        args += [
            "-o",
            str(out / entry.path.replace("/", "_")),
            f"{url}/titles/{model.id}/{entry.path}",
        ]
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--size-mib", type=float, default=2.0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed (apt-get install curl)")
    with tempfile.TemporaryDirectory(prefix="edgeflix-bench-fill-") as tmp_name:
        tmp = Path(tmp_name)
        model = make_title(tmp / "origin", "bench", opts.files, int(opts.size_mib * (1 << 20)))
        origin, url = start_origin(tmp / "origin")
        times: dict[str, list[float]] = {"curl": [], "fill": [], "fill+load": [], "fill CLI": []}
        startup: list[float] = []
        curl_start: list[float] = []
        wait_for_quiet()
        load_before = os.getloadavg()
        load_config, cli_config = appliance_toml(tmp / "load"), appliance_toml(tmp / "cli")
        try:
            # One untimed run of each first: page cache, threads, the store's files.
            run_curl(url, model, tmp / "curl", opts.streams)
            run_fill(url, "bench", tmp / "staging", opts.streams)
            run_fill_load(url, "bench", load_config, opts.streams)
            run_fill_cli(url, "bench", cli_config, opts.streams)
            runs = {
                "curl": lambda: run_curl(url, model, tmp / "curl", opts.streams),
                "fill": lambda: run_fill(url, "bench", tmp / "staging", opts.streams),
                "fill+load": lambda: run_fill_load(url, "bench", load_config, opts.streams),
                "fill CLI": lambda: run_fill_cli(url, "bench", cli_config, opts.streams),
            }
            order = list(runs)
            for round_no in range(opts.rounds):
                # Rotated each round: no client always runs right after the same other.
                for name in order[round_no % 4 :] + order[: round_no % 4]:
                    times[name].append(runs[name]())
                startup.append(run_cli(["appliance", "fill", "--help"]))
                curl_start.append(run_process(["curl", "--version"]))
        finally:
            origin.terminate()
            origin.wait(10)
        load_after = os.getloadavg()
    total = model.total_bytes
    curl_s = statistics.median(times["curl"])
    curl_rate = total / curl_s
    # In-process rows start no process: against curl's transfer alone.
    curl_transfer_rate = total / max(curl_s - statistics.median(curl_start), 1e-9)
    print(
        f"fill bench: {opts.files} files x {opts.size_mib} MiB = {total / 2**20:.0f} MiB, "
        f"{opts.streams} streams, {opts.rounds} alternating rounds, loopback"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print(f"{'client':<10} {'median s':>9} {'MB/s':>9} {'vs curl':>8}")
    for name, samples in times.items():
        med = statistics.median(samples)
        rate = total / med
        against = curl_rate if name in ("curl", "fill CLI") else curl_transfer_rate
        print(f"{name:<10} {med:>9.3f} {rate / 1e6:>9.1f} {rate / against:>7.2f}x")
    print(f"{'CLI start':<10} {statistics.median(startup):>9.3f}  (`appliance fill --help`)")
    print(f"{'curl start':<10} {statistics.median(curl_start):>9.3f}  (`curl --version`; "
          "fill and fill+load are compared with curl less it)")  # fmt: skip


if __name__ == "__main__":
    main()

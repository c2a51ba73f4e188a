"""Soak: do the long-running daemons leak? A real appliance (2 workers; tokens off, then
tokens required) takes a player fleet's request mix (bench/soak_players.py) for a bounded
number of requests, and a real fleet manager takes heartbeats and /steer calls
(bench/soak_fleet.py). Each process's RSS, open fds and threads are sampled as it goes;
start (after a warm-up, in a settled state) is compared with the end, growth is scaled to
100k requests, and growth beyond the bounds below is flagged (exit status 1).

    .venv/bin/python bench/soak.py [--requests 300000] [--max-seconds 1200] [--fleet-calls 30000]
                                   [--skip-fleet] [--skip-appliance] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quiet import wait_for_quiet
from soak_players import Tally, Target, drive

from edgeflix import titlefiles, tokens

# Flag growth from the settled start to the settled end beyond these.
RSS_BOUND_MB = 5.0  # per process
FD_BOUND = 0  # any fd growth after warm-up is a leak
THREAD_BOUND = 0
SMALL, LARGE = 24, 6  # 64 KiB and 2 MiB segments in the title
WORKERS, MAX_CONNECTIONS, KEEPALIVE_S = 2, 48, 1.0
MOVE_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Figures:
    rss_kb: int
    fds: int
    threads: int


def figures(pid: int) -> Figures | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # exited, not yet reaped (a zombie has no memory): gone
        return None
    return Figures(int(fields["VmRSS"].split()[0]), fds, int(fields["Threads"]))


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def sample(pids: dict[str, int]) -> dict[str, Figures]:
    return {name: f for name, pid in pids.items() if (f := figures(pid)) is not None}


def settle(pids: dict[str, int], at_least_s: float, max_s: float = 30.0) -> dict[str, Figures]:
    """Figures once the processes are at rest: connections timed out, open-file caches swept
    (fd counts unchanged over three polls), bounded by `max_s`."""
    time.sleep(at_least_s)
    last: dict[str, Figures] = {}
    calm = 0
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline and calm < 3:
        now = sample(pids)
        same = {k: v.fds for k, v in now.items()} == {k: v.fds for k, v in last.items()}
        calm = calm + 1 if same else 0
        last = now
        time.sleep(0.5)
    return last


# -- the appliance ------------------------------------------------------------------------


def make_title(folder: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    small = tuple(f"v0/seg{i}.m4s" for i in range(SMALL))
    large = tuple(f"v1/seg{i}.m4s" for i in range(LARGE))
    for rel in small + large:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom((64 << 10) if rel.startswith("v0") else (2 << 20)))
    entries = titlefiles.scan(folder)
    model = titlefiles.TitleFiles(
        id="soak",
        title="soak",
        duration=1.0,
        segment_seconds=1.0,
        created="2026-01-01T00:00:00Z",
        renditions=(),
        files=tuple(entries),
        total_bytes=sum(e.size for e in entries),
    )
    (folder / "files.json").write_bytes(titlefiles.render(model))
    return small, large


def start_appliance(
    root: Path, source: Path, tokens_on: bool, secret: bytes
) -> tuple[subprocess.Popen[bytes], int]:
    root.mkdir(parents=True)
    (root / "disk0").mkdir()
    config = root / "appliance.toml"
    b64 = base64.b64encode(secret).decode()
    auth = 'tokens = "off"\n'
    if tokens_on:
        auth = f'tokens = "required"\nkeys = [ {{ id = "k1", secret = "{b64}" }} ]\n'

    config.write_text(
        f'[storage]\ndisks = [ {{ path = "{root}/disk0", tier = "ssd" }} ]\n'
        f'index = "{root}/index.sqlite"\n'
        # The tier mover's thread opens its hit book at its first round: soon, so the
        # baseline (after warm-up) already has it.
        f"move_interval_s = {MOVE_INTERVAL_S}\n"
        f'[serve]\nlisten = "127.0.0.1:0"\nworkers = {WORKERS}\n'
        f"max_connections = {MAX_CONNECTIONS}\nkeepalive_timeout_s = {KEEPALIVE_S}\n"
        f"header_timeout_s = 2.0\nshutdown_timeout_s = 2.0\n"
        f'[admin]\nlisten = "127.0.0.1:0"\n[auth]\n{auth}'
    )
    cli = [sys.executable, "-m", "edgeflix.cli", "appliance"]
    loaded = subprocess.run(
        [*cli, "load", "--config", str(config), "--title", "soak", "--from", str(source)],
        capture_output=True,
        text=True,
    )
    if loaded.returncode != 0:  # its one error line, not a CalledProcessError hiding it
        raise SystemExit(f"appliance load failed: {loaded.stderr.strip()}")
    with open(root / "appliance.log", "wb") as log:
        proc = subprocess.Popen(
            [*cli, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=log, bufsize=0
        )
    assert proc.stdout is not None
    deadline, port = time.monotonic() + 60, 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        line = proc.stdout.readline().decode() if ready else ""
        if line.startswith("listening on "):
            port = int(line.strip().rsplit(":", 1)[1])
        if line.startswith("admin on ") and port:
            return proc, port
        if ready and not line:
            break
    stop(proc)
    raise SystemExit(f"the appliance did not start:\n{log_tail(root / 'appliance.log')}")


def log_tail(path: Path, lines: int = 20) -> str:
    """A failed daemon's last log lines, for the message: its folder is removed on exit."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def run_load(
    pool: ProcessPoolExecutor,
    clients: int,
    target: Target,
    requests: int,
    seconds: float,
    seed: int,
    overflow: bool,
) -> Tally:
    futures = [
        pool.submit(
            drive,
            target,
            requests // clients,
            seconds,
            seed * 100 + i,
            KEEPALIVE_S,
            overflow and i == 0,
        )
        for i in range(clients)
    ]
    total = Tally()
    for fut in futures:
        tally = fut.result()
        total.requests += tally.requests
        total.outcomes.update(tally.outcomes)
        total.errors.extend(tally.errors[: 20 - len(total.errors)])
        total.overflow_503 += tally.overflow_503
    return total


def soak_appliance(
    root: Path, requests: int, max_seconds: float, tokens_on: bool, clients: int
) -> dict[str, Any]:
    source = root / "src"
    if not source.exists():
        make_title(source)
    small = tuple(f"v0/seg{i}.m4s" for i in range(SMALL))
    large = tuple(f"v1/seg{i}.m4s" for i in range(LARGE))
    secret = os.urandom(32)
    if tokens_on:
        token = tokens.sign("soak", tokens.SigningKey("k1", secret), int(time.time()) + 86400)
        prefix = f"/t/{token}/titles/soak/"
    else:
        prefix = "/titles/soak/"
    phase = "tokens required" if tokens_on else "tokens off"
    proc, port = start_appliance(
        root / ("app-tokens" if tokens_on else "app-plain"), source, tokens_on, secret
    )
    target = Target("127.0.0.1", port, prefix, tokens_on, small, large, WORKERS * MAX_CONNECTIONS)
    started = time.monotonic()
    series: list[tuple[int, dict[str, Figures]]] = []
    try:
        workers = children(proc.pid)
        pids = {"supervisor": proc.pid} | {f"worker{i}": p for i, p in enumerate(workers)}
        hits_wal = Path(
            f"{root}/{'app-tokens' if tokens_on else 'app-plain'}/index.sqlite.hits.sqlite-wal"
        )
        with ProcessPoolExecutor(clients) as pool:
            # At least 2000 (caches, pools, JIT-less but warm), never more than half the run.
            warm = min(max(requests // 10, 2000), requests // 2)
            tally = run_load(pool, clients, target, warm, max_seconds / 4, 1, overflow=True)
            since = time.monotonic() - started
            base = settle(pids, max(KEEPALIVE_S + 3, 3 * MOVE_INTERVAL_S - since))
            series.append((0, base))
            done, chunks = 0, 10
            for n in range(chunks):
                left = max_seconds - (time.monotonic() - started)
                if left <= 5:
                    break
                more = run_load(
                    pool,
                    clients,
                    target,
                    (requests - warm) // chunks,
                    left,
                    2 + n,
                    overflow=n % 3 == 0,
                )
                tally.requests += more.requests
                tally.outcomes.update(more.outcomes)
                tally.errors.extend(more.errors[: 20 - len(tally.errors)])
                done += more.requests
                series.append((done, sample(pids)))
            end = settle(pids, KEEPALIVE_S + 3)
            series.append((done, end))
        alive = children(proc.pid) == workers
    finally:
        stop(proc)
    return {
        "phase": phase,
        "requests": tally.requests,
        "measured_requests": done,
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "errors": tally.errors,
        "workers_unchanged": alive,
        "hits_wal_bytes": hits_wal.stat().st_size if hits_wal.exists() else 0,
        "rows": growth_rows(base, end, done),
        "series": [(n, {k: asdict(v) for k, v in f.items()}) for n, f in series],
    }


def growth_rows(
    base: dict[str, Figures], end: dict[str, Figures], requests: int
) -> list[dict[str, Any]]:
    rows = []
    per = 100_000 / max(requests, 1)
    for name in sorted(base):
        if name not in end:
            rows.append({"process": name, "flags": ["process gone"]})
            continue
        a, b = base[name], end[name]
        rss_mb = (b.rss_kb - a.rss_kb) / 1024
        flags = []
        if rss_mb > RSS_BOUND_MB:
            flags.append(f"RSS +{rss_mb:.1f} MB > {RSS_BOUND_MB} MB")
        if b.fds - a.fds > FD_BOUND:
            flags.append(f"fds +{b.fds - a.fds}")
        if b.threads - a.threads > THREAD_BOUND:
            flags.append(f"threads +{b.threads - a.threads}")
        row: dict[str, Any] = {"process": name}
        rows.append(
            row
            | {
                "rss_mb": [a.rss_kb / 1024, b.rss_kb / 1024],
                "fds": [a.fds, b.fds],
                "threads": [a.threads, b.threads],
                "rss_mb_per_100k": rss_mb * per,
                "fds_per_100k": (b.fds - a.fds) * per,
                "flags": flags,
            }
        )
    return rows


def print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(
        f"{'process':<12} {'RSS MB start→end':>18} {'fds':>10} {'threads':>9} "
        f"{'RSS MB/100k':>12} {'fds/100k':>9}  flags"
    )
    for r in rows:
        if "rss_mb" not in r:
            print(f"{r['process']:<12} {'':>18} {'':>10} {'':>9} {'':>12} {'':>9}  {r['flags']}")
            continue
        rss = f"{r['rss_mb'][0]:.1f}→{r['rss_mb'][1]:.1f}"
        fds = f"{r['fds'][0]}→{r['fds'][1]}"
        thr = f"{r['threads'][0]}→{r['threads'][1]}"
        flags = "; ".join(r["flags"]) or "ok"
        print(
            f"{r['process']:<12} {rss:>18} {fds:>10} {thr:>9} {r['rss_mb_per_100k']:>+12.2f} "
            f"{r['fds_per_100k']:>+9.1f}  {flags}"
        )


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=300_000,
        help="appliance requests per phase (tokens off, tokens required)",
    )
    parser.add_argument("--max-seconds", type=float, default=600.0, help="per phase")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--fleet-calls", type=int, default=30_000)
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--skip-appliance", action="store_true")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    # Below these the phases have nothing after warm-up to measure (or no client at all).
    if args.requests < 1000 or args.fleet_calls < 100 or not 1 <= args.clients <= 64:
        parser.error("--requests >= 1000, --fleet-calls >= 100 and --clients 1..64, please")
    if args.max_seconds <= 0:
        parser.error("--max-seconds must be above 0")
    # A SIGTERM (`timeout`, a CI job stopped) unwinds like Ctrl-C: the daemons started here
    # are stopped and the temporary folder removed by the `finally`s, not left running.
    signal.signal(signal.SIGTERM, _terminated)
    root = Path(tempfile.mkdtemp(prefix="edgeflix-soak-"))
    report: dict[str, Any] = {
        "bounds": {"rss_mb": RSS_BOUND_MB, "fds": FD_BOUND, "threads": THREAD_BOUND},
        "phases": [],
    }
    try:
        idle = wait_for_quiet()
        report["idle_share_before"] = round(idle, 2)
        if not args.skip_appliance:
            for tokens_on in (False, True):
                report["phases"].append(
                    soak_appliance(root, args.requests, args.max_seconds, tokens_on, args.clients)
                )
        if not args.skip_fleet:
            from soak_fleet import soak_fleet

            report["fleet"] = soak_fleet(root / "fleet", args.fleet_calls, args.max_seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    flagged = [r for p in report["phases"] for r in p["rows"] if r["flags"]]
    flagged += [r for r in report.get("fleet", {}).get("rows", []) if r["flags"]]
    unexpected = sum(p["outcomes"].get("unexpected", 0) for p in report["phases"])
    unexpected += len(report.get("fleet", {}).get("errors", []))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(
            f"soak: {os.cpu_count()} CPUs, machine {report['idle_share_before']:.0%} idle "
            "before the run (other work on the box makes RSS and timing figures noisy)"
        )
        for p in report["phases"]:
            print_rows(
                f"appliance, {p['phase']}: {p['requests']} requests in {p['seconds']} s "
                f"({p['measured_requests']} after warm-up; unexpected answers: "
                f"{p['outcomes'].get('unexpected', 0)}; hits WAL {p['hits_wal_bytes']} B)",
                p["rows"],
            )
            for err in p["errors"][:5]:
                print(f"  unexpected: {err}")
        if "fleet" in report:
            from soak_fleet import print_fleet

            print_fleet(report["fleet"])
        print(
            f"\nbounds: RSS growth <= {RSS_BOUND_MB} MB per process, fd growth <= {FD_BOUND}, "
            f"thread growth <= {THREAD_BOUND}, from the settled start (after warm-up) to the "
            "settled end"
        )
    sys.exit(1 if flagged or unexpected else 0)


if __name__ == "__main__":
    main()

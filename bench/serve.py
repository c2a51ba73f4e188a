"""Serving benchmark: the appliance (tokens off) against nginx (`sendfile on`) on loopback.

Same files (2 MiB and 64 KiB segments, loaded into the appliance with `appliance load`; nginx
serves the appliance's own copies, so both read the same inodes and page cache), same worker
count, same wrk connections; a warm-up run of each, then rounds in ABBA order (who goes first
alternates, so neither always meets the other's leftovers); prints req/s and bytes/s of each,
their ratio with the per-round pairs, and idle RSS per worker. Goals: >= 1.0x nginx bytes/s
on 2 MiB, >= 0.75x nginx req/s on 64 KiB, idle RSS < 40 MB per worker.

    .venv/bin/python bench/serve.py [--workers 2] [--connections 32] [--seconds 8] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quiet import wait_for_quiet

from edgeflix import titlefiles

SIZES = {"2MiB": 2 << 20, "64KiB": 64 << 10}
FILES_PER_SIZE = 8


def ensure_tools() -> None:
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None and not Path(
        f"/usr/sbin/{t}").exists()]  # fmt: skip
    if not missing:
        return
    print(f"installing {', '.join(missing)} from Debian packages", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_title(folder: Path) -> None:
    for name, size in SIZES.items():
        for i in range(FILES_PER_SIZE):
            (folder / name).mkdir(parents=True, exist_ok=True)
            (folder / name / f"seg{i}.m4s").write_bytes(os.urandom(size))
    entries = titlefiles.scan(folder)
    model = titlefiles.TitleFiles(
        id="bench", title="bench", duration=1.0, segment_seconds=1.0,
        created="2026-01-01T00:00:00Z", renditions=(), files=tuple(entries),
        total_bytes=sum(e.size for e in entries),
    )  # fmt: skip
    (folder / "files.json").write_bytes(titlefiles.render(model))


def start_appliance(root: Path, source: Path, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = root / "appliance.toml"
    (root / "disk0").mkdir()
    config.write_text(
        f'[storage]\ndisks = [ {{ path = "{root}/disk0", tier = "ssd" }} ]\n'
        f'index = "{root}/index.sqlite"\n'
        f'[serve]\nlisten = "127.0.0.1:{port}"\nworkers = {workers}\n'
        f'[admin]\nlisten = "127.0.0.1:0"\n[auth]\ntokens = "off"\n'
    )
    edgeflix = [sys.executable, "-m", "edgeflix.cli", "appliance"]
    subprocess.run(
        [*edgeflix, "load", "--config", str(config), "--title", "bench", "--from", str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    proc = subprocess.Popen(
        [*edgeflix, "run", "--config", str(config)], stdout=subprocess.PIPE, bufsize=0
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready and b"admin on" in proc.stdout.readline():
            return proc, port
    proc.kill()
    raise SystemExit("appliance did not start")


def start_nginx(root: Path, source: Path, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    # Open files kept, as the appliance keeps them (edgeflix/http/filecache.py): without it
    # nginx opens, stats and closes every file on every request.
    open_file_cache max=10000 inactive=60s;
    types {{ video/iso.segment m4s; }}
    client_body_temp_path {root}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location /titles/bench/ {{ alias {source}/; }}
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(root)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("nginx did not start")


def child_rss_mb(pid: int) -> list[float]:
    """VmRSS of the serving processes: the children of `pid` (workers of either server)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    rss = []
    for child in out.stdout.split():
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match:
            rss.append(int(match.group(1)) / 1024)
    return rss


def cpu_ticks(pid: int) -> int:
    """utime + stime (clock ticks) of the serving processes: the children of `pid`."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    total = 0
    for child in out.stdout.split():
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def wrk(port: int, name: str, connections: int, seconds: int, threads: int) -> tuple[float, float]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    paths = ", ".join(f'"/titles/bench/{name}/seg{i}.m4s"' for i in range(FILES_PER_SIZE))
    script.write_text(
        f"local paths = {{{paths}}}\nlocal n = 0\n"
        "request = function()\n  n = n % #paths + 1\n"
        "  return wrk.format('GET', paths[n])\nend\n"
    )
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    script.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?)B", out)
    assert m is not None, out
    if re.search(r"Non-2xx", out):
        raise SystemExit(f"non-2xx answers from port {port} during the run:\n{out}")
    return rps, float(m.group(1)) * _UNITS[m.group(2)]


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    ensure_tools()
    root = Path(tempfile.mkdtemp(prefix="edgeflix-bench-serve-"))
    root.chmod(0o755)  # nginx workers drop to an unprivileged user and must read the files
    servers: list[subprocess.Popen[bytes]] = []
    try:
        source = root / "src"
        make_title(source)
        (root / "app").mkdir()
        (root / "ngx").mkdir()
        (root / "ngx" / "nginx-tmp").mkdir()
        app, app_port = start_appliance(root / "app", source, args.workers)
        servers.append(app)
        served = root / "app" / "disk0" / "titles" / "bench"  # the appliance's copies
        ngx, ngx_port = start_nginx(root / "ngx", served, args.workers)
        servers.append(ngx)
        time.sleep(1.0)
        idle = {"appliance": child_rss_mb(app.pid), "nginx": child_rss_mb(ngx.pid)}
        print(f"appliance on port {app_port}, nginx on port {ngx_port}", file=sys.stderr)
        both = (("appliance", app, app_port), ("nginx", ngx, ngx_port))
        wait_for_quiet()
        for name in SIZES:  # warm-up, not counted: connections, sndbuf autotuning, caches
            for _, _, port in both:
                wrk(port, name, args.connections, 2, args.threads)
        load_before = os.getloadavg()
        results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for round_no in range(args.rounds):
            for name in SIZES:
                for who, proc, port in both if round_no % 2 == 0 else both[::-1]:
                    ticks = cpu_ticks(proc.pid)
                    rps, bps = wrk(port, name, args.connections, args.seconds, args.threads)
                    # CPU the servers spent per request: on a shared box the client competes
                    # with them for the same cores, so this is what decides the ratios.
                    cpu_us = (cpu_ticks(proc.pid) - ticks) * _TICK_S * 1e6 / (rps * args.seconds)
                    results.setdefault((name, who), []).append((rps, bps, cpu_us))
        load_after = os.getloadavg()
        print(f"\nserve bench: {args.workers} workers each, wrk -t{args.threads} "
              f"-c{args.connections} -d{args.seconds}s, {args.rounds} ABBA rounds "
              f"(medians); {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
              f"{load_after[0]:.2f} after\n")  # fmt: skip
        print(f"{'size':<7} {'server':<10} {'req/s':>10} {'MB/s':>10} {'CPU us/req':>11}")
        for name in SIZES:
            meds = {}
            for who in ("appliance", "nginx"):
                runs = results[(name, who)]
                rps = statistics.median(r[0] for r in runs)
                bps = statistics.median(r[1] for r in runs)
                cpu = statistics.median(r[2] for r in runs)
                meds[who] = (rps, bps)
                print(f"{name:<7} {who:<10} {rps:>10.0f} {bps / 1e6:>10.1f} {cpu:>11.0f}")
            ratio_r = meds["appliance"][0] / meds["nginx"][0]
            ratio_b = meds["appliance"][1] / meds["nginx"][1]
            print(f"{name:<7} {'ratio':<10} {ratio_r:>9.2f}x {ratio_b:>9.2f}x")
            # Each round's appliance run against that round's nginx run (adjacent in time):
            # the spread shows how much the shared machine moved the figures.
            runs_a, runs_n = results[(name, "appliance")], results[(name, "nginx")]
            paired = [a[1] / n[1] for a, n in zip(runs_a, runs_n, strict=True)]
            shown = " ".join(f"{r:.2f}x" for r in paired)
            print(f"{'':<7} {'per round':<10} {shown} (median {statistics.median(paired):.2f}x)")
        for who, rss in idle.items():
            shown = ", ".join(f"{r:.1f}" for r in rss)
            print(f"idle RSS per worker, {who}: {shown} MB")
        print("goals: 2MiB bytes/s >= 1.0x nginx, 64KiB req/s >= 0.75x nginx, RSS < 40 MB")
    finally:
        for proc in servers:
            stop(proc)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

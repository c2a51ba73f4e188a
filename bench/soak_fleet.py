"""The fleet manager's part of bench/soak.py: a real `edgeflix fleet serve` on loopback takes
heartbeats from simulated appliances (real gRPC, the real proto, beats built and signed by the
appliance's own code: appliance/fleetlink_core.build_beat, edgeflix/proto/auth.sign_call),
their GetPlan/GetKeys follow-ups, /steer calls and now and then a join token, while keys
rotate every few seconds and plans are remade. Watched: the manager's RSS, fds and threads,
its SQLite file and WAL, and the rows of every table.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from soak import figures, growth_rows, log_tail, print_rows, settle, stop

from appliance.fleetlink_core import BeatFigures, CountBatch, HeldTitle, build_beat
from edgeflix.proto import auth
from edgeflix.proto.codec import Counts
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc

METHOD = "/edgeflix.fleet.v1.Fleet/"
APPLIANCES = (
    ("north-a", "10.1.0.5"),
    ("north-b", "10.1.0.6"),
    ("south-a", "10.2.0.5"),
    ("south-b", "10.2.0.6"),
)
HELD = 40  # titles each appliance holds at a time
CHURN_EVERY = 400  # calls between one title leaving the window and a new one arriving
# A join token (one write) every this many calls: with key rotations and plans, enough WAL
# traffic that SQLite must checkpoint (at 1000 pages) within the run.
TOKEN_EVERY = 40
# Live join tokens are kept by design (pruned a month after expiry; tests/fleet): not a leak.
GROWING_BY_DESIGN = frozenset(("join_tokens",))


def start_manager(root: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    root.mkdir(parents=True)
    config = root / "fleet.toml"
    config.write_text(
        f'[server]\ngrpc = "127.0.0.1:0"\nhttp = "127.0.0.1:0"\ndb = "{root}/fleet.sqlite"\n'
        'enrolment = "open"\n'
        '[[sites]]\nname = "north"\nprefixes = ["10.1.0.0/16"]\n'
        '[[sites]]\nname = "south"\nprefixes = ["10.2.0.0/16"]\n'
        # Nothing listens there: the catalogue comes from the beats (and a warning per poll).
        '[origin]\nurl = "http://127.0.0.1:9"\npoll_s = 5.0\n'
        "[heartbeat]\ninterval_s = 1.0\n[planner]\ninterval_s = 2.0\n"
        "[keys]\nrotate_every_s = 3.0\nlead_s = 0.5\nskew_s = 0.5\n"
        "[steering]\ntoken_ttl_s = 5\n"
    )
    with open(root / "fleet.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflix.cli", "fleet", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            bufsize=0,
        )
    assert proc.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(found) < 2 and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        line = proc.stdout.readline().decode() if ready else ""
        if ready and not line:
            break
        word, _, where = line.strip().partition(" on ")
        if where:
            found[word] = where
    if len(found) < 2:
        stop(proc)
        raise SystemExit(f"the fleet manager did not start:\n{log_tail(root / 'fleet.log')}")
    return proc, found["grpc"], found["http"].removeprefix("http://")


def db_figures(db: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for suffix in ("", "-wal"):
        p = Path(f"{db}{suffix}")
        out["db_bytes" if not suffix else "wal_bytes"] = p.stat().st_size if p.exists() else 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out["rows"] = {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
        meta = conn.execute("SELECT key, length(value) FROM meta").fetchall()
        out["meta_bytes"] = dict(meta)
    finally:
        conn.close()
    return out


class SimAppliance:
    def __init__(self, stub: Any, name: str, ip: str) -> None:
        self.stub, self.name, self.url = stub, name, f"http://{ip}:8081"
        self.key = auth.new_private_key()
        self.sequence = 0
        self.plan_version = self.keys_version = 0
        enrol = fleet_pb2.EnrolRequest(
            name=name, url=self.url, public_key=auth.public_key(self.key)
        )
        self.stub.Enrol(enrol, timeout=10)

    def call(self, method: str, request: Any) -> Any:
        body = request.SerializeToString(deterministic=True)
        md = auth.sign_call(self.name, self.key, METHOD + method, body, time.time())
        return getattr(self.stub, method)(request, metadata=md, timeout=10)

    def beat(self, titles: list[str], rng: random.Random) -> None:
        self.sequence += 1
        held = tuple(
            HeldTitle(t, hashlib.sha256(t.encode()).hexdigest(), True, 50 << 20, "ssd")
            for t in titles
        )
        counts = {
            t: Counts(rng.randrange(1, 50), rng.randrange(1, 50) << 20)
            for t in rng.sample(titles, 8)
        }
        fig = BeatFigures(
            "ok",
            (),
            10e9,
            rng.uniform(1e8, 4e9),
            rng.randrange(500),
            {"ssd": (2 << 40, 1 << 40)},
            held,
            self.plan_version,
            self.keys_version,
        )
        resp = self.call(
            "Heartbeat", build_beat(self.name, CountBatch(self.sequence, counts), fig, self.url)
        )
        if resp.plan_version > self.plan_version:
            plan = self.call(
                "GetPlan",
                fleet_pb2.GetPlanRequest(appliance=self.name, have_version=self.plan_version),
            )
            self.plan_version = plan.version or self.plan_version
        if resp.keys_version > self.keys_version:
            keys = self.call(
                "GetKeys",
                fleet_pb2.GetKeysRequest(appliance=self.name, have_version=self.keys_version),
            )
            if not keys.unchanged:
                self.keys_version = keys.keys.version


def soak_fleet(root: Path, calls: int, max_seconds: float) -> dict[str, Any]:
    proc, grpc_at, http_at = start_manager(root)
    db = root / "fleet.sqlite"
    rng = random.Random(7)
    started = time.monotonic()
    series: list[tuple[int, dict[str, Any]]] = []
    channel = grpc.insecure_channel(grpc_at)
    host, port = http_at.rsplit(":", 1)
    web = http.client.HTTPConnection(host, int(port), timeout=10)
    errors: list[str] = []
    done = steers = beats = tokens = 0
    pids = {"fleet": proc.pid}
    try:
        stub = fleet_pb2_grpc.FleetStub(channel)
        sims = [SimAppliance(stub, name, ip) for name, ip in APPLIANCES]

        def run(n: int) -> None:
            nonlocal done, steers, beats, tokens
            deadline = started + max_seconds
            for _ in range(n):
                if time.monotonic() > deadline:
                    return
                first = done // CHURN_EVERY
                window = [f"title-{k:05d}" for k in range(first, first + HELD + 10)]
                try:
                    if done % 2 == 0:
                        sim = sims[(done // 2) % len(sims)]
                        sim.beat(rng.sample(window, HELD), rng)
                        beats += 1
                    else:
                        ip = rng.choice(("10.1.3.4", "10.2.9.9", "192.0.2.7"))
                        web.request("GET", f"/steer?client_ip={ip}&title={rng.choice(window)}")
                        resp = web.getresponse()
                        resp.read()
                        steers += 1
                        if resp.status != 200 and len(errors) < 20:
                            errors.append(f"/steer: {resp.status}")
                    if done % TOKEN_EVERY == TOKEN_EVERY - 1:
                        web.request(
                            "POST",
                            "/join-tokens",
                            body=json.dumps({"site": "north"}),
                            headers={"Content-Type": "application/json"},
                        )
                        web.getresponse().read()
                        tokens += 1
                except (grpc.RpcError, OSError, http.client.HTTPException) as exc:
                    if len(errors) < 20:
                        errors.append(f"{type(exc).__name__}: {exc}")
                done += 1

        run(min(max(calls // 10, 1000), calls // 2))  # warm-up: never more than half
        warm = done
        base = settle(pids, 1.0, 10.0)
        series.append((0, {"proc": base, "db": db_figures(db)}))
        for _ in range(10):
            run((calls - warm) // 10)
            series.append(
                (done - warm, {"proc": {"fleet": figures(proc.pid)}, "db": db_figures(db)})
            )
        end = settle(pids, 1.0, 10.0)
        last_db = db_figures(db)
    finally:
        web.close()
        channel.close()
        stop(proc)
    after_stop = db_figures(db)  # the soft state (popularity, last beats) is saved on stop
    rows = growth_rows(base, end, done - warm)
    first_db = series[0][1]["db"]
    wal_bound = 5 * 1024 * 1024  # SQLite checkpoints at 1000 pages of 4 KiB
    wal_max = max(s["db"]["wal_bytes"] for _, s in series)
    if wal_max > wal_bound:
        rows[0]["flags"].append(f"WAL {wal_max} B > {wal_bound} B: not checkpointed")
    for table, n in last_db["rows"].items():
        if (
            table not in GROWING_BY_DESIGN
            and n > max(first_db["rows"].get(table, 0), 1) * 3
            and n > 50
        ):
            rows[0]["flags"].append(f"table {table}: {first_db['rows'].get(table, 0)} → {n} rows")
    return {
        "calls": done,
        "beats": beats,
        "steers": steers,
        "join_tokens": tokens,
        "seconds": round(time.monotonic() - started, 1),
        "errors": errors,
        "rows": rows,
        "db_start": first_db,
        "db_end": last_db,
        "db_after_stop": after_stop,
        "wal_max_bytes": wal_max,
        "series": [(n, {"fleet": _fig(s["proc"]), "wal": s["db"]["wal_bytes"]}) for n, s in series],
    }


def _fig(procs: dict[str, Any]) -> dict[str, int] | None:
    f = procs.get("fleet")
    return None if f is None else {"rss_kb": f.rss_kb, "fds": f.fds, "threads": f.threads}


def print_fleet(f: dict[str, Any]) -> None:
    print_rows(
        f"fleet manager: {f['calls']} calls in {f['seconds']} s ({f['beats']} heartbeats, "
        f"{f['steers']} /steer, {f['join_tokens']} join tokens; errors: "
        f"{len(f['errors'])})",
        f["rows"],
    )
    a, b, c = f["db_start"], f["db_end"], f["db_after_stop"]
    print(
        f"  SQLite file {a['db_bytes']} → {b['db_bytes']} B, WAL {a['wal_bytes']} → "
        f"{b['wal_bytes']} B; rows {a['rows']} → {b['rows']}"
    )
    wal = [s["wal"] for _, s in f["series"]]
    print(f"  WAL over the run (B): {wal}, largest {f['wal_max_bytes']}")
    print(f"  meta values (B) at the end, after the stop's save: {c['meta_bytes']}")
    for err in f["errors"][:5]:
        print(f"  error: {err}")

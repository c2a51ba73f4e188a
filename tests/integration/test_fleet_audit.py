"""The fleet manager and its CLI against what goes wrong in the field, on loopback with real
processes: managers that are down, hang or are something else, bad input on every wire
(HTTP, gRPC, the CLI), enrolment races, and a SIGKILL in the middle of a heartbeat burst.
Every failure must be one clear line or a proper status, never a traceback or a lost row."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from appliance.config import ApplianceConfig
from appliance.fleetlink import FleetLink, LinkSinks
from appliance.fleetlink_figures import BoxHealth, Traffic
from appliance.store import Store
from edgeflix.proto.gen import fleet_pb2
from tests.conftest import run_cli
from tests.integration.serve_support import Server, start
from tests.integration.test_fleet import FLEET_TOML as FAST_TOML
from tests.integration.test_fleet import ApplianceClient

# Appliances here beat when a test says so: they stay `ok` for a minute without beating.
FLEET_TOML = FAST_TOML.replace("interval_s = 0.5\nmissed_beats", "interval_s = 20\nmissed_beats")
assert FLEET_TOML != FAST_TOML

LISTINGS = (
    ("ls",),
    ("sites",),
    ("plan",),
    ("plan", "--site", "home"),
    ("steer", "--client-ip", "192.168.1.5", "--title", "film"),
    ("join-token", "--site", "lab"),
    ("keys", "rotate"),
    ("fill", "--now", "--site", "home"),
    ("show", "h1"),
    ("drain", "h1"),
    ("undrain", "h1"),
)


def fleet_cli(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = run_cli(
        ["fleet", *args, "--fleet", url] if url else ["fleet", *args], env=env, timeout=60
    )
    return proc.returncode, proc.stdout, proc.stderr


def one_line_error(rc: int, out: str, err: str, *words: str) -> None:
    assert rc != 0, out
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], err


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fleet-audit")
    (folder / "fleet.toml").write_text(FLEET_TOML.format(db=folder / "fleet.sqlite"))
    return folder


@pytest.fixture(scope="module")
def fleet(folder: Path) -> Iterator[Server]:
    server = start(["fleet", "serve", "--config", str(folder / "fleet.toml")], ("grpc", "http"))
    yield server
    server.stop()


def join_token(fleet: Server, site: str = "home") -> str:
    resp = httpx.post(fleet.urls["http"] + "/join-tokens", json={"site": site}, timeout=10)
    return str(resp.json()["token"])


@pytest.fixture(scope="module")
def h1(fleet: Server) -> ApplianceClient:
    box = ApplianceClient(fleet.urls["grpc"], "h1", "http://127.0.0.11:8081")
    box.enrol(join_token(fleet))
    box.beat({"film": 10**9})
    return box


@contextlib.contextmanager
def other_server(kind: str) -> Iterator[str]:
    """An HTTP server that is not the fleet manager (as the origin or an appliance port
    would be), or a port that accepts connections and never answers."""
    if kind == "silent":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            sock.close()
        return
    body, ctype, status = {
        "html": (b"<html>origin</html>", "text/html", 200),
        "json": (b'{"titles": []}', "application/json", 200),
        "error": (b"[1, 2]", "application/json", 500),
        "proxy": (b"<html>\n<h1>502 Bad Gateway</h1>\n</html>\n", "text/html", 502),
    }[kind]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", ["html", "json", "error", "proxy"])
def test_cli_pointed_at_another_server_says_so_in_one_line(kind: str) -> None:
    with other_server(kind) as url:
        for args in (("ls", "--json"), ("show", "h1")):
            one_line_error(*fleet_cli(url, *args), "fleet manager")


def test_cli_with_no_manager_or_a_bad_url() -> None:
    with other_server("silent") as silent:
        one_line_error(*fleet_cli(silent, "ls"), "unreachable", "timed out")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{free.getsockname()[1]}"
    one_line_error(*fleet_cli(refused, "ls"), "unreachable")
    one_line_error(*fleet_cli("http://127.0.0.1:abc", "ls"), "is not http(s)://HOST[:PORT]")
    env = {"EDGEFLIX_FLEET": refused}
    one_line_error(*fleet_cli("", "sites", env=env), refused)
    with_password = refused.replace("//", "//ops:hunter2@")
    code, out, err = fleet_cli(with_password, "ls")
    one_line_error(code, out, err, "ops:***@127.0.0.1")
    assert "hunter2" not in out + err


def test_every_listing_is_valid_json_in_a_pipe(fleet: Server, h1: ApplianceClient) -> None:
    url = fleet.urls["http"]
    for args in LISTINGS:
        rc, out, err = fleet_cli(url, *args, "--json")
        assert rc == 0, (args, err)
        json.loads(out)
    rc, out, _ = fleet_cli(url, "ls", "--json")
    assert [(r["name"], r["site"], r["state"]) for r in json.loads(out)] == [("h1", "home", "ok")]


def test_cli_unknown_names(fleet: Server, h1: ApplianceClient) -> None:
    url = fleet.urls["http"]
    for args in (("drain", "nope"), ("rm", "../h1")):
        one_line_error(*fleet_cli(url, *args), "no appliance named")
    one_line_error(*fleet_cli(url, "plan", "--site", "mars"), "no site named 'mars'")
    one_line_error(*fleet_cli(url, "steer", "--client-ip", "x", "--title", "film"), "address")
    one_line_error(*fleet_cli(url, "steer", "--client-ip", "1.2.3.4", "--title", "../x"), "title")
    assert httpx.get(url + "/appliances/h1", timeout=10).status_code == 200  # nothing removed


def test_steer_http_errors_are_json_4xx(fleet: Server, h1: ApplianceClient) -> None:
    url = fleet.urls["http"] + "/steer"
    ok = httpx.get(url, params={"client_ip": "::ffff:192.168.1.5", "title": "film"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["client_site"] == "home"
    assert ok.json()["outcome"] == "in_site"
    cases = [
        ({"client_ip": "not-an-ip", "title": "film"}, 400),
        ({"client_ip": "192.168.1.5%eth0", "title": "film"}, 400),
        ({"client_ip": "1.2.3.4"}, 400),
        ({"client_ip": "1.2.3.4", "title": "../x"}, 400),
        ({"client_ip": "1.2.3.4", "title": "x" * 5000}, 400),
        ({"title": "film"}, 400),
    ]
    for params, status in cases:
        resp = httpx.get(url, params=params, timeout=10)
        assert resp.status_code == status, (params, resp.text)
        assert resp.json()["error"]
    resp = httpx.post(url, params={"client_ip": "1.2.3.4", "title": "film"}, timeout=10)
    assert resp.status_code == 405 and resp.json()["error"]
    resp = httpx.put(fleet.urls["http"] + "/appliances", timeout=10)
    assert resp.status_code == 405 and resp.json()


def read_response(f: Any) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length framed) from a socket's file."""
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline().rstrip(b"\r\n")) != b"":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, f.read(int(headers["content-length"]))


def test_steer_on_the_wire_keeps_order_keep_alive_and_close(
    fleet: Server, h1: ApplianceClient
) -> None:
    """/steer is answered inline by the HTTP protocol unless a request is in flight: pipelined
    with FastAPI routes its answers still leave in order, and HTTP/1.0 and Connection: close
    are honoured on both paths."""
    host, port = fleet.urls["http"].removeprefix("http://").rsplit(":", 1)
    steer = b"GET /steer?client_ip=192.168.1.5&title=film HTTP/1.1\r\nHost: f\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        f = sock.makefile("rb")
        sock.sendall(
            b"GET /appliances HTTP/1.1\r\nHost: f\r\n\r\n"
            + steer
            + b"GET /steer?title=film HTTP/1.1\r\nHost: f\r\n\r\n"
            + b"GET /healthz HTTP/1.1\r\nHost: f\r\n\r\n"
            + steer
        )
        answers = [read_response(f) for _ in range(5)]
        assert [a[0] for a in answers] == [200, 200, 400, 200, 200]
        assert isinstance(json.loads(answers[0][2]), list)
        assert json.loads(answers[1][2])["urls"][0].startswith("http://127.0.0.11:8081/t/")
        assert "client_ip" in json.loads(answers[2][2])["error"]
        assert json.loads(answers[4][2])["outcome"] == "in_site"
        for _, headers, _ in (answers[1], answers[4]):
            assert headers["content-type"] == "application/json" and "date" in headers
        for _ in range(3):  # keep-alive: one steer after another on the same connection
            sock.sendall(steer)
            assert read_response(f)[0] == 200
        sock.sendall(steer.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        status, headers, _ = read_response(f)
        assert status == 200 and headers["connection"] == "close"
        assert f.read() == b""  # and closed
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(steer.replace(b"HTTP/1.1", b"HTTP/1.0"))
        f = sock.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 200")
        assert b"film" in f.read()  # the whole answer, then the close HTTP/1.0 asks for


def test_grpc_refusals(fleet: Server, h1: ApplianceClient) -> None:
    addr = fleet.urls["grpc"]
    stranger = ApplianceClient(addr, "ghost", "http://127.0.0.50:8081")
    with pytest.raises(grpc.RpcError) as err:
        stranger.beat({"film": 1})
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for name in ("a/b", "x" * 65, "a\nb"):
        with pytest.raises(grpc.RpcError) as err:
            ApplianceClient(addr, name, "http://127.0.0.51:8081").enrol(join_token(fleet))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name

    def beat(**fields: Any) -> None:
        h1.sequence += 1
        req = fleet_pb2.HeartbeatRequest(
            **{"appliance": "h1", "sequence": h1.sequence, "capacity_bps": 1e9, **fields}
        )
        h1.stub.Heartbeat(req, metadata=h1._md("Heartbeat", req), timeout=10)

    for fields in (
        {"load_bps": float("nan")},
        {"capacity_bps": float("inf")},
        {"counts_zstd": b"not zstd"},
    ):
        with pytest.raises(grpc.RpcError) as err:
            beat(**fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
    with pytest.raises(grpc.RpcError) as err:
        h1.stub.Steer(fleet_pb2.SteerRequest(client_ip="1.2.3.4", title_id="../x"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    h1.beat({"film": 10**9})
    state = httpx.get(fleet.urls["http"] + "/appliances/h1", timeout=10).json()
    assert state["state"] == "ok" and state["load_bps"] == 1e8


def test_one_token_two_appliances_at_once_exactly_one_wins(fleet: Server) -> None:
    token = join_token(fleet, "lab")
    boxes = [
        ApplianceClient(fleet.urls["grpc"], f"race{i}", f"http://127.0.0.{60 + i}:8081")
        for i in range(6)
    ]
    results: dict[str, object] = {}
    barrier = threading.Barrier(len(boxes))

    def enrol(box: ApplianceClient) -> None:
        barrier.wait(10)
        try:
            results[box.name] = box.enrol(token).site
        except grpc.RpcError as exc:
            results[box.name] = exc.code()

    threads = [threading.Thread(target=enrol, args=(b,)) for b in boxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [n for n, r in results.items() if r == "lab"]
    assert len(winners) == 1, results
    losers = [r for r in results.values() if r != "lab"]
    assert losers == [grpc.StatusCode.PERMISSION_DENIED] * 5, results
    listed = httpx.get(fleet.urls["http"] + "/appliances", timeout=10).json()
    assert [a["name"] for a in listed if a["name"].startswith("race")] == winners


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def planner_of(manager: Server) -> int:
    """The manager's planner process (fleet/planning.py), once it is up."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in children(manager.proc.pid):
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        time.sleep(0.1)
    raise AssertionError("no planner process")


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_plans_are_made_in_a_planner_process_replaced_if_it_dies(
    fleet: Server, h1: ApplianceClient
) -> None:
    """Planning runs beside the loop that answers /steer (seconds of CPU for a large
    catalogue), in a process of its own; one that dies is replaced for the same round."""
    http = fleet.urls["http"]
    first = planner_of(fleet)
    version = httpx.post(http + "/plan", timeout=30).json()["version"]
    assert version >= 1
    os.kill(first, signal.SIGKILL)
    assert gone(first)
    h1.beat({"film": 10**9, "other": 10**9})
    again = httpx.post(http + "/plan", timeout=30)
    assert again.status_code == 200 and again.json()["version"] >= version
    second = planner_of(fleet)
    assert second != first
    # Started again from the loop's thread, it holds SIGHUP too (a closed terminal signals
    # the whole group): it lives on, and plans.
    os.kill(second, signal.SIGHUP)
    time.sleep(0.5)
    assert planner_of(fleet) == second and not gone(second, 0.1)
    again = httpx.post(http + "/plan", timeout=30)
    assert again.status_code == 200 and planner_of(fleet) == second
    ok = httpx.get(http + "/steer", params={"client_ip": "192.168.1.5", "title": "film"})
    assert ok.status_code == 200


def test_the_planner_process_goes_with_a_sigkilled_manager(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    manager = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    try:
        planner = planner_of(manager)
    finally:
        os.kill(manager.proc.pid, signal.SIGKILL)
        manager.proc.wait(10)
    assert gone(planner), "the planner outlived its manager"


def test_sigkill_in_a_heartbeat_burst_loses_nothing(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    db = tmp_path / "fleet.sqlite"
    config.write_text(FLEET_TOML.format(db=db))
    first = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    stop = threading.Event()
    try:
        http = first.urls["http"]
        boxes = {}
        for i in range(4):
            box = ApplianceClient(first.urls["grpc"], f"b{i}", f"http://127.0.0.{70 + i}:8081")
            box.enrol(join_token(first, "home" if i % 2 else "lab"))
            box.beat({"film": 10**9})
            boxes[box.name] = box
        httpx.post(http + "/appliances/b1/drain", timeout=10).raise_for_status()
        httpx.post(http + "/keys/rotate", params={"immediate": True}, timeout=10)
        httpx.post(http + "/plan", timeout=10).raise_for_status()
        before = {
            "appliances": {
                (a["name"], a["site"], a["url"]) for a in httpx.get(http + "/appliances").json()
            },
            "keys": boxes["b0"].keys(),
            "plan": httpx.get(http + "/plan", timeout=10).json()["version"],
        }

        def burst(box: ApplianceClient) -> None:
            for _ in range(2000):  # bounded; the kill ends it much sooner
                if stop.is_set():
                    return
                with contextlib.suppress(grpc.RpcError):
                    box.beat({"film": 10**9, f"t{box.sequence % 50}": 10**8})

        threads = [threading.Thread(target=burst, args=(b,)) for b in boxes.values()]
        for t in threads:
            t.start()
        # Writes in flight too: drains, join tokens and rotations take the write lock.
        for i in range(10):
            httpx.post(http + "/join-tokens", json={"site": "home"}, timeout=10)
            httpx.post(http + f"/appliances/b{i % 2 * 2}/undrain", timeout=10)
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
    finally:
        stop.set()
        first.stop()
    for t in threads:
        t.join(30)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    second = start(["fleet", "serve", "--config", str(config)], ("grpc", "http"))
    try:
        http = second.urls["http"]
        listed = httpx.get(http + "/appliances", timeout=10).json()
        assert {(a["name"], a["site"], a["url"]) for a in listed} == before["appliances"]
        assert {a["name"]: a["state"] for a in listed}["b1"] == "drained"
        assert httpx.get(http + "/plan", timeout=10).json()["version"] >= before["plan"]
        box = boxes["b0"]
        box.channel = grpc.insecure_channel(second.urls["grpc"])
        box.stub = type(box.stub)(box.channel)
        box.beat({"film": 10**9})  # its enrolment and key survived: accepted
        keys = box.keys()
        assert before["keys"].items() <= keys.items()
    finally:
        second.stop()


def test_a_second_manager_on_the_same_grpc_port_fails_to_start(
    fleet: Server, tmp_path: Path
) -> None:
    config = tmp_path / "fleet.toml"
    text = FLEET_TOML.format(db=tmp_path / "fleet.sqlite")
    config.write_text(text.replace('grpc = "127.0.0.1:0"', f'grpc = "{fleet.urls["grpc"]}"'))
    proc = run_cli(["fleet", "serve", "--config", str(config)], timeout=60)
    assert proc.returncode != 0
    assert "cannot listen on" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("sites", "words"),
    [
        (
            '[[sites]]\nname = "a"\nprefixes = ["10.0.0.0/8"]\n[[sites]]\nname = "b"\n'
            'prefixes = ["10.0.0.0/8"]',
            "listed in sites a and b",
        ),
        ('[[sites]]\nname = "a"\ntimezone = "Mars/Olympus"', "unknown time zone"),
        # A folder of zones, and a name too long for a file name: no traceback either.
        ('[[sites]]\nname = "a"\ntimezone = "Europe"', "unknown time zone 'Europe'"),
        (f'[[sites]]\nname = "a"\ntimezone = "{"a" * 300}"', "unknown time zone"),
    ],
)
def test_bad_fleet_toml_is_one_line(tmp_path: Path, sites: str, words: str) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(f'[server]\ndb = "{tmp_path / "f.sqlite"}"\n{sites}\n')
    proc = run_cli(["fleet", "serve", "--config", str(config)], timeout=60)
    one_line_error(proc.returncode, proc.stdout, proc.stderr, words)
    assert not (tmp_path / "f.sqlite").exists()


def link_setup(fleet: Server, tmp_path: Path, name: str) -> tuple[ApplianceConfig, LinkSinks]:
    """A real fleet link's config (one empty disk, a fresh join token) and quiet sinks."""
    cfg = ApplianceConfig.model_validate(
        {
            "name": name,
            "storage": {"disks": [{"path": str(tmp_path / "d0")}], "index": str(tmp_path / "i")},
            "fleet": {"url": fleet.urls["grpc"], "join_token": join_token(fleet)},
        }
    )
    (tmp_path / "d0").mkdir()
    Store(cfg.storage).close()
    sinks = LinkSinks(
        health=lambda: BoxHealth("ok", (), 1e9),
        traffic=lambda: Traffic({}, 0, 0),
        submit_plan=lambda plan: None,
        set_keys=lambda keys: None,
    )
    return cfg, sinks


def test_an_appliance_removed_while_beating_enrols_again_with_a_new_token(
    fleet: Server, tmp_path: Path
) -> None:
    """`edgeflix fleet rm` under a running fleet link: its beats become UNAUTHENTICATED;
    it must not beat unheard for ever but enrol again, refused on its spent token until
    the operator gives it a new one (config + SIGHUP → reconfigure). The refusal is not
    final: it keeps its enrolment and beats on with backoff (the fleet may know it again)."""
    cfg, sinks = link_setup(fleet, tmp_path, "rm1")
    link = FleetLink(cfg, "http://127.0.0.80:8081", sinks)
    link.restore()
    assert link.step() == 0.0  # enrolled: beat at once
    link.step()
    assert link.state()["beats"] == 1
    http = fleet.urls["http"]
    httpx.delete(http + "/appliances/rm1", timeout=10).raise_for_status()
    link.step()
    assert "not enrolled" in (link.state()["last_error"] or "")
    link.step()  # enrols again: the spent token is refused, clearly
    assert "already used" in (link.state()["refused"] or "")
    assert link.state()["appliance"] == "rm1"
    assert link.step() <= 30.0  # beats on (unheard) with backoff, not once an hour
    link.reconfigure(cfg.fleet.model_copy(update={"join_token": join_token(fleet)}))
    link.step()  # a beat: still not enrolled, and a new token to enrol again with
    assert link.step() == 0.0
    link.step()
    assert link.state()["beats"] == 2 and link.state()["refused"] is None
    listed = httpx.get(http + "/appliances/rm1", timeout=10).json()
    assert listed["state"] == "ok"
    link.rpc.close()


def test_enrolling_again_does_not_hold_off_the_grace_period(fleet: Server, tmp_path: Path) -> None:
    """A box whose clock is far off gets UNAUTHENTICATED beats: it beats on, without
    enrolling again, but a refused beat is no contact, so the grace period runs."""
    cfg, sinks = link_setup(fleet, tmp_path, "skew1")
    clock = {"skew": 0.0}
    link = FleetLink(
        cfg, "http://127.0.0.81:8081", sinks, clock=lambda: time.time() + clock["skew"]
    )
    link.restore()
    link.step()
    link.step()
    assert link.state()["beats"] == 1
    contact = link.state()["last_contact"]
    # Beyond the fleet's 120 s for signed calls, and beyond what its answer corrects.
    clock["skew"] = 40 * 86_400.0
    for _ in range(4):
        link.step()
    state = link.state()
    assert "too far" in (state["last_error"] or "")
    # The same moment, as the stepped clock reads it (fleetlink_clock.Contact.follow): not later.
    assert state["beats"] == 1 and abs(state["last_contact"] - contact - clock["skew"]) < 5
    link.rpc.close()


def test_admin_api_asks_for_the_token_when_configured_to(tmp_path: Path) -> None:
    """`admin = "token"`: the CLI without $EDGEFLIX_FLEET_TOKEN gets one line naming it, with
    the token made at first start it works; players' /steer needs nothing."""
    toml = FLEET_TOML.replace('db = "{db}"', 'db = "{db}"\nadmin = "token"')
    (tmp_path / "fleet.toml").write_text(toml.format(db=tmp_path / "fleet.sqlite"))
    server = start(["fleet", "serve", "--config", str(tmp_path / "fleet.toml")], ("grpc", "http"))
    try:
        url = server.urls["http"]
        env = {k: v for k, v in os.environ.items() if k != "EDGEFLIX_FLEET_TOKEN"}
        one_line_error(*fleet_cli(url, "ls", env=env), "EDGEFLIX_FLEET_TOKEN", "401")
        one_line_error(*fleet_cli(url, "keys", "rotate", env=env), "admin-token")
        token = (tmp_path / "admin-token").read_text().strip()
        one_line_error(*fleet_cli(url, "ls", env={**env, "EDGEFLIX_FLEET_TOKEN": "x"}), "refused")
        rc, out, err = fleet_cli(url, "ls", "--json", env={**env, "EDGEFLIX_FLEET_TOKEN": token})
        assert rc == 0 and json.loads(out) == [], err
        resp = httpx.get(url + "/steer", params={"client_ip": "192.168.1.5", "title": "x"})
        assert resp.status_code == 200, resp.text
    finally:
        server.stop()


def test_a_restarted_manager_steers_to_appliances_before_they_beat_again(tmp_path: Path) -> None:
    """The last beats are kept on stop: right after a restart players are steered to the
    appliances that held their title, not all sent to the origin until each one beats."""
    (tmp_path / "fleet.toml").write_text(FLEET_TOML.format(db=tmp_path / "fleet.sqlite"))
    argv = ["fleet", "serve", "--config", str(tmp_path / "fleet.toml")]
    server = start(argv, ("grpc", "http"))
    try:
        box = ApplianceClient(server.urls["grpc"], "h1", "http://127.0.0.11:8081")
        box.enrol(join_token(server))
        box.beat({"film": 10**9})
    finally:
        server.stop()
    again = start(argv, ("grpc", "http"))
    try:
        rc, out, err = fleet_cli(
            again.urls["http"], "steer", "--client-ip", "192.168.1.5", "--title", "film", "--json"
        )
        assert rc == 0, err
        answer = json.loads(out)
        assert answer["urls"][0].startswith("http://127.0.0.11:8081/"), answer
    finally:
        again.stop()


@pytest.mark.parametrize("token", ["tökén", "a\nb", "a b"])
def test_an_admin_token_no_header_can_carry_is_one_line(token: str) -> None:
    env = {**os.environ, "EDGEFLIX_FLEET_TOKEN": token}
    one_line_error(*fleet_cli("http://127.0.0.1:9", "ls", env=env), "EDGEFLIX_FLEET_TOKEN")

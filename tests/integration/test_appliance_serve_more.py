"""`edgeflix appliance run` when files change under it: damage behind the daemon's back (404,
never a short body; reconciled and reported on restart), tier moves under load (no failed
request while the mover copies a title to the ssd tier and drops the hdd copies) and title
updates under load (every answer the old version or the new one, whole)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from edgeflix import titlefiles
from tests.appliance.storage_fixtures import make_title as storage_title
from tests.conftest import run_cli
from tests.integration.daemon_support import poll
from tests.integration.serve_support import Server, connect, make_title, read_response, start

RUN_S = 40.0  # upper bound on the load phase of the tier-move test


def write_config(root: Path, *, sendfile: bool = True, storage: str = "") -> Path:
    for disk in ("ssd0", "hdd0"):
        (root / disk).mkdir(parents=True, exist_ok=True)
    config = root / "appliance.toml"
    config.write_text(
        "[storage]\n"
        f'disks = [ {{ path = "{root}/ssd0", tier = "ssd" }}, '
        f'{{ path = "{root}/hdd0", tier = "hdd" }} ]\n'
        f'index = "{root}/index.sqlite"\n{storage}'
        "[serve]\n"
        'listen = "127.0.0.1:0"\n'
        f"workers = 1\nsendfile = {'true' if sendfile else 'false'}\n"
        '[admin]\nlisten = "127.0.0.1:0"\n'
        '[auth]\ntokens = "off"\n'
    )
    return config


def title_bytes(source: Path) -> dict[str, bytes]:
    """Every file files.json lists: path → its bytes."""
    model, _ = titlefiles.read(source)
    return {e.path: (source / e.path).read_bytes() for e in model.files}


def seed(config: Path, source: Path, title: str) -> None:
    run_cli(["appliance", "load", "--config", str(config), "--title", title, "--from", str(source)],
            check=True, timeout=120)  # fmt: skip


def listing(config: Path) -> dict[str, dict[str, object]]:
    out = run_cli(["appliance", "ls", "--config", str(config), "--json"], check=True, timeout=60)
    return {t["id"]: t for t in json.loads(out.stdout)}


def on_disk(root: Path, title: str, rel: str) -> Path:
    found = [p for p in (root / d / "titles" / title / rel for d in ("ssd0", "hdd0")) if p.exists()]
    assert len(found) == 1, found
    return found[0]


def get(server: Server, path: str, extra: bytes = b"") -> tuple[int, bytes]:
    with connect(server.addr) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        r = read_response(sock, bytearray())
    return r.status, r.body


# -- damage behind the daemon's back --------------------------------------------------------


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "fallback"])
def test_damage_is_404_while_running_and_reported_after_restart(
    tmp_path: Path, sendfile: bool
) -> None:
    sources = {t: make_title(tmp_path / "src" / t, t) for t in ("bunny", "bikes", "intact")}
    # The scrub off: it would find the damage while running (test_scrub_finds_...), before
    # the restart whose reconcile this checks.
    config = write_config(tmp_path, sendfile=sendfile, storage="scrub_bytes_per_s = 0\n")
    for title, source in sources.items():
        seed(config, source, title)
    seg = (sources["bunny"] / "v0/seg1.m4s").read_bytes()

    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    try:
        # Damage while running, i.e. after the start's check of every file (it runs once the
        # daemon serves, and would find it too soon).
        done = poll(server, lambda doc: doc["daemon"]["startup_check"]["state"] == "done", 30)
        assert done is not None, "the start-up check did not end"
        # Served once first, so the worker holds the file open (its fd cache) when it shrinks.
        assert get(server, "/titles/bunny/v0/seg1.m4s") == (200, seg)
        os.truncate(on_disk(tmp_path, "bunny", "v0/seg1.m4s"), 1000)
        assert get(server, "/titles/bunny/v0/seg1.m4s")[0] == 404
        assert get(server, "/titles/bunny/v0/seg1.m4s", b"Range: bytes=0-99\r\n")[0] == 404
        assert get(server, "/titles/bikes/poster.jpg")[0] == 200
        assert get(server, "/titles/intact/v0/seg1.m4s")[0] == 200
    finally:
        assert server.stop() == 0

    # Stopped: a file goes missing too. The restart reconciles index and disks.
    on_disk(tmp_path, "bikes", "poster.jpg").unlink()
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        again = start(["appliance", "run", "--config", str(config)], ("listening", "admin"),
                      stderr=err)  # fmt: skip
    try:
        assert get(again, "/titles/bunny/v0/seg1.m4s")[0] == 404
        assert get(again, "/titles/bikes/poster.jpg")[0] == 404
        for entry in titlefiles.read(sources["intact"])[0].files:
            status, body = get(again, f"/titles/intact/{entry.path}")
            assert status == 200 and hashlib.sha256(body).hexdigest() == entry.sha256
        # The restart's check of every file runs once it serves: reported when it is over.
        done = poll(again, lambda doc: doc["daemon"]["startup_check"]["state"] == "done", 30)
        assert done is not None, "the start-up check did not end"
    finally:
        assert again.stop() == 0
    text = log.read_text()
    # One summarised line per title and kind of problem (appliance/findings.py).
    found = {
        line.partition("title=")[2].split()[0]: line
        for line in text.splitlines()
        if "event=storage.findings" in line
    }
    assert "size 1000 != 300000" in found["bunny"] and "v0/seg1.m4s" in found["bunny"]
    assert "missing from its disk" in found["bikes"] and "poster.jpg" in found["bikes"]
    titles = listing(config)
    assert titles["bunny"]["state"] == titles["bikes"]["state"] == "incomplete"
    assert titles["bunny"]["missing"] == titles["bikes"]["missing"] == 1
    assert titles["intact"]["state"] == "ready" and titles["intact"]["missing"] == 0


def test_scrub_finds_damage_that_keeps_the_size(tmp_path: Path) -> None:
    """A flipped byte keeps the file's size: reconcile (sizes) and serving cannot tell, so it
    was served damaged until someone ran `appliance verify`. The daemon's scrub finds it."""
    source = make_title(tmp_path / "src" / "bunny", "bunny")
    config = write_config(tmp_path, storage="scrub_bytes_per_s = 50000000\n")
    seed(config, source, "bunny")
    victim = on_disk(tmp_path, "bunny", "v0/seg1.m4s")
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0x01
    victim.write_bytes(bytes(data))
    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    try:
        doc = poll(server, lambda d: d["scrub"]["bad_files"] == 1, timeout=45)
        assert doc is not None, "the scrub did not find the damaged file within 45 s"
        assert doc["scrub"]["passes"] >= 1 and doc["scrub"]["bytes_per_s"] == 50_000_000
        assert get(server, "/titles/bunny/v0/seg1.m4s")[0] == 404  # players fail over
        metrics = httpx.get(server.urls["admin"] + "/metrics", timeout=10).text
        assert "edgeflix_appliance_scrub_damaged_files_total 1" in metrics.splitlines()
        assert get(server, "/titles/bunny/poster.jpg") == (
            200,
            (source / "poster.jpg").read_bytes(),
        )
    finally:
        assert server.stop() == 0
    assert listing(config)["bunny"]["state"] == "incomplete"  # the next fill replaces it


# -- tier moves under load ------------------------------------------------------------------


@dataclass
class Tally:
    ok: int = 0
    ranged: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(
    server: Server, versions: list[dict[str, bytes]], stop: threading.Event, tally: Tally,
    seed_no: int,
) -> None:  # fmt: skip
    """Keep-alive GETs, whole files and ranges, checking every byte, until `stop` (bounded).
    `versions`: the title's files (path → bytes) as each version the daemon may serve has
    them, all of one layout; every answer must be one of those, whole."""
    files = versions[0]
    rels = sorted(files)
    deadline = time.monotonic() + RUN_S + 30
    sock: socket.socket | None = None
    buf = bytearray()
    i = seed_no
    while not stop.is_set() and time.monotonic() < deadline:
        i += 1
        rel = rels[i % len(rels)]
        data = files[rel]
        ranged = i % 3 == 0 and len(data) > 3
        start_at = (i * 7919) % (len(data) // 2) if ranged else 0
        end = start_at + len(data) // 3 if ranged else len(data) - 1
        extra = f"Range: bytes={start_at}-{end}\r\n" if ranged else ""
        try:
            if sock is None:
                sock, buf = connect(server.addr), bytearray()
            sock.sendall(f"GET /titles/bunny/{rel} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
            r = read_response(sock, buf)
        except (OSError, AssertionError) as exc:
            with tally.lock:
                tally.failures.append(f"{rel}: {exc!r}")
            if sock is not None:
                sock.close()
            sock = None
            continue
        if ranged:
            good = r.status == 206 and any(r.body == v[rel][start_at : end + 1] for v in versions)
        else:
            good = r.status == 200 and any(r.body == v[rel] for v in versions)
        with tally.lock:
            if good:
                tally.ok += 1
                tally.ranged += ranged
            else:
                tally.failures.append(f"{rel} {extra.strip()}: {r.status}, {len(r.body)} bytes")
    if sock is not None:
        sock.close()


def test_tier_move_under_load_fails_no_request(tmp_path: Path) -> None:
    source = make_title(tmp_path / "src" / "bunny", "bunny")
    # Hot after a handful of requests; the mover looks every 0.5 s and copies at full speed.
    storage = (
        "hot_rate = 1.0\ndecay_half_life_s = 5.0\nmove_interval_s = 0.5\n"
        "move_bytes_per_s = 1000000000\n"
    )
    config = write_config(tmp_path, storage=storage)
    seed(config, source, "bunny")
    assert listing(config)["bunny"]["tier"] == "hdd"  # loaded cold
    files = title_bytes(source)

    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    stop, tally = threading.Event(), Tally()
    threads = [
        threading.Thread(target=client, args=(server, [files], stop, tally, n)) for n in range(2)
    ]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + RUN_S
        tier = "hdd"
        while tier != "ssd" and time.monotonic() < deadline:
            time.sleep(0.5)
            tier = str(listing(config)["bunny"]["tier"])
        # Keep requesting past the unlink grace (2 s), so the hdd copies go away under load.
        time.sleep(3.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        assert server.stop() == 0
    assert tier == "ssd", "the mover never promoted the hot title"
    assert not tally.failures, tally.failures[:5]
    assert tally.ok > 50 and tally.ranged > 10
    assert not list((tmp_path / "hdd0" / "titles").rglob("*.m4s"))
    assert (tmp_path / "ssd0" / "titles" / "bunny" / "v0" / "seg1.m4s").exists()


# -- title updates under load ---------------------------------------------------------------


def test_title_update_under_load_fails_no_request(tmp_path: Path) -> None:
    old = make_title(tmp_path / "old" / "bunny", "bunny")
    new = make_title(tmp_path / "new" / "bunny", "bunny")  # same layout, other bytes
    config = write_config(tmp_path)
    seed(config, old, "bunny")
    versions = [title_bytes(old), title_bytes(new)]
    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    stop, tally = threading.Event(), Tally()
    threads = [
        threading.Thread(target=client, args=(server, versions, stop, tally, n)) for n in range(2)
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        before = tally.ok
        # The update copies and verifies every file, swaps, and deletes the old folder after
        # its grace: the clients run through all of it and on past it.
        run_cli(["appliance", "load", "--config", str(config), "--title", "bunny", "--from",
                 str(new), "--replace"], check=True, timeout=120)  # fmt: skip
        time.sleep(0.5)
        seg = get(server, "/titles/bunny/v0/seg1.m4s")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        assert server.stop() == 0
    assert not tally.failures, tally.failures[:5]
    assert before > 5 and tally.ok > before + 20
    assert seg == (200, versions[1]["v0/seg1.m4s"])
    # The old version's files are gone; the new version sits in a folder of its own.
    folders = [p.name for d in ("ssd0", "hdd0") for p in (tmp_path / d / "titles").iterdir()]
    assert folders and all(name.startswith("bunny~") for name in folders), folders


def test_a_player_that_started_on_a_replaced_version_plays_on(tmp_path: Path) -> None:
    """A re-encoded title loaded over the old one: a player holding the old playlists asks
    for the old segment names, which keep answering (appliance/replaced.py); everything
    else answers from the new version."""
    v1 = storage_title(tmp_path / "v1", "film", seed=1, content_named=True)
    v2 = storage_title(tmp_path / "v2", "film", seed=2, content_named=True)
    old, new = title_bytes(v1), title_bytes(v2)
    old_seg = sorted(p for p in old if p.endswith(".m4s"))[-1]
    new_seg = sorted(p for p in new if p.endswith(".m4s"))[-1]
    assert old_seg not in new
    config = write_config(tmp_path)
    seed(config, v1, "film")
    server = start(["appliance", "run", "--config", str(config)], ("listening", "admin"))
    try:
        assert get(server, f"/titles/film/{old_seg}") == (200, old[old_seg])
        run_cli(["appliance", "load", "--config", str(config), "--title", "film", "--from",
                 str(v2), "--replace"], check=True, timeout=120)  # fmt: skip
        assert get(server, f"/titles/film/{old_seg}") == (200, old[old_seg])
        assert get(server, f"/titles/film/{new_seg}") == (200, new[new_seg])
        assert get(server, "/titles/film/files.json") == (200, (v2 / "files.json").read_bytes())
        metrics = httpx.get(server.urls["admin"] + "/metrics", timeout=10).text.splitlines()
        kept = [line for line in metrics if line.startswith("edgeflix_appliance_replaced_kept_b")]
        assert kept and sum(float(line.rsplit(" ", 1)[1]) for line in kept) >= len(old[old_seg])
    finally:
        assert server.stop() == 0

"""`edgeflix appliance fill` against a hostile origin on loopback: files.json documents that
nest too deeply, name files too long for a disk, list a file that is also a folder, name
files like the fill's own staging, or list too many files; a title whose staging is in the
way; chunked bodies with an endless trailer section or kilobytes of padding per byte. Each
time the run ends in bounded time, the hostile title fails with one line (never a
traceback), and the next title of the plan is still filled.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.appliance.fill_server import ScriptedServer, read_request
from tests.conftest import run_cli
from tests.edgeflix.test_titlefiles_hostile import doc

BOUND_S = 60  # every run here ends well within this; old code that hangs fails on it
HELLO = b"hello"
GOOD = {"a.m4s": bytes(range(256)) * 800, "v/b.m4s": b"b" * 70_000}


def files_json(title_id: str, files: list[dict[str, Any]]) -> bytes:
    return doc(files, title_id)


def entry(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class HostileOrigin:
    """Serves /titles/<id>/files.json and files from dicts, with Range (`hello` titles answer
    b"hello" for any other path); a file's mode makes its answer a chunked body with an
    endless (dripped) trailer section, or one byte of data per chunk padded with a 4 KB
    chunk extension."""

    manifests: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # "<title>/<path>" → bytes
    modes: dict[str, str] = field(default_factory=dict)  # "<title>/<path>" → mode
    hello: set[str] = field(default_factory=set)  # titles whose every other path is b"hello"

    def title(self, title_id: str, files: dict[str, bytes], **modes: str) -> None:
        self.manifests[title_id] = files_json(title_id, [entry(p, d) for p, d in files.items()])
        self.files.update({f"{title_id}/{p}": d for p, d in files.items()})
        self.modes.update({f"{title_id}/{p}": m for p, m in modes.items()})

    def handler(self, sock: socket.socket, _: int) -> None:
        while (request := read_request(sock)) is not None:
            rel = unquote(request[":target"]).removeprefix("/titles/")
            title_id, _, path = rel.partition("/")
            if path == "files.json" and title_id in self.manifests:
                data = self.manifests[title_id]
            elif rel in self.files:
                data = self.files[rel]
            elif title_id in self.hello:
                data = HELLO
            else:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            mode = self.modes.get(rel)
            if mode is not None:
                _chunked(sock, data, mode)
                return
            start = int(request.get("range", "bytes=0-")[6:].rstrip("-"))
            status, fields = b"200 OK", b""
            if start:
                status = b"206 Partial Content"
                fields = b"Content-Range: bytes %d-%d/%d\r\n" % (start, len(data) - 1, len(data))
            head = b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n" % (
                status,
                fields,
                len(data) - start,
            )
            sock.sendall(head + data[start:])


def _chunked(sock: socket.socket, data: bytes, mode: str) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    if mode == "padded":
        for i in range(len(data)):
            sock.sendall(b"1;" + b"e" * 4000 + b"\r\n" + data[i : i + 1] + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        return
    sock.sendall(b"%x\r\n%s\r\n0\r\n" % (len(data), data))
    fast = mode == "trailer_fast"
    until = time.monotonic() + 2 * BOUND_S  # bounded; the client hangs up long before
    while time.monotonic() < until:
        sock.sendall((b"X-Pad: " + b"a" * 50 + b"\r\n") * (100 if fast else 1))
        if not fast:
            time.sleep(0.02)


@pytest.fixture()
def origin() -> Iterator[tuple[str, HostileOrigin]]:
    hostile = HostileOrigin()
    hostile.title("good", GOOD)
    server = ScriptedServer(hostile.handler)
    try:
        yield server.url, hostile
    finally:
        server.close()


def config(tmp: Path) -> Path:
    for name in ("d0", "d1"):
        (tmp / name).mkdir(exist_ok=True)
    path = tmp / "appliance.toml"
    path.write_text(
        f"""
[storage]
disks = [ {{ path = "{tmp}/d0", tier = "ssd" }}, {{ path = "{tmp}/d1", tier = "ssd" }} ]
index = "{tmp}/index.sqlite"
[fill]
staging = "{tmp}/staging"
connect_timeout_s = 2
read_timeout_s = 3
head_timeout_s = 3
low_speed_bps = 2048
low_speed_s = 1
retry_base_s = 0.05
retry_max_s = 0.2
attempts_per_source = 3
"""
    )
    return path


def fill(tmp: Path, url: str, *titles: str) -> tuple[subprocess.CompletedProcess[str], float]:
    args = ["appliance", "fill", "--config", str(config(tmp)), "--json", "--from", url, "--now"]
    for title in titles:
        args += ["--title", title]
    started = time.monotonic()
    proc = run_cli(args, timeout=BOUND_S)
    return proc, time.monotonic() - started


def assert_fails_alone(proc: subprocess.CompletedProcess[str], title: str, says: str) -> None:
    """`title` failed with one line saying `says`; the good title after it is ready."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode != 0
    report = json.loads(proc.stdout)["titles"]
    assert report["good"]["state"] == "ready", report
    failed = report[title]
    assert failed["state"] == "failed" and says in failed["error"], failed
    assert "\n" not in failed["error"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("name", "manifest", "says"),
    [
        ("deep", b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        ("longname", files_json("longname", [entry("L" * 300, HELLO)]), "name longer than"),
        (
            "longpath",
            files_json("longpath", [entry("/".join(["d" * 250] * 20), HELLO)]),
            "bytes long",
        ),
        (
            "filedir",
            files_json("filedir", [entry("c", HELLO), entry("c/d", HELLO)]),
            "also a folder",
        ),
        (
            "ownjson",
            files_json("ownjson", [entry("a.m4s", HELLO), entry("files.json", HELLO)]),
            "own files.json",
        ),
        (
            "partname",
            files_json("partname", [entry("v/s.m4s", HELLO * 9), entry("v/s.m4s.part", HELLO)]),
            "being staged",
        ),
        (
            "validatorname",
            files_json(
                "validatorname", [entry("w/s.m4s", HELLO), entry("w/s.m4s.part.validator", HELLO)]
            ),
            "being staged",
        ),
        (
            "many",
            files_json("many", [entry(f"z/{i:06d}", b"") for i in range(100_001)]),
            "lists 100001 files",
        ),
    ],
)
def test_a_hostile_files_json_fails_only_its_title(
    origin: tuple[str, HostileOrigin], tmp_path: Path, name: str, manifest: bytes, says: str
) -> None:
    url, hostile = origin
    hostile.manifests[name] = manifest
    hostile.hello.add(name)
    proc, _ = fill(tmp_path, url, name, "good")
    assert_fails_alone(proc, name, says)
    # Nothing of the refused title was staged: it was refused before any download.
    staged = [p for p in (tmp_path / "staging").rglob("*") if name in p.parts]
    assert staged == []


def test_any_error_staging_a_title_fails_only_that_title(
    origin: tuple[str, HostileOrigin], tmp_path: Path
) -> None:
    """Not a full or failing disk: a plain file where the title's staging folder goes
    (ENOTDIR) is still that title's failure, one line, and the run goes on."""
    url, hostile = origin
    hostile.title("blocked", {"x.m4s": b"x" * 10_000})
    for disk in ("d0", "d1"):
        (tmp_path / disk / ".staging").mkdir(parents=True)
        (tmp_path / disk / ".staging" / "blocked").write_bytes(b"in the way")
    proc, _ = fill(tmp_path, url, "blocked", "good")
    assert_fails_alone(proc, "blocked", "cannot write its files on this appliance: Not a dir")


@pytest.mark.parametrize("mode", ["trailer", "trailer_fast"])
def test_an_endless_trailer_section_ends_in_time(
    origin: tuple[str, HostileOrigin], tmp_path: Path, mode: str
) -> None:
    """Every byte of the file, then trailer fields forever: dripped, each well inside the
    read timeout, the speed floor ends the response (trailers are no data); as fast as the
    socket goes, the trailer section's bound does. The bytes received before are kept and
    pass their SHA-256, so the title is filled."""
    url, hostile = origin
    hostile.title("trailer", {"seg001.m4s": b"t" * 50_000}, **{"seg001.m4s": mode})
    proc, took = fill(tmp_path, url, "trailer", "good")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)["titles"]
    assert report["trailer"]["state"] == "ready" and report["good"]["state"] == "ready"
    assert report["trailer"]["retries"] == 1
    assert took < 20


def test_padded_chunks_fail_the_title_in_time(
    origin: tuple[str, HostileOrigin], tmp_path: Path
) -> None:
    """One byte per chunk, each padded with a 4 KB extension: refused on its framing."""
    url, hostile = origin
    hostile.title("padded", {"seg.m4s": b"p" * 200_000}, **{"seg.m4s": "padded"})
    proc, took = fill(tmp_path, url, "padded", "good")
    assert_fails_alone(proc, "padded", "chunked framing")
    assert took < 20

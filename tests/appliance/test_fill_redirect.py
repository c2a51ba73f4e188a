"""Redirects in the fill client: an origin behind a moved store or a load balancer answers
301/302/303/307/308, and the fill follows (a bounded number, never https → http), keeping
Range on the new request. Real loopback servers; the rule itself is tested directly too."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from appliance.fill.downloader import FillError
from appliance.fill.transport import MAX_REDIRECTS, BadRedirect, Pool, redirect_target
from tests.appliance.fill_server import read_request, scripted, serve_files
from tests.appliance.test_fill_stream import assert_verified, fill, make_source
from tests.appliance.test_fill_transport import self_signed


def test_redirect_rule() -> None:
    here = "http://a.example:8080/titles/t/v0/seg0.m4s"
    assert redirect_target(here, "/store/t/seg0", [here]) == "http://a.example:8080/store/t/seg0"
    assert redirect_target(here, "x.m4s", [here]) == "http://a.example:8080/titles/t/v0/x.m4s"
    assert redirect_target(here, "https://b.example/s#frag", [here]) == "https://b.example/s"
    assert redirect_target("https://a/x", "https://b/y", ["https://a/x"]) == "https://b/y"
    with pytest.raises(BadRedirect, match=r"https://a/x.*to http://b/y"):
        redirect_target("https://a/x", "http://b/y", ["https://a/x"])
    with pytest.raises(BadRedirect, match="without a Location"):
        redirect_target(here, None, [here])
    with pytest.raises(BadRedirect, match="loop"):
        redirect_target("http://b/y", "http://a/x", ["http://a/x", "http://b/y"])
    chain = [f"http://a/{i}" for i in range(MAX_REDIRECTS + 1)]
    assert redirect_target(chain[-2], "http://a/next", chain[:-1]) == "http://a/next"
    with pytest.raises(BadRedirect, match=f"more than {MAX_REDIRECTS} redirects"):
        redirect_target(chain[-1], "http://a/next", chain)
    with pytest.raises(BadRedirect, match="ftp"):
        redirect_target(here, "ftp://a/x", [here])


class Redirector:
    """Sends every request on to `to` + its path, with a small body (a handler for scripted)."""

    def __init__(self, to: str, status: int = 301) -> None:
        self.to, self.status = to, status
        self.log: list[dict[str, str]] = []

    def __call__(self, sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            self.log.append(req)
            body = b"moved"
            sock.sendall(
                f"HTTP/1.1 {self.status} Moved\r\nLocation: {self.to}{req[':target']}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_fill_follows_a_redirect_and_keeps_the_range(tmp_path: Path, status: int) -> None:
    model, files = make_source(tmp_path, [300_000, 100_000])
    seg = "/titles/t/v0/seg0.m4s"
    part = tmp_path / "staging/v0/seg0.m4s.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files[seg][:70_000])
    log: list[dict[str, str]] = []
    with scripted(serve_files(files, log)) as store:
        front_door = Redirector(store.url, status)
        with scripted(front_door) as front:
            fill(front.url, tmp_path / "staging", streams=1)
            assert front.connections == 1  # the redirect's body was read: kept alive
    assert_verified(tmp_path / "staging", model)
    assert {r[":target"] for r in front_door.log} == {r[":target"] for r in log}
    assert [r.get("range") for r in log if r[":target"] == seg] == ["bytes=70000-"]


def test_a_relative_location_on_the_same_server(tmp_path: Path) -> None:
    model, files = make_source(tmp_path, [50_000])
    moved = {"/new" + path: body for path, body in files.items()}

    def handler(sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            if req[":target"].startswith("/titles/"):
                where = "/new" + req[":target"]
                sock.sendall(
                    f"HTTP/1.1 308 Permanent Redirect\r\nLocation: {where}\r\n"
                    "Content-Length: 0\r\n\r\n".encode()
                )
                continue
            body = moved[req[":target"]]
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    with scripted(handler) as server:
        fill(server.url, tmp_path / "staging")
    assert_verified(tmp_path / "staging", model)


def test_a_redirect_loop_fails_the_source_in_one_line_naming_the_url(tmp_path: Path) -> None:
    def handler(sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            hop = "/b" if req[":target"].startswith("/a") else "/a"
            sock.sendall(
                f"HTTP/1.1 302 Found\r\nLocation: {hop}{req[':target']}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )

    with scripted(handler) as server, pytest.raises(FillError) as failed:
        fill(server.url, tmp_path / "staging")
    message = str(failed.value)
    assert "\n" not in message
    assert f"{server.url}/titles/t/files.json" in message
    assert "redirects" in message or "loop" in message
    # A misconfigured source is no transient failure: no retries against it.
    assert server.connections == 1


def test_a_redirect_loop_is_caught_before_the_limit() -> None:
    def handler(sock: socket.socket, _: int) -> None:
        while (req := read_request(sock)) is not None:
            sock.sendall(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {req[':target']}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )

    with scripted(handler) as server:
        pool = Pool()
        try:
            with pytest.raises(BadRedirect, match=f"loop at {server.url}/x"):
                pool.get(server.url + "/x")
        finally:
            pool.close()


def test_https_to_http_is_refused(tmp_path: Path) -> None:
    """An https source redirecting to plain http would hand the download to anyone on the
    path: refused before any connection to the http address."""
    cert, key = self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    with scripted(serve_files({"/x": b"bytes"}, [])) as plain:
        with scripted(Redirector(plain.url), server_tls) as secure:
            pool = Pool(context=ssl.create_default_context(cafile=str(cert)))
            try:
                with pytest.raises(BadRedirect, match=f"from {secure.url}/x to {plain.url}/x"):
                    pool.get(secure.url + "/x")
            finally:
                pool.close()
        assert plain.connections == 0


@pytest.mark.parametrize("location", ["http://[::1/x", "http://[zz]/x"])
def test_a_location_that_is_no_url_fails_the_source_in_one_line(
    tmp_path: Path, location: str
) -> None:
    """It raised a bare ValueError out of the fill (a traceback, the next source never
    tried); it is a misconfigured source like any bad redirect."""

    def handler(sock: socket.socket, _: int) -> None:
        while read_request(sock) is not None:
            sock.sendall(
                f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
            )

    with pytest.raises(BadRedirect, match="bad URL"):
        redirect_target("http://127.0.0.1:1/titles/t/files.json", location, [])
    with scripted(handler) as server, pytest.raises(FillError) as failed:
        fill(server.url, tmp_path / "staging")
    assert "\n" not in str(failed.value) and "bad URL" in str(failed.value)

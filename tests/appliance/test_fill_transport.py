"""The fill's blocking HTTP/1.1 client against scripted servers on loopback: keep-alive
reuse, a stale idle connection, Connection: close, chunked bodies, interim 1xx responses,
read timeouts, truncated bodies, refused connections, an abort from another thread, and
HTTPS with a certificate that is (and one that is not) trusted."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from appliance.fill.http1 import ProtocolError
from appliance.fill.transport import (
    BadURL,
    BodyTruncated,
    ConnectFailed,
    Pool,
    Timeout,
    Timeouts,
    split_url,
)
from tests.appliance.fill_server import read_request, scripted, serve_files


def read_body(pool: Pool, url: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    with pool.get(url, headers) as resp:
        assert resp.status in (200, 206)
        return resp.read_all(1 << 24)


def test_split_url() -> None:
    origin, target = split_url("http://127.0.0.1:8080/titles/a/b.m4s?x=1")
    assert (origin.host, origin.port, target) == ("127.0.0.1", 8080, "/titles/a/b.m4s?x=1")
    assert split_url("https://example.org/")[0].host_field == "example.org"
    assert split_url("http://[::1]:81/")[0].host_field == "[::1]:81"
    with pytest.raises(ValueError):
        split_url("ftp://example.org/x")
    for bad in ("http://127.0.0.1:99999/", "http://[::1", "http://h:0/", f"http://{'a' * 70}/"):
        with pytest.raises(ValueError):
            split_url(bad)


def test_a_url_no_request_can_be_made_of_is_a_transport_error() -> None:
    """Not a bare ValueError: the fill treats it as that source failing, not as a bug."""
    pool = Pool()
    try:
        for bad in ("http://127.0.0.1:99999/x", "http://[::1/x", "http://h/a b"):
            with pytest.raises(BadURL, match="cannot request"):
                pool.get(bad)
    finally:
        pool.close()


def test_keep_alive_reuses_one_connection() -> None:
    files = {"/a": os.urandom(300_000), "/b": b"small"}
    log: list[dict[str, str]] = []
    with scripted(serve_files(files, log)) as server:
        pool = Pool()
        try:
            for _ in range(3):
                assert read_body(pool, server.url + "/a") == files["/a"]
                assert read_body(pool, server.url + "/b") == b"small"
            assert (
                read_body(pool, server.url + "/a", (("Range", "bytes=1000-"),))
                == (files["/a"][1000:])
            )
        finally:
            pool.close()
        assert server.connections == 1
        assert log[-1]["range"] == "bytes=1000-" and log[0]["host"] == server.url[7:]


def test_stale_idle_connection_is_replaced() -> None:
    """The server closes after each response without saying so: the next request on the
    idle connection meets EOF and is sent again on a new one, invisibly."""
    log: list[dict[str, str]] = []
    with scripted(serve_files({"/a": b"x" * 1000}, log, close_after=1)) as server:
        pool = Pool()
        try:
            for _ in range(3):
                assert read_body(pool, server.url + "/a") == b"x" * 1000
        finally:
            pool.close()
        assert server.connections == 3 and len(log) == 3


def test_connection_close_is_not_reused() -> None:
    def handler(sock: socket.socket, _: int) -> None:
        while read_request(sock) is not None:
            sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")

    with scripted(handler) as server:
        pool = Pool()
        try:
            assert read_body(pool, server.url + "/") == b"ok"
            assert read_body(pool, server.url + "/") == b"ok"
        finally:
            pool.close()
        assert server.connections == 2


def test_chunked_body_and_interim_response() -> None:
    body = os.urandom(70_000)

    def handler(sock: socket.socket, _: int) -> None:
        while read_request(sock) is not None:
            sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
            sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(body), 9000):
                piece = body[i : i + 9000]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\nX-Trailer: 1\r\n\r\n")

    with scripted(handler) as server:
        pool = Pool()
        try:
            with pool.get(server.url + "/") as resp:
                assert resp.status == 200 and resp.content_length is None
                out = bytearray()
                small = memoryview(bytearray(777))
                while n := resp.readinto(small):
                    out += small[:n]
                assert bytes(out) == body and resp.complete
            assert read_body(pool, server.url + "/") == body  # the same connection again
        finally:
            pool.close()
        assert server.connections == 1


def test_read_timeout() -> None:
    def handler(sock: socket.socket, _: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123")
        sock.recv(1)  # stall until the client hangs up

    with scripted(handler) as server:
        pool = Pool(Timeouts(connect=2, read=0.3))
        started = time.monotonic()
        with pytest.raises(Timeout), pool.get(server.url + "/") as resp:
            resp.read_all(1000)
        assert time.monotonic() - started < 2.5
        pool.close()


def test_a_dribbled_head_and_a_trickled_body_time_out() -> None:
    """Each byte comes well inside the read timeout, so only the head deadline and the
    speed floor end these."""

    def handler(sock: socket.socket, number: int) -> None:
        read_request(sock)
        if number == 1:
            for ch in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                sock.sendall(bytes([ch]))
                time.sleep(0.05)
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            for _ in range(1000):
                sock.sendall(b"x" * 10)
                time.sleep(0.05)

    with scripted(handler) as server:
        pool = Pool(Timeouts(read=2, head=0.5, low_speed_bps=1000, low_speed_s=0.5))
        with pytest.raises(Timeout, match="no response"):
            pool.get(server.url + "/")
        with pytest.raises(Timeout, match="too slow"), pool.get(server.url + "/") as resp:
            resp.read_all(200_000)
        pool.close()
        assert server.connections == 2


def test_an_endless_trailer_or_padding_cannot_keep_a_body_alive() -> None:
    """After its data a chunked body sends trailer fields forever: dripped (each well inside
    the read timeout), the speed floor ends it, for trailers are no data; as fast as the
    socket goes, the trailer section's size does. Padded chunks end on the framing cap."""
    body = os.urandom(20_000)
    pad_line = b"X-Pad: " + b"a" * 50 + b"\r\n"

    def handler(sock: socket.socket, number: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        if number == 3:  # 1 byte of data per chunk, a 4 KB extension each
            for i in range(len(body)):
                sock.sendall(b"1;" + b"e" * 4000 + b"\r\n" + body[i : i + 1] + b"\r\n")
            return
        sock.sendall(b"%x\r\n%s\r\n0\r\n" % (len(body), body))
        for _ in range(100_000):  # bounded: the client hangs up long before
            sock.sendall(pad_line * (1 if number == 1 else 100))
            if number == 1:
                time.sleep(0.05)

    def read(pool: Pool, url: str) -> bytes:
        out = bytearray()
        buf = memoryview(bytearray(65536))
        with pool.get(url) as resp:
            while n := resp.readinto(buf):
                out += buf[:n]
        return bytes(out)

    with scripted(handler) as server:
        pool = Pool(Timeouts(read=2, head=2, low_speed_bps=1000, low_speed_s=0.5))
        try:
            started = time.monotonic()
            with pytest.raises(Timeout, match="too slow"):
                read(pool, server.url + "/")
            assert time.monotonic() - started < 5
            started = time.monotonic()
            with pytest.raises(ProtocolError, match="trailer"):
                read(pool, server.url + "/")
            with pytest.raises(ProtocolError, match="chunked framing"):
                read(pool, server.url + "/")
            assert time.monotonic() - started < 5
        finally:
            pool.close()


def test_truncated_body_and_missing_framing() -> None:
    def handler(sock: socket.socket, number: int) -> None:
        read_request(sock)
        if number == 1:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 50)
        else:
            sock.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 50)

    with scripted(handler) as server:
        pool = Pool()
        with pytest.raises(BodyTruncated), pool.get(server.url + "/") as resp:
            resp.read_all(1000)
        with pytest.raises(ProtocolError), pool.get(server.url + "/") as resp:
            resp.read_all(1000)
        pool.close()


def test_connect_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectFailed):
        Pool().get(f"http://127.0.0.1:{port}/")


def test_abort_wakes_a_blocked_read() -> None:
    def handler(sock: socket.socket, _: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        sock.recv(1)  # stall until the client hangs up

    with scripted(handler) as server:
        pool = Pool(Timeouts(read=10))
        with pool.get(server.url + "/") as resp:
            threading.Timer(0.2, resp.abort).start()
            started = time.monotonic()
            with pytest.raises(BodyTruncated):
                resp.read_all(1000)
            assert time.monotonic() - started < 2
        pool.close()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeflix test origin")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    files = {"/a": os.urandom(200_000)}
    log: list[dict[str, str]] = []
    with scripted(serve_files(files, log), server_tls) as server:
        assert server.url.startswith("https://")
        trusting = Pool(context=ssl.create_default_context(cafile=str(cert)))
        try:
            for _ in range(2):
                assert read_body(trusting, server.url + "/a") == files["/a"]
        finally:
            trusting.close()
        assert server.connections == 1
        with pytest.raises(ConnectFailed, match="TLS"):
            Pool().get(server.url + "/a")  # the system's CAs do not know this certificate

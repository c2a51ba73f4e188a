"""Blocking HTTP/1.1 GETs for the fill's worker threads (I/O shell): one connection per
stream, kept alive and reused through a Pool, a timeout on connect and on every read, bodies
read straight into the caller's buffer, redirects followed (a few, never https → http).
http1.py parses; downloader.py decides what to fetch.

Blocking sockets in threads rather than asyncio: `recv_into`, hashlib and `os.write` all
release the GIL, so N streams use every core and a byte is copied once, kernel to buffer.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urldefrag, urljoin, urlsplit

from appliance.fill.http1 import (
    BodyFraming,
    ChunkedDecoder,
    Framing,
    ProtocolError,
    ResponseHead,
    body_framing,
    head_end,
    keep_alive,
    parse_head,
    render_get,
)
from appliance.fill.redact import redact
from appliance.fill.retry import SpeedFloor

# How late past its head deadline a response may be noticed (a shorter recv timeout is set
# only when the deadline is nearer than the one in force by more than this).
_HEAD_SLACK_S = 0.05
_RECV = 64 * 1024  # reads of heads and chunked bodies; plain bodies go to the caller's buffer


class TransportError(Exception):
    """The connection failed: refused, reset, timed out, closed early."""


class ConnectFailed(TransportError):
    pass


class Timeout(TransportError):
    pass


class BodyTruncated(TransportError):
    """The connection ended before the response did: closed early, reset, or the network
    gone (no route to the host any more, interface down)."""


def connection_lost(exc: OSError, where: str) -> TransportError:
    """The TransportError for a socket error once connected: every errno (reset, broken
    pipe, EHOSTUNREACH, ENETUNREACH, ENETDOWN, a TLS alert...) is the network's, transient,
    and resumable from the bytes already staged; never a bare OSError, which the fill would
    take for a bug (or a local disk's error) and stop on."""
    if isinstance(exc, TimeoutError):
        return Timeout(f"{where}: timed out")
    return BodyTruncated(f"{where}: {exc.strerror or exc}")


class _Stale(Exception):
    """A reused idle connection was closed by the peer before answering: retry on a new one."""


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0  # for each recv, not the whole body: a slow, steady source is fine
    # The whole response head, however it dribbles in (each byte inside `read` or not).
    head: float = 30.0
    # A body slower than this over `low_speed_s` of waiting is a stalled source (a trickle
    # of a few bytes a second never trips the per-recv timeout). retry.SpeedFloor.
    low_speed_bps: float = 1024.0
    low_speed_s: float = 60.0


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_field(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class BadURL(TransportError):
    """A URL we cannot make a request of (bad port, bad host, bad characters)."""


class BadRedirect(BadURL):
    """A redirect we will not follow: a loop, too many, https → http, no Location. The
    source is misconfigured; asking it again cannot help (as for any BadURL)."""


# 303 too: for a GET it means "fetch that instead", like the others.
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_DRAIN = 64 * 1024  # a redirect body up to this is read, to keep the connection alive


def redirect_target(url: str, location: str | None, seen: Sequence[str]) -> str:
    """Where a redirect from `url` (the last of `seen`, the URLs asked so far) leads, as an
    absolute URL without fragment; BadRedirect, naming the first URL, when not to follow."""
    first = seen[0] if seen else url
    if location is None or not location.strip():
        raise BadRedirect(f"{first}: redirect without a Location at {url}")
    try:
        target = urldefrag(urljoin(url, location.strip())).url
        scheme = urlsplit(target).scheme
    except ValueError as exc:  # an unclosed IPv6 bracket, say: the source's fault
        raise BadRedirect(f"{first}: redirect from {url} to a bad URL ({exc})") from None
    if scheme not in ("http", "https"):
        raise BadRedirect(f"{first}: redirect from {url} to a {scheme or 'schemeless'} URL")
    if urlsplit(url).scheme == "https" and scheme == "http":
        raise BadRedirect(f"{first}: refused to follow a redirect from {url} to {target}")
    if target in seen:
        raise BadRedirect(f"{first}: redirect loop at {target}")
    if len(seen) > MAX_REDIRECTS:
        raise BadRedirect(f"{first}: more than {MAX_REDIRECTS} redirects")
    return target


def split_url(url: str) -> tuple[Origin, str]:
    """(origin, request target) of an http(s) URL; ValueError for anything else (a port
    out of range, an unclosed IPv6 bracket, a host name the resolver cannot take)."""
    parts = urlsplit(url)
    origin = _origin(parts.scheme, parts.netloc)
    if origin is None:
        raise ValueError(f"not an http(s) URL: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return origin, target


@functools.lru_cache(maxsize=64)
def _origin(scheme: str, netloc: str) -> Origin | None:
    """The Origin of every URL with this scheme and netloc (None: not http(s)), worked out
    once: the fill asks it for every file, and host, port and IDNA checks add up."""
    parts = urlsplit(f"{scheme}://{netloc}")
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port
    if port == 0:
        raise ValueError("port 0 is not a port to connect to")
    port = port or (443 if scheme == "https" else 80)
    parts.hostname.encode("idna")  # UnicodeError (a ValueError) where connect would raise it
    return Origin(scheme, parts.hostname, port)


class Connection:
    def __init__(self, origin: Origin, sock: socket.socket) -> None:
        self.origin = origin
        self.sock = sock
        self.pending = bytearray()  # bytes received past the current head or chunked body

    @classmethod
    def open(cls, origin: Origin, timeouts: Timeouts, context: ssl.SSLContext | None) -> Connection:
        try:
            sock = socket.create_connection((origin.host, origin.port), timeout=timeouts.connect)
        except TimeoutError:
            raise Timeout(f"connect to {origin.host}:{origin.port} timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"connect to {origin.host}:{origin.port}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if origin.scheme == "https":
                sock = (context or ssl.create_default_context()).wrap_socket(
                    sock, server_hostname=origin.host
                )
            sock.settimeout(timeouts.read)
        except OSError as exc:
            sock.close()
            raise ConnectFailed(f"TLS with {origin.host}:{origin.port}: {exc}") from None
        return cls(origin, sock)

    def read_head(self, reused: bool, within: float) -> ResponseHead:
        """The next final (non-1xx) response head, all of it within `within` seconds (else
        TimeoutError); bytes after it stay in `pending`."""
        deadline = time.monotonic() + within
        read_timeout = timeout = self.sock.gettimeout()
        try:
            return self._read_head(reused, deadline, timeout)
        finally:
            if self.sock.gettimeout() != read_timeout:
                self.sock.settimeout(read_timeout)

    def _read_head(self, reused: bool, deadline: float, timeout: float | None) -> ResponseHead:
        while True:
            while not (end := head_end(self.pending)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                # Shortened only when the deadline is nearer than the timeout in force by
                # more than _HEAD_SLACK_S: a settimeout per recv was an ioctl per request.
                if timeout is None or left < timeout - _HEAD_SLACK_S:
                    timeout = left
                    self.sock.settimeout(left)
                data = self.sock.recv(_RECV)
                if not data:
                    if reused and not self.pending:
                        raise _Stale
                    raise BodyTruncated("connection closed before a complete response head")
                self.pending += data
            head = parse_head(self.pending[:end])
            del self.pending[:end]
            if not 100 <= head.status < 200 or head.status == 101:
                return head

    def abort(self) -> None:
        """Wake a recv blocked in another thread (it then sees the connection closed)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


class Response:
    """One response's head and body; close() returns a reusable connection to the pool."""

    def __init__(self, pool: Pool, conn: Connection, head: ResponseHead) -> None:
        self._pool = pool
        self._floor = SpeedFloor(pool.timeouts.low_speed_bps, pool.timeouts.low_speed_s)
        self._conn = conn
        self.head = head
        self.status = head.status
        self.url = ""  # the URL that answered, after any redirects (Pool.get)
        self.framing: BodyFraming = body_framing(head)
        self._left = self.framing.length if self.framing.kind is Framing.LENGTH else 0
        self._chunks = ChunkedDecoder() if self.framing.kind is Framing.CHUNKED else None
        self._pieces: list[memoryview] = []
        self._closed = False

    @property
    def content_length(self) -> int | None:
        return self.framing.length if self.framing.kind is Framing.LENGTH else None

    @property
    def complete(self) -> bool:
        if self._chunks is not None:
            return self._chunks.done and not self._pieces
        return self.framing.kind is not Framing.CLOSE and self._left == 0

    def readinto(self, view: memoryview) -> int:
        """Body bytes into `view`; 0 at the end of the body. BodyTruncated, Timeout and
        ProtocolError as they happen."""
        if not len(view) or self.complete:
            return 0
        if self.framing.kind is Framing.CLOSE:
            raise ProtocolError("response body without Content-Length or chunked framing")
        try:
            if self._chunks is not None:
                return self._read_chunked(view)
            started = time.monotonic()
            n = self._read_length(view)
            self._progress(time.monotonic() - started, n)
            return n
        except TimeoutError:
            raise Timeout("no data from the source within the read timeout") from None
        except OSError as exc:  # not only ConnectionError: EHOSTUNREACH is a plain OSError
            raise connection_lost(exc, "connection lost mid-body") from None

    def _progress(self, waited: float, nbytes: int) -> None:
        """Feed the speed floor `nbytes` of body data after `waited` seconds on the socket;
        Timeout when the source is too slow."""
        floor = self._floor.feed(waited, nbytes)
        if floor is None:
            raise Timeout(
                f"source too slow: under {self._floor.min_bps:.0f} bytes/s for "
                f"{self._floor.period_s:g} s"
            )
        self._floor = floor

    def _read_length(self, view: memoryview) -> int:
        want = min(len(view), self._left)
        pending = self._conn.pending
        if pending:
            n = min(want, len(pending))
            view[:n] = pending[:n]
            del pending[:n]
        else:
            n = self._conn.sock.recv_into(view, want)
            if n == 0:
                raise BodyTruncated(f"connection closed with {self._left} body bytes to come")
        self._left -= n
        return n

    def _read_chunked(self, view: memoryview) -> int:
        """Reads until a chunk's data or the end of the body, feeding the speed floor each
        recv with the body data it brought: framing alone (trailers, extensions) is no
        progress, so a source sending only that is too slow, never a stream kept alive."""
        assert self._chunks is not None
        while not self._pieces and not self._chunks.done:
            self._chunks.check()
            started = time.monotonic()
            data = bytes(self._conn.pending) or self._conn.sock.recv(_RECV)
            waited = time.monotonic() - started
            self._conn.pending.clear()
            if not data:
                raise BodyTruncated("connection closed inside a chunked body")
            pieces, used = self._chunks.feed(data)
            self._pieces = [p for p in pieces if len(p)]
            self._conn.pending += data[used:]  # the next response's bytes, if any
            self._progress(waited, sum(len(p) for p in self._pieces))
        if not self._pieces:
            return 0
        piece = self._pieces[0]
        n = min(len(view), len(piece))
        view[:n] = piece[:n]
        if n == len(piece):
            self._pieces.pop(0)
        else:
            self._pieces[0] = piece[n:]
        return n

    def read_all(self, limit: int) -> bytes:
        """The whole body, refusing more than `limit` bytes (ProtocolError)."""
        out = bytearray()
        buf = memoryview(bytearray(_RECV))
        while n := self.readinto(buf):
            out += buf[:n]
            if len(out) > limit:
                raise ProtocolError(f"body longer than {limit} bytes")
        return bytes(out)

    def abort(self) -> None:
        self._conn.abort()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        reusable = self.status >= 200 and keep_alive(self.head)  # not after a 101 switch
        if reusable and self.complete and not self._conn.pending:
            self._pool.put(self._conn)
        else:
            self._conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._closed = True  # an error mid-body: the connection's state is unknown
            self._conn.close()
        self.close()


class Pool:
    """Idle keep-alive connections per origin, shared by the threads of a fill run."""

    def __init__(
        self,
        timeouts: Timeouts | None = None,
        context: ssl.SSLContext | None = None,
        max_idle: int = 16,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self.context = context
        self.max_idle = max_idle
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def get(
        self,
        url: str,
        headers: Sequence[tuple[str, str]] = (),
        watch: Callable[[Connection], None] | None = None,
        if_range: tuple[str, str] | None = None,
    ) -> Response:
        """Send a GET and return the response once its head is in, after following any
        redirects (with the same `headers`: a Range holds for the file wherever it moved);
        the caller reads the body and closes the response (a `with` block) to give the
        connection back. `if_range` (URL as redact() shows it, validator) adds If-Range only
        on a request to that URL: a validator belongs to the server that gave it (a peer's
        token, re-signed daily, does not change which server that is), and a redirect (a
        balancer in front of replicas) may lead elsewhere this time. `watch` is told each
        connection used, so another thread can abort() it while we wait."""
        seen = [url]
        while True:
            asked = headers
            if if_range is not None and if_range[0] == redact(seen[-1]):
                asked = [*headers, ("If-Range", if_range[1])]
            resp = self._get_once(seen[-1], asked, watch)
            if resp.status not in REDIRECTS:
                resp.url = seen[-1]
                return resp
            location = resp.head.get("location")
            _discard(resp)
            seen.append(redirect_target(seen[-1], location, seen))

    def _get_once(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        watch: Callable[[Connection], None] | None,
    ) -> Response:
        try:
            origin, target = split_url(url)
            request = render_get(origin.host_field, target, headers)
        except ValueError as exc:  # the source's fault, not a bug: that source fails
            raise BadURL(f"cannot request {url!r}: {exc}") from None
        # At most one retry, and only when a reused idle connection turned out to be closed.
        for _ in range(2):
            conn, reused = self._take(origin)
            if watch is not None:
                watch(conn)
            try:
                conn.sock.sendall(request)
                head = conn.read_head(reused, self.timeouts.head)
                return Response(self, conn, head)
            except _Stale:
                conn.close()
                continue
            except TimeoutError:
                conn.close()
                raise Timeout(f"no response from {origin.host}:{origin.port} in time") from None
            except OSError as exc:  # reset, no route to host, a TLS alert: all the network's
                conn.close()
                if reused:
                    continue
                raise connection_lost(exc, f"connection to {origin.host}:{origin.port}") from None
            except BaseException:
                conn.close()
                raise
        raise BodyTruncated(f"{origin.host}:{origin.port} closed two connections in a row")

    def _take(self, origin: Origin) -> tuple[Connection, bool]:
        with self._lock:
            for i, conn in enumerate(self._idle):
                if conn.origin == origin:
                    return self._idle.pop(i), True
        return Connection.open(origin, self.timeouts, self.context), False

    def put(self, conn: Connection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _discard(resp: Response) -> None:
    """Done with a redirect: a small body is read so its connection can be reused, anything
    else (large, chunked, until close) closes the connection instead of being read."""
    with resp:
        if resp.framing.kind is Framing.LENGTH and resp.framing.length <= _DRAIN:
            resp.read_all(_DRAIN)

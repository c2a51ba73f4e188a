"""The I/O shell: accepts connections on uvloop and sends the cores' ResponsePlans.

Connections are driven by the loop's readiness callbacks on raw non-blocking sockets rather
than asyncio transports, because a transport owns its fd and cannot hand it to os.sendfile:
bodies go out zero-copy (head with MSG_MORE, then sendfile), resumed when writable. A
`Site` (origin or appliance) maps decoded paths to files; everything else is decided here
or in the pure cores: parsing, plans, timeouts, caps, graceful stop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

from edgeflix.http.connection import Connection
from edgeflix.http.content import DateCache
from edgeflix.http.errors import HttpError
from edgeflix.http.filecache import FileCache, OpenFile
from edgeflix.http.paths import split_path
from edgeflix.http.plan import (
    FileMeta,
    ResponsePlan,
    plan_error,
    plan_options,
    plan_response,
    render_head,
)
from edgeflix.http.ranges import Span
from edgeflix.http.request import RequestHead
from edgeflix.http.residency import DiskReader
from edgeflix.http.routes import FastRoute
from edgeflix.http.stats import NO_TITLE, ServerStats
from edgeflix.log import event

log = logging.getLogger("edgeflix.http")

_CONDITIONAL = frozenset(
    ("range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range")
)
_CACHED_HEADS = ("GET", "HEAD")
# Errors opening a file that mean "not ours to serve" (404), not a failure of the box (500).
_NOT_SERVABLE = frozenset((errno.ENOTDIR, errno.EACCES, errno.ENAMETOOLONG))
# At the connection cap, an idle keep-alive connection is closed for a newcomer once idle
# this long (or half the keep-alive timeout, if shorter): see FileServer.make_room.
EVICT_IDLE_S = 5.0
# How old the Date header and idle deadline may get (see FileServer.fresh).
_TICK_S = 0.01
# Out of file descriptors, accepting pauses this long before it is tried again.
ACCEPT_PAUSE_S = 0.1
# How long an armed route (routes.py) may go on sending a file that was unlinked, replaced or
# rewritten in place at the same size behind our back: its full fstat (~3k instructions,
# mostly building the stat_result) is done once per this, its size (lseek) per request.
_VERIFY_S = 0.1


class FileTarget(NamedTuple):
    """A file a Site wants served: absolute path, its name inside the title, and the title.
    (Immutable like the frozen dataclasses elsewhere, but cheaper to build once per request.)"""

    path: str
    rel_path: str
    title_id: str
    expected_size: int | None = None  # from an index: a different size on disk is damage
    # The routing decision depends only on the request bytes and the site's storage view (no
    # clock, no client address): the server may reuse it for identical request heads until
    # `refresh` reports a change.
    reusable: bool = False


class Site(Protocol):
    """What a server serves: the origin store or an appliance's disks."""

    def route(
        self, request: RequestHead, segments: tuple[str, ...], client_ip: str
    ) -> FileTarget | ResponsePlan: ...

    def relocate(self, target: FileTarget) -> FileTarget | None:
        """Called once when a located file vanished (e.g. moved between disks meanwhile)."""
        ...


@dataclass(frozen=True, slots=True)
class ServerSettings:
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 4096
    max_header_bytes: int = 16 * 1024
    use_sendfile: bool = True
    server_name: str = "edgeflix"
    # Files kept open between requests (one fstat per hit instead of open+fstat+close).
    open_files: int = 256
    # Routed plain requests remembered by their exact head bytes (players repeat the same
    # head for every segment but the path): a hit skips parsing and routing.
    fast_routes: int = 1024
    # How stale the site's view of storage may get: a change (load, rm, repair) is seen by
    # requests arriving this long after it at most. Each look costs a SQLite read transaction
    # (3 syscalls and the pager's code, cold after a large sendfile), so it is not done per
    # request; a file that vanished meanwhile is still caught (fstat, then a forced look).
    storage_check_s: float = 0.01
    # A response whose bytes a reader thread is bringing in from the disk (residency.py)
    # waits this long for them, then gets a 503 (or, mid-body, is cut): a player moves to its
    # next URL well before its own fragment timeout (hls.js: 20 s).
    disk_timeout_s: float = 10.0
    # Reader threads per worker for those read-ins: a stuck disk holds one each, the others
    # keep reading for the other disks.
    disk_threads: int = 4


class Prepared(NamedTuple):
    """A response ready to send: rendered head (minus Date/Connection) and body pieces.
    (A NamedTuple rather than a frozen dataclass: one is built per request on the hot path.)"""

    status: int
    head: bytes
    body: tuple[bytes | Span, ...]
    file: OpenFile | None  # in use until the connection releases it
    title: str
    close: bool = False


class FileServer:
    """One process's HTTP server over one or more listening sockets."""

    def __init__(
        self,
        site: Site,
        settings: ServerSettings,
        *,
        stats: ServerStats | None = None,
        boundary: Callable[[], str] = lambda: secrets.token_hex(12),
        refresh: Callable[[], object] | None = None,
    ) -> None:
        self.site = site
        self.settings = settings
        self.stats = stats or ServerStats()
        self.loop = asyncio.get_running_loop()
        self.dates = DateCache()
        self.connections: set[Connection] = set()
        # Connections with no request in progress, longest idle first (O(1) to add, drop,
        # take the first): at the cap, one of them is closed to make room (`make_room`).
        self.idle: OrderedDict[Connection, None] = OrderedDict()
        self.stopping = False
        self._boundary = boundary
        self._listeners: list[socket.socket] = []
        self._accept_failing = False  # in a spell of failed accepts (logged once)
        self.files = FileCache(settings.open_files)
        self.disk_reader = DiskReader(self.loop.call_soon_threadsafe, settings.disk_threads)
        self._tail_date = b""
        self.tails = (b"", b"")
        # Brings the site's view of storage up to date (the index reader's freshness check) and
        # returns a value that changes whenever that view did: checked when the loop's cached
        # clock moved (at most once per iteration and per millisecond on uvloop, so a change
        # is seen within a millisecond) rather than per request, and again before relocating
        # a file that vanished (a tier move's unlink is never missed).
        self._refresh = refresh
        self._storage_view: object = None
        self._refresh_failing = False  # logged once per failing spell, not per request
        self._storage_due = -1.0
        # Set by a timer _TICK_S after each `fresh()` (armed only while requests come, so an
        # idle worker does not wake): the hot path tests one flag instead of reading the clock.
        self.stale = True
        self._tick_s = min(settings.storage_check_s, _TICK_S)
        # Advanced every _VERIFY_S: an armed route fully re-checks its file once per epoch.
        self.epoch = 0
        self._verify_due = -1.0
        # Keep-alive deadline of a connection that just finished a response, as of `fresh()`.
        self.idle_deadline = 0.0
        self.fast: dict[bytes, FastRoute] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._busy_msg = render_head(503, plan_error(503).headers) + b"Connection: close\r\n\r\n"
        self._busy_msg += b"".join(p for p in plan_error(503).body if isinstance(p, bytes))

    # -- listening -------------------------------------------------------------------------

    def serve(self, sock: socket.socket) -> None:
        """Start accepting on a bound, listening socket (made non-blocking here)."""
        sock.setblocking(False)
        self._listeners.append(sock)
        self.loop.add_reader(sock.fileno(), self._on_accept, sock)
        if self._sweeper is None:
            self._schedule_sweep()

    def _on_accept(self, lsock: socket.socket) -> None:
        for _ in range(128):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE/ENFILE (or ENOBUFS): the listening socket stays readable, so retrying
                # on the next readiness event would spin; pause accepting briefly instead,
                # leaving the rest queued, and say so once per spell.
                self._pause_accept(lsock, exc)
                return
            self._accept_failing = False
            self.stats.connections_total += 1
            if self.stopping or (
                len(self.connections) >= self.settings.max_connections and not self.make_room()
            ):
                self.stats.rejected_connections += 1
                self._reject(sock)
                continue
            sock.setblocking(False)
            # No Nagle: a head or a short last segment must not wait for an ACK; the head still
            # shares a packet with the body through MSG_MORE. SO_SNDBUF stays with the kernel's
            # autotuning (setting it switches that off): it grows until one sendfile moves a
            # whole segment.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ip = addr[0] if isinstance(addr, tuple) else "127.0.0.1"
            conn = Connection(self, sock, ip)
            self.connections.add(conn)
            self.stats.open_connections = len(self.connections)
            self._idle.clear()
            conn.start()

    def _pause_accept(self, lsock: socket.socket, exc: OSError) -> None:
        self.stats.accept_errors += 1
        if not self._accept_failing:
            event(log, "accept.failed", logging.WARNING, error=exc.strerror or str(exc),
                  action=f"pausing accepts for {ACCEPT_PAUSE_S} s at a time")  # fmt: skip
            self._accept_failing = True
        self.loop.remove_reader(lsock.fileno())

        def resume() -> None:
            if lsock in self._listeners and not self.stopping:
                self.loop.add_reader(lsock.fileno(), self._on_accept, lsock)

        self.loop.call_later(ACCEPT_PAUSE_S, resume)

    def make_room(self) -> bool:
        """At the cap, close the connection idle the longest (no request in progress, as
        nginx reuses its keep-alive connections): one client holding every slot with idle
        keep-alives must not lock everyone else out for the keep-alive timeout. Only one
        idle a while (EVICT_IDLE_S, at most half the keep-alive timeout): a player between
        two segment requests is not hoarding a slot, and closing its connection only sends
        it back into the same full server (a burst at the cap became a chain of evictions).
        False when none is: then the newcomer gets a 503."""
        if not self.idle:
            return False
        oldest = next(iter(self.idle))
        keepalive = self.settings.keepalive_timeout_s
        # An idle connection's deadline is when it went idle plus the keep-alive timeout.
        idle_since = oldest.deadline - keepalive
        if self.loop.time() - idle_since < min(EVICT_IDLE_S, keepalive / 2):
            return False
        oldest.close()  # leaves `idle` and `connections` through forget()
        self.stats.evicted_connections += 1
        return True

    def _reject(self, sock: socket.socket) -> None:
        # Best effort: a 503 fits in any socket buffer, so one non-blocking send is enough.
        try:
            sock.setblocking(False)
            sock.send(self._busy_msg)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.idle.pop(conn, None)
        self.stats.open_connections = len(self.connections)
        if not self.connections:
            self._idle.set()

    # -- timeouts --------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        s = self.settings
        interval = min(max(min(s.header_timeout_s, s.keepalive_timeout_s) / 4, 0.05), 1.0)
        self._sweeper = self.loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        # One periodic pass instead of a timer per request keeps the hot path timer-free.
        now = self.loop.time()
        for conn in [c for c in self.connections if c.deadline <= now]:
            conn.expire()
        try:
            if self._refresh is not None:
                # Requests look at storage too, but an idle worker must also let go of the fds
                # of a disk taken out meanwhile (_check_storage), or an operator cannot unmount.
                self._check_storage()
            self.files.sweep()
        finally:
            # Whatever happened, the next pass comes: it is what enforces every timeout.
            self._schedule_sweep()

    def fresh(self) -> None:
        """Before answering requests while `stale`: the Date tails, the idle deadline and the
        site's view of storage, brought up to date at most every _TICK_S (as nginx updates its
        cached time once per loop iteration, not per request)."""
        self.stale = False
        self.loop.call_later(self._tick_s, self._mark_stale)
        now = self.loop.time()
        if now >= self._verify_due:
            self._verify_due = now + _VERIFY_S
            self.epoch += 1
        self.idle_deadline = now + self.settings.keepalive_timeout_s
        date = self.dates.get()
        if date is not self._tail_date:
            self._tail_date = date
            prefix = b"Date: " + date + b"\r\n"
            # Indexed by keep-alive: `Date`, `Connection` and the blank line ending the head.
            self.tails = (prefix + b"Connection: close\r\n\r\n",
                          prefix + b"Connection: keep-alive\r\n\r\n")  # fmt: skip
        if self._refresh is not None and now >= self._storage_due:
            self._storage_due = now + self.settings.storage_check_s
            self._check_storage()

    def _mark_stale(self) -> None:
        self.stale = True

    def _check_storage(self) -> None:
        assert self._refresh is not None
        try:
            view = self._refresh()
        except Exception as exc:  # the index's own disk failing, say
            # Keep the last view: cached answers still serve, and timeouts keep running.
            if not self._refresh_failing:
                event(log, "storage.check_failed", logging.ERROR, error=exc)
            self._refresh_failing = True
            return
        if self._refresh_failing:
            event(log, "storage.check_recovered")
            self._refresh_failing = False
        if view != self._storage_view:
            self._storage_view = view
            self.fast.clear()
            # Open fds too: one on a disk just taken out would pin the dead filesystem (an
            # operator's umount), and after the disk came back it would still read the dead
            # one (EIO) where the path now leads to the re-verified file. Reopening is cheap,
            # and the index changes only on loads, removals, moves and disk changes.
            self.files.clear()

    # -- requests --------------------------------------------------------------------------

    def prepare(self, request: RequestHead, client_ip: str, key: bytes = b"") -> Prepared:
        """Decide the whole response to one parsed request; never raises for client input.
        `key`: the request's head bytes, under which a reusable plain route is remembered."""
        try:
            if request.method == "OPTIONS":
                return self._generated(plan_options(request), request)
            segments = split_path(request.path)
            route = self.site.route(request, segments, client_ip)
        except HttpError as exc:
            return self._generated(plan_error(exc.status, request), request, close=exc.close)
        if isinstance(route, ResponsePlan):
            return self._generated(route, request)
        return self._file(route, request, key)

    def prepare_fast(self, route: FastRoute) -> Prepared | None:
        """The answer to a remembered plain request, or None when anything about its file
        changed (vanished, moved, resized): then the caller takes the full path."""
        target = route.target
        try:
            file = self.files.acquire(target.path, target.title_id, target.rel_path)
        except OSError:
            return None
        cached = file.heads.get(route.method)
        if cached is None or file.size != target.expected_size or cached.title != target.title_id:
            self.files.release(file)
            return None
        if route.file is not file or route.size != file.size or route.mtime_ns != file.mtime_ns:
            route.arm(file, cached, self.stats, self.files.touch)
        return cached

    def prepare_error(self, exc: HttpError) -> Prepared:
        return self._generated(plan_error(exc.status, head_only=exc.head), None, close=True)

    def _generated(
        self, plan: ResponsePlan, request: RequestHead | None, close: bool = False
    ) -> Prepared:
        body = plan.body if request is None or request.method != "HEAD" else ()
        head = render_head(plan.status, plan.headers)
        return Prepared(plan.status, head, body, None, plan.title or NO_TITLE, close)

    def _file(self, target: FileTarget, request: RequestHead, key: bytes = b"") -> Prepared:
        file = self._open(target)
        if isinstance(file, int):
            return self._missed(target, request, file)
        if target.expected_size is not None and file.size != target.expected_size:
            # Truncated or grown behind the index's back: damage, never a short or long body.
            event(log, "file.size_mismatch", logging.WARNING, path=target.path, size=file.size)
            self.files.discard(file)
            self.files.release(file)
            return self._missed(target, request)
        method = request.method
        if request.headers.keys().isdisjoint(_CONDITIONAL) and method in _CACHED_HEADS:
            # A plain GET/HEAD depends only on the file: its answer is planned once per version,
            # and the Prepared itself kept (nothing to build per request on the hot path).
            cached = file.heads.get(method)
            if cached is None or cached.title != target.title_id:
                meta = FileMeta(file.size, file.mtime_ns, target.rel_path)
                plan = plan_response(meta, request, "")
                head = render_head(plan.status, plan.headers)
                cached = Prepared(plan.status, head, plan.body, file, target.title_id)
                file.heads[method] = cached
            if (
                key
                and target.reusable
                and target.expected_size is not None
                and self._storage_view is not None  # a view that can report its changes
            ):
                fast = self.fast
                if len(fast) >= self.settings.fast_routes:
                    fast.clear()  # junk or a huge catalogue: start over rather than track LRU
                route = fast[key] = FastRoute(target, method, request.keep_alive)
                route.arm(file, cached, self.stats, self.files.touch)
            return cached
        meta = FileMeta(file.size, file.mtime_ns, target.rel_path)
        plan = plan_response(meta, request, self._boundary(), self.dates.now())
        head = render_head(plan.status, plan.headers)
        if not plan.body:
            self.files.release(file)
            return Prepared(plan.status, head, (), None, target.title_id)
        return Prepared(plan.status, head, plan.body, file, target.title_id)

    def _missed(self, target: FileTarget, request: RequestHead, status: int = 404) -> Prepared:
        """404 (or `status`) for a routed file that cannot be served. A target an index
        located (it has an expected size) is a real title, counted under it; a path straight
        from the client (the origin's) stays "-", or junk ids would each get a counter."""
        plan = plan_error(status, request)
        if target.expected_size is not None:
            plan = replace(plan, title=target.title_id)
        return self._generated(plan, request)

    def _open(self, target: FileTarget) -> OpenFile | int:
        """The open file, or the status to answer instead: 404 when it is not there or not
        ours to serve (a directory, a symlink, no permission), 500 when opening it failed
        otherwise (EIO from a dying disk, no fds left), as nginx does: an error of this box,
        which a player answers by moving to its next URL, not an absence to be cached."""
        for attempt in range(2):
            try:
                return self.files.acquire(target.path, target.title_id, target.rel_path)
            except FileNotFoundError:
                if attempt:
                    return 404
                # A background tier move may have just renamed it: ask the index once more.
                if self._refresh is not None:
                    self._check_storage()
                moved = self.site.relocate(target)
                if moved is None:
                    return 404
                target = moved
            except IsADirectoryError:
                return 404
            except OSError as exc:
                if exc.errno in _NOT_SERVABLE:
                    return 404
                event(log, "file.open_failed", logging.WARNING, path=target.path, error=exc)
                return 404 if exc.errno == errno.ELOOP else 500  # a planted symlink: refused
        return 404

    # -- stopping --------------------------------------------------------------------------

    async def stop(self, deadline_s: float) -> None:
        """Graceful stop, in order:
        1. stop accepting and close the listening sockets;
        2. close idle keep-alive connections, ask busy ones to close after their response;
        3. wait for in-flight responses up to `deadline_s`;
        4. close whatever is left.
        """
        self.stopping = True
        for sock in self._listeners:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for conn in list(self.connections):
            conn.drain()
        if self.connections:
            try:
                await asyncio.wait_for(self._idle.wait(), deadline_s)
            except TimeoutError:
                event(log, "stop.forced", logging.WARNING, connections=len(self.connections))
        for conn in list(self.connections):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.disk_reader.close()
        self.files.clear()


def bind(host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket; with `reuse_port`, several processes can share the port and the
    kernel spreads connections across them (SO_REUSEPORT)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

"""One client connection: read request heads, send one Prepared response at a time.

Phases: IDLE (waiting for a request; keep-alive deadline, or the header deadline for a fresh
connection), HEAD (part of a head received; header deadline counted from its first byte, so
a slowloris client cannot extend it), SEND (a response in flight; deadline pushed on progress),
LINGER (we answered and closed our side; reading and discarding until EOF so the peer sees
the answer rather than a reset), DISK (a response waiting for a reader thread to bring its
next bytes into the page cache: residency.py; neither reading nor writing meanwhile). An
IDLE connection is on the server's idle list, least recently used first, once it has been
answered: at the connection cap the first one there is closed to let a newcomer in.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import TYPE_CHECKING

from edgeflix.http.errors import HttpError
from edgeflix.http.ranges import Span
from edgeflix.http.request import parse_head
from edgeflix.http.residency import CHECK_MAX
from edgeflix.log import event

if TYPE_CHECKING:
    from edgeflix.http.filecache import OpenFile
    from edgeflix.http.residency import ReadJob
    from edgeflix.http.routes import FastRoute
    from edgeflix.http.server import FileServer, Prepared

log = logging.getLogger("edgeflix.http")

IDLE, HEAD, SEND, LINGER, CLOSED, DISK = range(6)
RECV_BYTES = 64 * 1024
FALLBACK_CHUNK = 256 * 1024
LINGER_S = 2.0
# A read-in slower than this is logged and counted against the file's disk (stats.slow_reads).
SLOW_READ_S = 2.0
# Heads longer than this are never remembered as routes (routes.py): a player's are a few hundred
# bytes, while 1024 remembered 16 KiB heads (junk query strings, padded headers) held 16 MB more
# per worker.
ROUTE_KEY_MAX = 4096
# sendfile cannot work on this file system or file: count it, then copy through user space.
_SENDFILE_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)
# The client went away (or stalled out): its cut response is not a failure of ours.
_PEER_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ETIMEDOUT)
_MSG_MORE = socket.MSG_MORE
_SEEK_END = os.SEEK_END


class Connection:
    __slots__ = (
        "buf",
        "close_after",
        "deadline",
        "fd",
        "file",
        "file_fd",
        "ip",
        "just_read",
        "phase",
        "piece",
        "piece_off",
        "pieces",
        "read_in",
        "read_job",
        "reading",
        "sendfile",
        "sent",
        "server",
        "sock",
        "status",
        "title",
        "writing",
    )

    def __init__(self, server: FileServer, sock: socket.socket, ip: str) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.ip = ip
        self.buf = bytearray()
        self.phase = IDLE
        self.deadline = 0.0
        self.reading = False
        self.writing = False
        self.close_after = False
        self.pieces: tuple[bytes | Span, ...] = ()
        self.piece = 0
        self.piece_off = 0
        self.file: OpenFile | None = None
        self.file_fd = -1
        self.sent = 0
        self.status = 0
        self.title = ""
        self.sendfile = server.settings.use_sendfile
        self.read_in: OpenFile | None = None  # the file a reader thread is reading in
        self.read_job: ReadJob | None = None  # and that read-in, until it reports
        self.just_read = False  # its bytes came in: send them without asking again

    def start(self) -> None:
        # The first request must arrive within the header timeout, not the keep-alive one.
        server = self.server
        self.deadline = server.loop.time() + server.settings.header_timeout_s
        # Not on the idle list until it has been answered once: its first request may be in
        # the socket already, unread, and closing it for a newcomer would answer neither
        # (a burst at the cap then gets empty replies instead of 503s).
        self._resume_reading()

    # -- reading ---------------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self.reading:
            self.server.loop.add_reader(self.fd, self._on_readable)
            self.reading = True

    def _pause_reading(self) -> None:
        if self.reading:
            self.server.loop.remove_reader(self.fd)
            self.reading = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        if self.phase == IDLE and not self.buf:
            server = self.server
            if server.stale:
                server.fresh()
            route = server.fast.get(data)
            if route is not None and route.file is not None and self.sendfile:
                # An armed route (routes.py): the whole keep-alive GET inline, as few Python
                # calls and objects as it takes, because this is what nearly every request of
                # a player is. Anything unusual goes on in the general path.
                file = route.file
                # Only bytes already cached go out from here (residency.py): a read from the
                # disk would stop every connection of this worker while it lasts.
                if (
                    not file.evicted
                    and not server.stopping
                    and (
                        file.cached_epoch == server.epoch
                        or file.cached(route.start, route.length, server.epoch)
                    )
                ):
                    # Per request the size (lseek: a truncated file must become a 404, never a
                    # short body); the whole fstat (unlinked, replaced, rewritten) once an epoch.
                    if route.checked == server.epoch:
                        try:
                            ok = os.lseek(file.fd, 0, _SEEK_END) == route.size
                        except OSError:
                            ok = False
                    else:
                        ok = route.verify(server.epoch)
                    if ok:
                        tail = server.tails[1]
                        if route.tail is not tail:
                            route.whole = route.head + tail
                            route.tail = tail
                        head = route.whole
                        sent = -1
                        try:
                            n = self.sock.send(head, _MSG_MORE)
                        except OSError:
                            n = -1
                        if n == len(head):
                            try:
                                sent = os.sendfile(self.fd, file.fd, route.start, route.length)
                            except OSError:
                                sent = -1
                            if sent == route.length:
                                counts = route.counts
                                counts[0] += 1
                                counts[1] += sent
                                self.status = 200
                                self.deadline = server.idle_deadline
                                # Idle again, now the most recently used (O(1)); on
                                # the list from its first answer on.
                                server.idle[self] = None
                                server.idle.move_to_end(self)
                                return
                        self._continue_armed(route, head, n, sent)
                        return
        if self.phase == LINGER:
            return
        if self.phase == IDLE:
            self.phase = HEAD
            self.deadline = self.server.loop.time() + self.server.settings.header_timeout_s
            self.server.idle.pop(self, None)
        self.buf += data
        if self.phase == HEAD:
            self._process()

    def _process(self) -> None:
        """Answer every complete request in the buffer, one response at a time (pipelining)."""
        server = self.server
        if server.stale:
            server.fresh()
        fast = server.fast
        limit = server.settings.max_header_bytes
        while self.phase == HEAD:
            buf = self.buf
            end = buf.find(b"\r\n\r\n") + 4
            prepared = None
            key = b""
            if 4 < end <= ROUTE_KEY_MAX:
                # A head seen before, byte for byte, means the same request: its remembered
                # route skips parsing and routing (the file is still checked by fstat).
                key = bytes(buf[:end])
                route = fast.get(key)
                if route is not None:
                    prepared = server.prepare_fast(route)
                    keep_alive = route.keep_alive
            if prepared is None:
                try:
                    parsed = parse_head(buf, 0, limit)
                except HttpError as exc:
                    self._begin(server.prepare_error(exc), keep_alive=False)
                    return
                if parsed is None:
                    return  # wait for more bytes; the header deadline keeps running
                request, end = parsed
                keep_alive = request.keep_alive
                prepared = server.prepare(request, self.ip, key if len(key) == end else b"")
            del buf[:end]
            keep_alive = keep_alive and not prepared.close and not server.stopping
            if not self._begin(prepared, keep_alive):
                return  # blocked on a slow reader: resumed by _on_writable
            # Sent: `_finish` moved on to HEAD (more pipelined bytes), IDLE or LINGER.

    # -- writing ---------------------------------------------------------------------------

    def _begin(self, prepared: Prepared, keep_alive: bool) -> bool:
        """Start sending; True when the response went out completely right away."""
        server = self.server
        self.phase = SEND
        self.close_after = not keep_alive
        head = prepared.head + server.tails[keep_alive]
        body = prepared.body
        file = self.file = prepared.file
        self.status = prepared.status
        self.title = prepared.title
        self.piece = 0
        self.piece_off = 0
        self.sent = -len(head)  # count body bytes only
        if file is not None:
            self.file_fd = file.fd
            first = body[0] if body else None
            if isinstance(first, Span) and not file.cached(first.start, first.length, server.epoch):
                # Not cached: read in before the head goes out, so a disk that fails the
                # read gets the client an error status rather than a head and a cut.
                self.pieces = (head, *body)
                self._read_ahead(first.start, first.length)
                return False
            if len(body) == 1 and self.sendfile:
                # The common file answer, head then one span: two syscalls when the socket
                # takes it all (MSG_MORE packs the head with the first body bytes).
                self.pieces = pieces = (head, body[0])
                sent = self._send_whole(head, pieces[1])
                if sent is True:
                    self._finish()
                    return True
                if sent is False:
                    self._wait_writable()
                    return False
            else:
                self.pieces = (head, *body)
        else:
            self.file_fd = -1
            self.pieces = (head, body[0]) if len(body) == 1 else (head, *body)
        if self._flush():
            self._finish()
            return True
        if self.phase == SEND:
            self._wait_writable()
        return False

    def _continue_armed(self, route: FastRoute, head: bytes, n: int, sent: int) -> None:
        """The inline send of an armed route stopped short: `n` head bytes and `sent` body
        bytes went out (-1: that call failed or never ran). Carry on as `_begin` would."""
        file = route.file
        assert file is not None
        file.refs += 1
        self.server.idle.pop(self, None)
        self.phase = SEND
        self.close_after = False
        self.file = file
        self.file_fd = file.fd
        self.status = route.status
        self.title = route.title
        self.pieces = (head, route.span)
        if n < len(head):
            self.piece, self.piece_off = 0, max(n, 0)
            self.sent = max(n, 0) - len(head)
        else:
            self.piece, self.piece_off = 1, max(sent, 0)
            self.sent = max(sent, 0)
        if n >= 0 and (n < len(head) or sent > 0):
            self._wait_writable()  # a short write: the socket buffer is full
            return
        # A failed call or an empty sendfile: `_flush` retries from here and reports it.
        if self._flush():
            self._finish()
        elif self.phase == SEND:
            self._wait_writable()

    def _wait_writable(self) -> None:
        self.deadline = self.server.loop.time() + self.server.settings.keepalive_timeout_s
        # Writer first, then drop the reader: uvloop keeps one poll handle per fd while either
        # is registered, so this is one epoll change; the other order closes the handle and
        # makes a new one (twice the epoll_ctl calls, plus an ioctl) on every short write.
        self.server.loop.add_writer(self.fd, self._on_writable)
        self.writing = True
        self._pause_reading()

    def _send_whole(self, head: bytes, span: bytes | Span) -> bool | None:
        """Try head and span in one go: True when all went out, False when the socket is
        full (a short write), None to let `_flush` retry from where this stopped (errors,
        an empty read of a truncated file): it reports and handles them."""
        assert isinstance(span, Span)
        try:
            n = self.sock.send(head, _MSG_MORE)
        except OSError:
            return None
        if n != len(head):
            self.piece_off = n
            self.sent += n
            return False
        self.piece = 1
        self.sent = 0
        try:
            n = os.sendfile(self.fd, self.file_fd, span.start, min(span.length, CHECK_MAX))
        except OSError:
            return None
        self.sent = n
        if n == span.length:
            return True
        if n == 0:
            return None
        self.piece_off = n
        return False

    def _on_writable(self) -> None:
        if self._flush():
            server = self.server
            self._finish()
            # Reader back before the writer goes (see _wait_writable); a linger resumed it
            # already, a close removed both.
            if self.phase == IDLE or self.phase == HEAD:
                self._resume_reading()
            if self.writing:
                server.loop.remove_writer(self.fd)
                self.writing = False
            if self.phase == HEAD:
                self._process()

    def _flush(self) -> bool:
        """Send what the socket takes; True when every piece is out, False if it would block."""
        pieces = self.pieces
        sock = self.sock
        last = len(pieces) - 1
        while self.piece <= last:
            piece = pieces[self.piece]
            off = self.piece_off
            try:
                if isinstance(piece, bytes):
                    # MSG_MORE lets the kernel pack the head with the first body bytes.
                    flags = _MSG_MORE if self.piece < last else 0
                    n = sock.send(piece if not off else memoryview(piece)[off:], flags)
                    done = off + n >= len(piece)
                else:
                    file = self.file
                    if self.just_read:
                        self.just_read = False
                    elif file is not None and not file.cached(
                        piece.start + off, piece.length - off, self.server.epoch
                    ):
                        self._read_ahead(piece.start + off, piece.length - off)
                        return False
                    n = self._send_span(piece, off)
                    if n == 0:
                        event(log, "file.truncated", logging.WARNING, title=self.title)
                        self._abort(local=True)
                        return False
                    done = off + n >= piece.length
            except (BlockingIOError, InterruptedError):
                self.deadline = self.server.loop.time() + self.server.settings.keepalive_timeout_s
                return False
            except OSError as exc:
                if exc.errno not in _PEER_GONE:
                    event(log, "send.failed", logging.WARNING, error=exc.strerror)
                if exc.errno == errno.EIO and self.file is not None:
                    # The disk failed under the file: stop reusing its fd (and the route armed
                    # on it), so the next request opens it afresh and gets an error status
                    # instead of a head and a cut connection.
                    self.server.files.discard(self.file)
                    file = self.file
                    self.server.stats.disk_fault(file.dev, file.ino, False, True, file.path)
                # A file piece failing other than on the socket is our failure, not the client's.
                self._abort(local=not isinstance(piece, bytes) and exc.errno not in _PEER_GONE)
                return False
            self.sent += n
            if done:
                self.piece += 1
                self.piece_off = 0
            else:
                self.piece_off = off + n
                if self.sendfile or isinstance(piece, bytes):
                    # A short write to a non-blocking socket means its buffer is full: wait
                    # for writable rather than spend a syscall on the EAGAIN.
                    self.deadline = (
                        self.server.loop.time() + self.server.settings.keepalive_timeout_s
                    )
                    return False
        return True

    def _send_span(self, span: Span, off: int) -> int:
        # At most what was checked to be cached (residency.CHECK_MAX) per call.
        remaining = min(span.length - off, CHECK_MAX)
        if self.sendfile:
            try:
                return os.sendfile(self.fd, self.file_fd, span.start + off, remaining)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EPIPE, errno.ECONNRESET):
                    raise
                self.server.stats.sendfile_errors += 1
                if exc.errno not in _SENDFILE_UNSUPPORTED:
                    raise
                event(log, "sendfile.unsupported", logging.WARNING, error=exc.strerror)
                self.sendfile = False
        # Fallback: copy through user space in bounded chunks (never a whole body in memory).
        data = os.pread(self.file_fd, min(remaining, FALLBACK_CHUNK), span.start + off)
        if not data:
            return 0
        return self.sock.send(data)

    def _read_ahead(self, start: int, length: int) -> None:
        """Have a reader thread bring bytes [start, start + length) of the response's file
        into the page cache (up to CHECK_MAX); the response resumes in `_read_done`."""
        server = self.server
        file = self.file
        assert file is not None
        job = server.disk_reader.submit(file.dev, file.fd, start, length, self._read_done)
        if job is None:
            self._disk_failed(None)  # as many read-ins wait on that disk as are allowed
            return
        file.refs += 1  # its fd stays open until the read-in reports or is cancelled
        self.read_in, self.read_job = file, job
        self.phase = DISK
        if self.writing:
            server.loop.remove_writer(self.fd)
            self.writing = False
        self._pause_reading()
        server.idle.pop(self, None)
        self.deadline = server.loop.time() + server.settings.disk_timeout_s

    def _read_done(self, error: OSError | None, seconds: float) -> None:
        server = self.server
        file = self.read_in
        assert file is not None
        self.read_in = self.read_job = None
        slow = seconds >= SLOW_READ_S
        if slow:
            event(log, "disk.slow_read", logging.WARNING, path=file.path, seconds=round(seconds, 1))
        if error is not None:
            event(log, "disk.read_failed", logging.WARNING, path=file.path, error=error.strerror)
            server.files.discard(file)  # opened afresh next time, to an error status
        if slow or error is not None:
            server.stats.disk_fault(file.dev, file.ino, slow, error is not None, file.path)
        server.files.release(file)
        if self.phase != DISK:
            return  # closed, or answered, while it read (client gone, disk_timeout_s)
        if error is not None:
            self._disk_failed(error)
            return
        self.phase = SEND
        self.just_read = True
        self._wait_writable()  # resumes in _on_writable as after a full socket buffer

    def _disk_failed(self, error: OSError | None) -> None:
        """The bytes the response needs could not be read in (`error`), or not in time or not
        now (None). Before its head went out, the client gets 500 or 503 (a player's cue to
        move to its next URL); after, the response can only be cut."""
        if self.piece or self.piece_off:
            self._abort(local=True)
            return
        self._release_file()
        status = 500 if error is not None else 503
        reason = "reading the file failed" if error is not None else "the disk is busy"
        self.phase = SEND
        self._begin(self.server.prepare_error(HttpError(status, reason, close=True)), False)

    def _finish(self) -> None:
        sent = self.sent
        self.server.stats.record(self.status, self.title, sent if sent > 0 else 0)
        if self.file is not None:
            self.server.files.release(self.file)
            self.file = None
            self.file_fd = -1
        self.pieces = ()
        if self.close_after:
            self._linger()
            return
        server = self.server
        if self.buf:  # the next pipelined request has begun: its header deadline runs
            self.phase = HEAD
            self.deadline = server.loop.time() + server.settings.header_timeout_s
        else:
            self.phase = IDLE
            self.deadline = server.loop.time() + server.settings.keepalive_timeout_s
            server.idle[self] = None

    def _release_file(self) -> None:
        if self.file is not None:
            self.server.files.release(self.file)
            self.file = None
            self.file_fd = -1

    # -- ending ----------------------------------------------------------------------------

    def _linger(self) -> None:
        """Half-close, then drain until EOF (or LINGER_S): unread input would turn our
        close into a reset that can destroy the answer before the client reads it."""
        self.phase = LINGER
        self.buf.clear()
        self.deadline = self.server.loop.time() + LINGER_S
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self._resume_reading()

    def expire(self) -> None:
        """The phase deadline passed: a slow or silent client, a finished linger, or a
        read-in that the disk has not answered in disk_timeout_s."""
        if self.phase == DISK:
            self._cancel_read_in()
            self._disk_failed(None)
            return
        if self.phase == HEAD or (self.phase == IDLE and self.status == 0):
            # Never finished a request head in time (a fresh connection counts too).
            self.server.stats.header_timeouts += 1
        self.close()

    def drain(self) -> None:
        """Server stopping: close now if idle, else after the response in flight."""
        if self.phase in (IDLE, LINGER) and not self.buf:
            self.close()
        else:
            self.close_after = True

    def _abort(self, local: bool = False) -> None:
        """Close mid-response. `local`: cut by a failure on our side (disk, truncated file),
        counted apart from the status its head announced; a client that left is not."""
        if self.status:
            stats = self.server.stats
            if local:
                stats.aborted[self.title] = stats.aborted.get(self.title, 0) + 1
            else:
                stats.record(self.status, self.title, max(self.sent, 0))
            self.status = 0
        self.close()

    def close(self) -> None:
        if self.phase == CLOSED:
            return
        self.phase = CLOSED
        loop = self.server.loop
        if self.reading:
            loop.remove_reader(self.fd)
        if self.writing:
            loop.remove_writer(self.fd)
        self.reading = self.writing = False
        self._cancel_read_in()
        self._release_file()
        self.sock.close()
        self.server.forget(self)

    def _cancel_read_in(self) -> None:
        """Nobody waits for the read-in any more: one not started yet is dropped (its reader
        thread freed for those still waiting on that disk), and its file let go."""
        job, file = self.read_job, self.read_in
        if job is not None and file is not None and self.server.disk_reader.cancel(job):
            self.read_in = self.read_job = None
            self.server.files.release(file)

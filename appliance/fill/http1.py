"""The fill client's HTTP/1.1 core, with no networking (h11-style): render a GET, parse a
response head strictly, decide how its body is framed, decode chunked bodies, read a
Content-Range. Pure; transport.py owns the sockets and feeds bytes in.

Strict on purpose: the fill only talks to our own origin and appliances, so anything odd
(bare LF, obs-fold, conflicting lengths, unknown transfer codings) is a protocol error and
the downloader retries or moves to the next source instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

MAX_HEAD = 64 * 1024  # bytes of status line + fields, like common servers' limits
MAX_FIELDS = 100
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions, or one trailer field
# A chunked body's framing (size lines, extensions, CRLFs, trailers) may not outgrow its data
# by more than this: a source padding each byte with kilobytes of chunk extensions or an
# endless trailer section would otherwise keep a stream busy without moving the file on.
MAX_CHUNK_OVERHEAD = 2 * MAX_HEAD

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3}) ([\t\x20-\x7e\x80-\xff]*)")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
# The same, for all of a head's field lines at once (a value's own spaces and tabs are in
# its character class, so the lines are the same language as _FIELD's).
_NAME = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_FIELD_LINES = re.compile(rb"(?:" + _NAME + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_FIELD_PAIR = re.compile(rb"(" + _NAME + rb"):([^\r\n]*)\r\n")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]{1,18}")  # < 2**63: no absurd lengths
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18}|\*)")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(;[\t\x20-\x7e\x80-\xff]*)?")


class ProtocolError(Exception):
    """The peer sent something that is not the HTTP/1.1 we accept."""


@dataclass(frozen=True)
class ResponseHead:
    version: int  # 10 or 11
    status: int
    reason: str
    fields: tuple[tuple[str, str], ...]  # (lower-case name, value), in order
    size: int  # bytes of the head including the blank line

    def get(self, name: str) -> str | None:
        """The single value of `name` (values of a repeated field joined with ", ")."""
        values = self.get_all(name)
        return ", ".join(values) if values else None

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.fields if k == name]


class Framing(Enum):
    NONE = "none"  # no body (1xx, 204, 304, or a HEAD response)
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # until the connection closes: we refuse to read such bodies


@dataclass(frozen=True)
class BodyFraming:
    kind: Framing
    length: int = 0  # for LENGTH


def render_get(host: str, target: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A GET request head. `host` is the Host field value, `target` the origin-form path."""
    if not target.startswith("/") or any(c in target for c in " \r\n\0"):
        raise ValueError(f"bad request target {target!r}")
    fields = [("Host", host), ("User-Agent", "edgeflix-fill"), ("Accept-Encoding", "identity")]
    fields += headers
    for name, value in fields:
        if not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"bad request field {name!r}: {value!r}")
    lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def head_end(buf: bytes | bytearray) -> int:
    """Length of the head (through CRLF CRLF) at the start of `buf`, 0 if it is not all here
    yet; ProtocolError once the head is longer than MAX_HEAD without ending."""
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end >= 0:
        return end + 4
    if len(buf) >= MAX_HEAD + 4:
        raise ProtocolError(f"response head longer than {MAX_HEAD} bytes")
    return 0


def parse_head(raw: bytes | bytearray) -> ResponseHead:
    """Parse one complete head (as delimited by head_end) into a ResponseHead."""
    if not raw.endswith(b"\r\n\r\n"):
        raise ProtocolError("response head does not end with an empty line")
    data = bytes(raw)
    eol = data.find(b"\r\n")
    status = _STATUS_LINE.fullmatch(data, 0, eol)
    block = data[eol + 2 : -2]  # the field lines, each with its CRLF
    # Every head the fill reads goes through here (one per file): a well-formed one is
    # checked by one match over all its lines; anything else goes line by line below,
    # which says what is wrong.
    if status is not None and _FIELD_LINES.fullmatch(block):
        pairs = _FIELD_PAIR.findall(block)
        if len(pairs) <= MAX_FIELDS:
            return ResponseHead(
                version=10 + int(status[1]),
                status=int(status[2]),
                reason=status[3].decode("latin-1"),
                fields=tuple(
                    (name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1"))
                    for name, value in pairs
                ),
                size=len(raw),
            )
    return _parse_head_by_line(data)


def _parse_head_by_line(raw: bytes) -> ResponseHead:
    lines = raw[:-4].split(b"\r\n")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    if len(lines) - 1 > MAX_FIELDS:
        raise ProtocolError(f"more than {MAX_FIELDS} header fields")
    fields = []
    for line in lines[1:]:
        if b"\n" in line or b"\r" in line:
            raise ProtocolError("bare CR or LF in the response head")
        match = _FIELD.fullmatch(line)
        if match is None:
            # Includes obs-fold (a line starting with white space), which RFC 9112 lets
            # clients reject, and a space before the colon.
            raise ProtocolError(f"bad header field {line[:80]!r}")
        fields.append((match[1].decode("ascii").lower(), match[2].decode("latin-1")))
    return ResponseHead(
        version=10 + int(status[1]),
        status=int(status[2]),
        reason=status[3].decode("latin-1"),
        fields=tuple(fields),
        size=len(raw),
    )


def body_framing(head: ResponseHead, *, head_request: bool = False) -> BodyFraming:
    """How the body of `head` ends (RFC 9112 section 6.3), strictly."""
    if head_request or head.status < 200 or head.status in (204, 304):
        return BodyFraming(Framing.NONE)
    codings = [c.strip().lower() for v in head.get_all("transfer-encoding") for c in v.split(",")]
    lengths = {v.strip() for value in head.get_all("content-length") for v in value.split(",")}
    if codings:
        if lengths:
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        if codings != ["chunked"]:
            raise ProtocolError(f"unsupported Transfer-Encoding {', '.join(codings)!r}")
        return BodyFraming(Framing.CHUNKED)
    if not lengths:
        return BodyFraming(Framing.CLOSE)
    if len(lengths) != 1:
        raise ProtocolError("conflicting Content-Length values")
    (length,) = lengths
    if not _DIGITS.fullmatch(length):
        raise ProtocolError(f"bad Content-Length {length[:40]!r}")
    return BodyFraming(Framing.LENGTH, int(length))


def keep_alive(head: ResponseHead) -> bool:
    """Whether the connection may carry another request after this response's body."""
    tokens = {t.strip().lower() for v in head.get_all("connection") for t in v.split(",")}
    if head.version == 10:
        return "keep-alive" in tokens
    return "close" not in tokens


@dataclass(frozen=True)
class ContentRange:
    first: int
    last: int  # inclusive
    complete: int | None  # None for "*"


def parse_content_range(value: str | None) -> ContentRange | None:
    """`bytes first-last/complete`; None when absent, malformed or inconsistent."""
    if value is None:
        return None
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None
    first, last = int(match[1]), int(match[2])
    complete = None if match[3] == "*" else int(match[3])
    if last < first or (complete is not None and last >= complete):
        return None
    return ContentRange(first, last, complete)


class _Chunk(Enum):
    SIZE = "size"
    DATA = "data"
    DATA_END = "data_end"  # the CRLF after a chunk's data
    TRAILER = "trailer"
    DONE = "done"


@dataclass
class ChunkedDecoder:
    """Turns the bytes of a chunked body into its data; trailers are read and dropped.

    `feed(data)` returns (body pieces, bytes of `data` used); bytes after the last chunk's
    trailer section belong to the next response and are left unused. Bad framing after
    some data in the same `feed` is raised by the next call (and `check`): the data before
    it is returned first, as it would have been had it come in an earlier recv.

    Bounded like a head: the trailer section to MAX_HEAD bytes and MAX_FIELDS lines, and all
    the framing to MAX_CHUNK_OVERHEAD bytes more than the data (1-byte chunks each with a
    4 KB extension are a source stalling us, not a body)."""

    state: _Chunk = _Chunk.SIZE
    remaining: int = 0
    data_bytes: int = 0  # body bytes decoded so far
    framing_bytes: int = 0  # every other byte used: size lines, CRLFs, trailers
    trailer_bytes: int = 0
    trailer_lines: int = 0
    error: ProtocolError | None = None  # the framing went bad: raised by every later call
    _line: bytearray = field(default_factory=bytearray)

    @property
    def done(self) -> bool:
        return self.state is _Chunk.DONE

    def check(self) -> None:
        """Raise the framing error found after the data last returned, if any."""
        if self.error is not None:
            raise self.error

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[list[memoryview], int]:
        self.check()
        out: list[memoryview] = []
        try:
            pos = self._feed(memoryview(data), out)
        except ProtocolError as exc:
            self.error = exc  # the body is broken: every later call says so
            if not out:
                raise
            return out, len(data)
        return out, pos

    def _feed(self, view: memoryview, out: list[memoryview]) -> int:
        pos = 0
        while pos < len(view) and self.state is not _Chunk.DONE:
            if self.state is _Chunk.DATA:
                take = min(self.remaining, len(view) - pos)
                out.append(view[pos : pos + take])
                pos += take
                self.remaining -= take
                self.data_bytes += take
                if self.remaining == 0:
                    self.state = _Chunk.DATA_END
                continue
            start = pos
            line, pos = self._take_line(view, pos)
            self._count_framing(pos - start)
            if line is not None:
                self._on_line(line)
        return pos

    def _count_framing(self, used: int) -> None:
        self.framing_bytes += used
        if self.framing_bytes > self.data_bytes + MAX_CHUNK_OVERHEAD:
            raise ProtocolError(
                f"chunked framing of {self.framing_bytes} bytes for {self.data_bytes} bytes of data"
            )
        if self.state is _Chunk.TRAILER:
            self.trailer_bytes += used
            if self.trailer_bytes > MAX_HEAD:
                raise ProtocolError(f"chunked trailer section longer than {MAX_HEAD} bytes")

    def _take_line(self, view: memoryview, pos: int) -> tuple[bytes | None, int]:
        end = bytes(view[pos : pos + MAX_CHUNK_LINE + 2]).find(b"\n")
        if end < 0:
            self._line += view[pos:]
            if len(self._line) > MAX_CHUNK_LINE + 2:
                raise ProtocolError("chunk line too long")
            return None, len(view)
        self._line += view[pos : pos + end + 1]
        line = bytes(self._line)
        self._line.clear()
        if len(line) > MAX_CHUNK_LINE + 2 or not line.endswith(b"\r\n"):
            raise ProtocolError("chunk line not ended by CRLF, or too long")
        return line[:-2], pos + end + 1

    def _on_line(self, line: bytes) -> None:
        if self.state is _Chunk.DATA_END:
            if line:
                raise ProtocolError("chunk data longer than its size")
            self.state = _Chunk.SIZE
        elif self.state is _Chunk.SIZE:
            match = _CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise ProtocolError(f"bad chunk size line {line[:40]!r}")
            self.remaining = int(match[1], 16)
            self.state = _Chunk.DATA if self.remaining else _Chunk.TRAILER
        elif self.state is _Chunk.TRAILER:
            if not line:
                self.state = _Chunk.DONE
                return
            self.trailer_lines += 1
            if self.trailer_lines > MAX_FIELDS:
                raise ProtocolError(f"more than {MAX_FIELDS} trailer fields")
            if _FIELD.fullmatch(line) is None:
                raise ProtocolError(f"bad trailer field {line[:40]!r}")

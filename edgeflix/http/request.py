"""Request heads: bytes in, a frozen `RequestHead` out, or an `HttpError` naming the status.

Strict by design (RFC 9112): CRLF line ends, no obs-fold, no space before a colon, one valid
Host, no request bodies, no ambiguous framing. Callers feed a buffer and an offset, so pipelined
requests parse one by one; a partial head no more bytes could mend is refused at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from edgeflix.http.errors import BadRequest, HeadersTooLarge, HttpError

ALLOWED_METHODS = ("GET", "HEAD", "OPTIONS")
ALLOW_HEADER = ", ".join(ALLOWED_METHODS)
MAX_HEADER_COUNT = 100
MAX_TARGET_BYTES = 8192

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: visible ASCII, obs-text, SP and HTAB; any other control byte is an attack.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# The request-target may only hold visible ASCII (RFC 3986 characters and a few tolerated ones).
_BAD_TARGET = re.compile(r"[^\x21-\x7e]|#")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
# The common well-formed request line in one match; anything else takes the checks below,
# which name the exact error.
_PLAIN_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x22\x24-\x7e]+) HTTP/1\.(\d)")
# Empty lines before a request line, skipped in one C-level match (a Python loop per CRLF made
# a stream of them cost quadratic time while the buffer grew).
_BLANK_LINES = re.compile(rb"(?:\r\n)*")
# What an unfinished head can never go on to become a request: a control byte, a bare LF or a
# CR not before LF (and a first byte that cannot start a method). Checked while waiting for the
# rest, so a TLS ClientHello or an LF-only client is answered at once, not at the header timeout.
_NEVER_IN_HEAD = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|(?<!\r)\n|\r(?=[^\n])")
# A head starts with a method, or with the CR of an empty line whose LF is still on its way.
_HEAD_START = frozenset(
    b"\r!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# uri-host [ ":" port ] (RFC 9112 §3.2, RFC 3986): IP-literal (with zone ids and IPvFuture) or
# reg-name, which covers IPv4.
_HOST = re.compile(
    r"(?:\[[0-9A-Za-z\-._~!$&'()*+,;=%:]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?"
)


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str  # as sent (origin-form after stripping any absolute-form authority)
    path: str  # the target without its query, still percent-encoded
    query: str
    minor: int  # HTTP/1.<minor>
    headers: Mapping[str, str]  # lower-case names; repeated fields joined with ", "
    keep_alive: bool

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def parse_head(
    buf: bytes | bytearray, start: int, max_bytes: int
) -> tuple[RequestHead, int] | None:
    """Parse one request head at `buf[start:]`: (head, offset after it), or None if incomplete.

    Raises HeadersTooLarge (431) once the head outgrows `max_bytes`, BadRequest (400) on
    malformed input, HttpError 405/505/413 for what is well-formed but not served.
    """
    # RFC 9112 §2.2: ignore empty lines before a request line (some clients add CRLF), but
    # count them against the head's limit: they are bytes a client makes us buffer.
    if buf.startswith(b"\r\n", start):
        first = start
        match = _BLANK_LINES.match(buf, start)
        assert match is not None  # the pattern matches the empty string
        start = match.end()
        if start - first > max_bytes:
            raise BadRequest("too many empty lines before a request")
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buf) - start > max_bytes:
            raise _too_large(buf, start, max_bytes)
        _check_unfinished(buf, start)
        return None
    if end + 4 - start > max_bytes:
        raise _too_large(buf, start, max_bytes)
    text = buf[start:end].decode("latin-1")
    lines = text.split("\r\n")
    plain = _PLAIN_LINE.fullmatch(lines[0])
    if plain is not None and len(plain[2]) <= MAX_TARGET_BYTES:
        method, target, minor = plain[1], plain[2], int(plain[3])
    else:
        method, target, minor = _request_line(lines[0])
    try:
        return _finish(method, target, minor, _fields(lines[1:])), end + 4
    except HttpError as exc:
        exc.head = method == "HEAD"
        raise


def _too_large(buf: bytes | bytearray, start: int, max_bytes: int) -> HttpError:
    """414 when the request line alone does not fit (nginx's choice too), else 431."""
    line_end = buf.find(b"\r\n", start, start + max_bytes + 2)
    if line_end < 0 or line_end - start > MAX_TARGET_BYTES:
        return HttpError(414, "request line too long", close=True)
    return HeadersTooLarge()


def _check_unfinished(buf: bytes | bytearray, start: int) -> None:
    """Refuse a partial head at once when no more bytes could make it a request."""
    if (start < len(buf) and buf[start] not in _HEAD_START) or _NEVER_IN_HEAD.search(buf, start):
        raise BadRequest("not an HTTP/1 request")
    line_end = buf.find(b"\r\n", start)
    if line_end >= 0:
        _request_line(buf[start:line_end].decode("latin-1"))


def _request_line(line: str) -> tuple[str, str, int]:
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest("malformed method")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise BadRequest("malformed HTTP version")
    if match.group(1) != "1":
        raise HttpError(505, f"HTTP version {version} not supported", close=True)
    if len(target) > MAX_TARGET_BYTES:
        raise HttpError(414, "request target too long", close=True)
    if _BAD_TARGET.search(target):
        raise BadRequest("request target holds forbidden characters")
    return method, target, int(match.group(2))


def _fields(lines: list[str]) -> dict[str, str]:
    if len(lines) > MAX_HEADER_COUNT:
        raise HeadersTooLarge(f"more than {MAX_HEADER_COUNT} header fields")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            # Also catches obs-fold (a leading space) and whitespace before the colon.
            raise BadRequest("malformed header field")
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            raise BadRequest("control character in a header field")
        key = name.lower()
        if key in headers:
            if key in ("host", "content-length", "transfer-encoding"):
                raise BadRequest(f"repeated {name} header")
            headers[key] = headers[key] + ", " + value
        else:
            headers[key] = value
    return headers


def _finish(method: str, target: str, minor: int, headers: dict[str, str]) -> RequestHead:
    host = headers.get("host")
    if host is None:
        if minor >= 1:
            raise BadRequest("HTTP/1.1 request without Host")
    elif not _HOST.fullmatch(host):
        raise BadRequest("malformed Host")  # RFC 9112 §3.2: a MUST
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or not length.isascii()):
        raise BadRequest("malformed Content-Length")
    coding = headers.get("transfer-encoding")
    if coding is not None and (
        length is not None  # RFC 9112 §6.3: both framings at once is how requests are smuggled
        or minor == 0  # §6.1: HTTP/1.0 has no transfer codings; the framing is faulty
        or coding.rpartition(",")[2].strip(" \t").lower() != "chunked"  # §6.3: length unknown
    ):
        raise BadRequest("request framing is ambiguous (Transfer-Encoding)")
    # Any digit but 0 means a body; never int() it (a 5000-digit value raises ValueError).
    has_body = coding is not None or (length is not None and length.strip("0") != "")
    if method not in ALLOWED_METHODS:
        # A body we will not read would be parsed as the next request: close after answering.
        raise HttpError(405, f"method {method} not allowed", close=has_body)
    if has_body:
        raise HttpError(413, "request bodies are not accepted", close=True)
    target = _origin_form(method, target)
    path, _, query = target.partition("?")
    conn = headers.get("connection")
    if conn is None:
        keep_alive = minor >= 1
    else:
        # Connection is a list of tokens (RFC 9110 §7.6.1): `close` anywhere wins.
        options = [o.strip(" \t").lower() for o in conn.split(",")]
        keep_alive = "close" not in options and (minor >= 1 or "keep-alive" in options)
    return RequestHead(method, target, path, query, minor, headers, keep_alive)


def _origin_form(method: str, target: str) -> str:
    if target.startswith("/"):
        return target
    if target == "*" and method == "OPTIONS":
        return target
    lower = target[:8].lower()
    for scheme in ("http://", "https://"):
        if lower.startswith(scheme):
            # Absolute-form (RFC 9112 §3.2.2): servers must accept it; the authority, which
            # ends at the first '/', '?' or '#' (RFC 3986 §3.2), is ignored but not empty
            # (RFC 9110 §4.2.1).
            rest = target[len(scheme) :]
            end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
            if end == 0:
                raise BadRequest("absolute-form request target without a host")
            path = rest[end:]
            return path if path.startswith("/") else "/" + path
    raise BadRequest("request target is not a path")

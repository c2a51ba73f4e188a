"""Request heads: bytes in, a frozen `RequestHead` out, or an `HttpError` naming the status.

Strict by design (RFC 9112): CRLF line ends, no obs-fold, no space before a colon, one Host, no
request bodies. Callers feed a buffer and an offset, so pipelined requests parse one by one.
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
    # RFC 9112 §2.2: ignore empty lines before a request line (some clients add CRLF).
    while buf.startswith(b"\r\n", start):
        start += 2
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buf) - start > max_bytes:
            raise HeadersTooLarge()
        return None
    if end + 4 - start > max_bytes:
        raise HeadersTooLarge()
    text = buf[start:end].decode("latin-1")
    lines = text.split("\r\n")
    plain = _PLAIN_LINE.fullmatch(lines[0])
    if plain is not None and len(plain[2]) <= MAX_TARGET_BYTES:
        method, target, minor = plain[1], plain[2], int(plain[3])
    else:
        method, target, minor = _request_line(lines[0])
    headers = _fields(lines[1:])
    return _finish(method, target, minor, headers), end + 4


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
    if minor >= 1 and "host" not in headers:
        raise BadRequest("HTTP/1.1 request without Host")
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or not length.isascii()):
        raise BadRequest("malformed Content-Length")
    has_body = "transfer-encoding" in headers or (length is not None and int(length) != 0)
    if method not in ALLOWED_METHODS:
        # A body we will not read would be parsed as the next request: close after answering.
        raise HttpError(405, f"method {method} not allowed", close=has_body)
    if has_body:
        raise HttpError(413, "request bodies are not accepted", close=True)
    target = _origin_form(method, target)
    path, _, query = target.partition("?")
    conn = headers.get("connection", "").lower()
    keep_alive = "keep-alive" in conn if minor == 0 else "close" not in conn
    return RequestHead(method, target, path, query, minor, headers, keep_alive)


def _origin_form(method: str, target: str) -> str:
    if target.startswith("/"):
        return target
    if target == "*" and method == "OPTIONS":
        return target
    lower = target[:8].lower()
    for scheme in ("http://", "https://"):
        if lower.startswith(scheme):
            # Absolute-form (RFC 9112 §3.2.2): servers must accept it; the authority is ignored.
            slash = target.find("/", len(scheme))
            return target[slash:] if slash >= 0 else "/"
    raise BadRequest("request target is not a path")

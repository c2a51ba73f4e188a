"""`plan_response(file, request) -> ResponsePlan`: every decision about answering for a file.

Status, headers and the body as literal bytes and file spans, in order; the server shell only
sends a plan (head with writev/send, spans with sendfile). Generated replies (errors, OPTIONS,
JSON listings) are plans too, so one renderer serialises every response.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

from edgeflix.http.conditional import Precondition, evaluate, range_allowed
from edgeflix.http.content import cache_control, content_type, etag_for, http_date
from edgeflix.http.ranges import Span, Unsatisfiable, parse_range
from edgeflix.http.request import ALLOW_HEADER, RequestHead

Headers = tuple[tuple[str, str], ...]
CORS: Headers = (
    ("Access-Control-Allow-Origin", "*"),
    (
        "Access-Control-Expose-Headers",
        "Content-Length, Content-Range, ETag, Accept-Ranges, Last-Modified",
    ),
)


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What planning needs to know of a file: from fstat after open, never from a stale index."""

    size: int
    mtime_ns: int
    rel_path: str  # path inside the title: picks content type and cache policy


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    status: int
    headers: Headers  # without Date/Connection/Server, which the shell adds per connection
    body: tuple[bytes | Span, ...]  # empty for HEAD and body-less statuses
    content_length: int  # of the body as GET would send it
    # The title a generated answer is about, for the counters (a 404 for a known title's file
    # on a disk out of service); None for one that reached no title.
    title: str | None = None

    @property
    def body_length(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.length for p in self.body)


def plan_response(
    meta: FileMeta, request: RequestHead, boundary: str, now_s: float | None = None
) -> ResponsePlan:
    """The full answer for a found file; `boundary` (random, injected) separates multipart parts,
    `now_s` (the server's clock, injected) dates conditionals."""
    etag = etag_for(meta.size, meta.mtime_ns)
    modified_s = meta.mtime_ns // 1_000_000_000
    validators: Headers = (
        ("ETag", etag),
        ("Last-Modified", http_date(modified_s)),
        ("Cache-Control", cache_control(meta.rel_path)),
    )
    headers = request.headers
    outcome = evaluate(request.method, headers, etag, modified_s, now_s)
    if outcome is Precondition.NOT_MODIFIED:
        return ResponsePlan(304, validators + CORS, (), 0)
    if outcome is Precondition.FAILED:
        return ResponsePlan(412, (("Content-Length", "0"), *CORS), (), 0)
    ctype = content_type(meta.rel_path)
    common = (("Accept-Ranges", "bytes"), *validators, *CORS)
    spans: tuple[Span, ...] | Unsatisfiable | None = None
    value = headers.get("range")
    if (
        value is not None
        and request.method == "GET"
        and range_allowed(headers, etag, modified_s, now_s)
    ):
        spans = parse_range(value, meta.size)
    if isinstance(spans, Unsatisfiable):
        extra = (("Content-Range", f"bytes */{meta.size}"), ("Content-Length", "0"))
        return ResponsePlan(416, extra + common, (), 0)
    if spans is None:
        whole = (Span(0, meta.size),) if meta.size else ()
        return _with_body(200, ctype, meta.size, common, whole, request)
    if len(spans) == 1:
        span = spans[0]
        ranged = (("Content-Range", f"bytes {span.start}-{span.end}/{meta.size}"), *common)
        return _with_body(206, ctype, span.length, ranged, spans, request)
    parts = _multipart(spans, ctype, meta.size, boundary)
    length = sum(len(p) if isinstance(p, bytes) else p.length for p in parts)
    mtype = f"multipart/byteranges; boundary={boundary}"
    return _with_body(206, mtype, length, common, parts, request)


def _with_body(
    status: int,
    ctype: str,
    length: int,
    headers: Headers,
    body: tuple[bytes | Span, ...],
    request: RequestHead,
) -> ResponsePlan:
    full = (("Content-Type", ctype), ("Content-Length", str(length)), *headers)
    return ResponsePlan(status, full, () if request.method == "HEAD" else body, length)


def _multipart(
    spans: Iterable[Span], ctype: str, size: int, boundary: str
) -> tuple[bytes | Span, ...]:
    parts: list[bytes | Span] = []
    for span in spans:
        head = (
            f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\n"
            f"Content-Range: bytes {span.start}-{span.end}/{size}\r\n\r\n"
        )
        parts += [head.encode("ascii"), span]
    parts.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return tuple(parts)


def plan_simple(
    status: int,
    body: bytes = b"",
    ctype: str = "text/plain; charset=utf-8",
    headers: Headers = (),
    *,
    head_only: bool = False,
) -> ResponsePlan:
    """A generated reply (errors, listings); errors carry a one-line text body."""
    if not body and status >= 400:
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
    full = (("Content-Type", ctype), ("Content-Length", str(len(body))), *headers, *CORS)
    return ResponsePlan(status, full, () if head_only else (body,), len(body))


def plan_error(
    status: int, request: RequestHead | None = None, *, head_only: bool = False
) -> ResponsePlan:
    extra: Headers = (("Allow", ALLOW_HEADER),) if status == 405 else ()
    head_only = head_only or bool(request and request.method == "HEAD")
    return plan_simple(status, headers=extra, head_only=head_only)


def plan_options(request: RequestHead) -> ResponsePlan:
    """OPTIONS: a CORS preflight gets its grants; a plain OPTIONS learns what we allow."""
    # No Content-Length: RFC 9110 §8.6 forbids it on a 204 (which never has content).
    headers: list[tuple[str, str]] = [("Allow", ALLOW_HEADER)]
    if "access-control-request-method" in request.headers:
        headers += [
            ("Access-Control-Allow-Methods", ALLOW_HEADER),
            ("Access-Control-Max-Age", "86400"),
        ]
        asked = request.headers.get("access-control-request-headers")
        if asked:
            # No credentials are ever involved, so echoing the asked headers grants nothing.
            headers.append(("Access-Control-Allow-Headers", asked))
    return ResponsePlan(204, (*headers, *CORS), (), 0)


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def render_head(status: int, headers: Headers) -> bytes:
    """Status line and fields, without the blank line: the shell appends Date/Connection."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    return "".join(lines).encode("latin-1")

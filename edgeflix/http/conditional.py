"""Conditional requests in the order RFC 9110 §13.2.2 fixes, as one pure decision.

If-Match / If-Unmodified-Since → 412; If-None-Match / If-Modified-Since → 304 (GET/HEAD);
If-Range decides whether a Range is honoured at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum

from edgeflix.http.content import parse_http_date

_ETAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')
_EMPTY_ELEMENTS = re.compile(r"(?:\s*,)+")


class Precondition(Enum):
    PROCEED = 200
    NOT_MODIFIED = 304
    FAILED = 412


def _tags(value: str) -> list[tuple[bool, str]] | None:
    """(weak, opaque-tag) pairs of an entity-tag list; None when the list is malformed."""
    tags: list[tuple[bool, str]] = []
    pos = 0
    value = value.strip()
    while pos < len(value):
        empty = _EMPTY_ELEMENTS.match(value, pos)  # RFC 9110 5.6.1: ignore empty elements
        pos = empty.end() if empty else pos
        if pos == len(value):
            break
        match = _ETAG.match(value, pos)
        if match is None:
            return None
        tags.append((match.group(1) is not None, match.group(2)))
        pos = match.end()
    return tags


def _matches(value: str, etag: str, *, strong: bool) -> bool:
    if value.strip() == "*":
        return True
    tags = _tags(value)
    if not tags:
        return False
    return any(tag == etag and not (strong and weak) for weak, tag in tags)


def evaluate(
    method: str,
    headers: Mapping[str, str],
    etag: str,
    modified_s: int,
    now_s: float | None = None,
) -> Precondition:
    """Our ETag is strong and the representation exists (we only evaluate for found files).
    `now_s`: the server's clock, against which an If-Modified-Since in the future is invalid."""
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _matches(if_match, etag, strong=True):
            return Precondition.FAILED
    else:
        since = headers.get("if-unmodified-since")
        stamp = parse_http_date(since) if since is not None else None
        if stamp is not None and modified_s > stamp:
            return Precondition.FAILED
    safe = method in ("GET", "HEAD")
    if_none = headers.get("if-none-match")
    if if_none is not None:
        if _matches(if_none, etag, strong=False):
            return Precondition.NOT_MODIFIED if safe else Precondition.FAILED
    elif safe:
        since = headers.get("if-modified-since")
        stamp = parse_http_date(since) if since is not None else None
        # A date later than our clock is invalid (RFC 2616 §14.25, Apache; nginx's default
        # matches exactly): else a client with a clock ahead would keep a playlist re-published
        # meanwhile as "not modified" until its clock's date passed.
        if stamp is not None and modified_s <= stamp and (now_s is None or stamp <= now_s):
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


def range_allowed(
    headers: Mapping[str, str], etag: str, modified_s: int, now_s: float | None = None
) -> bool:
    """If-Range (RFC 9110 §13.1.5): honour Range only if the validator still matches."""
    value = headers.get("if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        tags = _tags(value)
        # A weak tag can never satisfy If-Range: strong comparison only.
        return tags is not None and len(tags) == 1 and tags[0] == (False, etag)
    stamp = parse_http_date(value)
    # A date validates only while Last-Modified is strong (§8.8.2.2): the file last changed a
    # full second before now, so no second version can share that second. (mtime is truncated
    # to seconds, hence two.)
    strong = now_s is None or now_s >= modified_s + 2
    return stamp is not None and stamp == modified_s and strong

"""Request paths into decoded segments, refusing every spelling of traversal.

Each segment is percent-decoded exactly once and must then be a plain name: no `.`/`..`, no
empty segment, no `/`, `\\`, NUL, control character or leftover `%` (double encoding).
Nothing is ever resolved against a file system here; callers join safe segments only.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from edgeflix.http.errors import BadRequest

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\%]")
# The common case, checked over the whole path at once: nothing to decode, nothing forbidden.
_PLAIN = re.compile(r"[^\x00-\x1f\x7f\\%]*")
_DOTS = frozenset(("", ".", ".."))


def split_path(path: str) -> tuple[str, ...]:
    """`/titles/a/b.m4s` → ("titles", "a", "b.m4s"); `/` → (). Raises BadRequest (400)."""
    if not path.startswith("/"):
        raise BadRequest("path must start with '/'")
    if path == "/":
        return ()
    if _PLAIN.fullmatch(path):
        segments = tuple(path[1:].split("/"))
        if _DOTS.isdisjoint(segments):
            return segments
    if "\\" in path:
        raise BadRequest("backslash in path")
    return tuple(_segment(raw) for raw in path[1:].split("/"))


def _segment(raw: str) -> str:
    if "%" in raw:
        if _BAD_ESCAPE.search(raw):
            raise BadRequest("malformed percent-encoding in path")
        try:
            seg = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("path is not UTF-8") from None
    else:
        seg = raw
    if seg in ("", ".", ".."):
        raise BadRequest("empty, '.' or '..' path segment")
    if _FORBIDDEN.search(seg):
        raise BadRequest("forbidden character in path segment")
    return seg

"""A download's `.part` file and the If-Range validator kept beside it (`<file>.part.validator`:
the URL that answered, as redact.py shows it, and its strong ETag or Last-Modified), so a
resume asks the same server for the rest of the same version. stream.py writes both;
downloader.py discards them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from appliance.fill.http1 import ResponseHead
from appliance.fill.redact import redact
from edgeflix.http.content import parse_http_date

VALIDATOR = ".validator"  # beside `<file>.part`: where its bytes came from, for If-Range
# RFC 9110 8.8.2.2: a Last-Modified at least this long before the response's Date is strong.
_STRONG_DATE_S = 60


def part_size(path: Path) -> int:
    """Bytes in a .part file (0: none yet)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def open_part(part: Path, offset: int) -> tuple[int, bool]:
    """The .part, open for writing at `offset` (cut there), its folder made if need be;
    and whether it existed (offset 0: a new .part has no validator beside it)."""
    if offset:
        fd, existed = _create(part, 0), True
    else:
        try:
            fd, existed = _create(part, os.O_EXCL), False
        except FileExistsError:
            fd, existed = _create(part, os.O_TRUNC), True
    if offset:
        try:
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
    return fd, existed


def _create(part: Path, flag: int) -> int:
    flags = os.O_WRONLY | os.O_CREAT | flag
    try:
        return os.open(part, flags, 0o644)
    except FileNotFoundError:
        part.parent.mkdir(parents=True, exist_ok=True)
        return os.open(part, flags, 0o644)


def if_range_value(head: ResponseHead) -> str | None:
    """What to send in If-Range to resume this response's body later (RFC 9110 13.1.5): its
    strong ETag; else its Last-Modified if that is a strong validator (a minute or more
    before the response's Date); else None, and resumes go without If-Range."""
    etag = (head.get("etag") or "").strip()
    if len(etag) >= 2 and etag[0] == etag[-1] == '"':
        return etag
    modified, date = head.get("last-modified"), head.get("date")
    stamp = parse_http_date(modified) if modified else None
    sent = parse_http_date(date) if date else None
    if modified and stamp is not None and sent is not None and sent - stamp >= _STRONG_DATE_S:
        return modified.strip()
    return None


def same_version(head: ResponseHead, if_range: str | None) -> bool:
    """A 206 to a request with If-Range: False when its own validator says another version."""
    if if_range is None:
        return True
    field = "etag" if if_range.startswith('"') else "last-modified"
    value = head.get(field)
    return value is None or value.strip() == if_range


def validator_path(part: Path) -> Path:
    return part.with_name(part.name + VALIDATOR)


def discard_part(part: Path) -> None:
    """Drop partial bytes and the validator they were fetched under (the validator first:
    it never outlives its .part, fetch_once relies on that)."""
    validator_path(part).unlink(missing_ok=True)
    part.unlink(missing_ok=True)


def read_validator(part: Path) -> tuple[str, str] | None:
    """(URL that answered, redacted; If-Range value) kept for `part`; None when absent or
    unreadable (a .part from an older version, a torn write): the resume then goes without
    If-Range. A validator from before redaction (a peer's token in its URL) still matches."""
    try:
        kept = json.loads(validator_path(part).read_text(encoding="utf-8"))
        source, value = kept["source"], kept["if_range"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(source, str) and isinstance(value, str):
        return redact(source), value
    return None


def write_validator(part: Path, source: str, value: str | None) -> None:
    """Keep the validator of the bytes about to be appended to `part` (none: remove it).
    `source` is kept redacted: the file outlives the run, and a peer's token must not."""
    path = validator_path(part)
    if value is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"source": redact(source), "if_range": value}), encoding="utf-8")
    os.replace(tmp, path)

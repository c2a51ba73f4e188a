"""What a file is to HTTP: its content type, cache policy, validators (ETag, Last-Modified).

The ETag formula lives here and only here: strong, from size and mtime in nanoseconds, so a
file rewritten in place (or moved between disks with its mtime kept) keeps or changes it
exactly when its bytes could have changed.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".json": "application/json",
    ".vtt": "text/vtt",
    ".ts": "video/mp2t",
}
DEFAULT_TYPE = "application/octet-stream"

# A media file named by its content never changes under its name: the origin names every
# init and media segment `init_<tag>.mp4` / `seg_<tag>_00001.m4s`, the tag a digest of its
# rendition's bytes, so a title re-encoded and published over the old one gets new names and
# caches may keep these for ever. Any other name (a playlist, files.json, the poster, or
# segments another packager named `seg1.m4s`) can change on a re-publish: a short max-age,
# then a revalidation (ETag), which costs a 304.
IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=30"
CONTENT_TAG_LEN = 10
_TAG = f"[0-9a-f]{{{CONTENT_TAG_LEN}}}"
# A rendition's HLS playlist too (index_<tag>.m3u8): it lists that rendition's segments, so
# its bytes follow from theirs, and an old master playlist's variants stay whole after a
# re-publish (a player switching rendition mid-session gets the version it started on).
_CONTENT_NAMED = re.compile(rf"init_{_TAG}\.mp4|seg_{_TAG}_[0-9]+\.m4s|index_{_TAG}\.m3u8")
_INIT = re.compile(rf"init_({_TAG})\.mp4")


def content_tag(hex_digest: str) -> str:
    """The tag of content-named files, from a hex digest of their rendition's bytes."""
    return hex_digest[:CONTENT_TAG_LEN]


def init_name(tag: str) -> str:
    return f"init_{tag}.mp4"


def segment_name(tag: str, number: int) -> str:
    return f"seg_{tag}_{number:05d}.m4s"


def media_playlist_name(init: str) -> str:
    """A rendition's HLS playlist, named after its init segment's tag; `index.m3u8` for a
    rendition whose files are not named by content (titles packaged before)."""
    match = _INIT.fullmatch(init)
    return f"index_{match.group(1)}.m3u8" if match else "index.m3u8"


def _suffix(rel_path: str) -> str:
    name = rel_path.rpartition("/")[2]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def content_type(rel_path: str) -> str:
    return CONTENT_TYPES.get(_suffix(rel_path), DEFAULT_TYPE)


def is_content_named(rel_path: str) -> bool:
    """The file's name is its content's (never reused for other bytes)."""
    return _CONTENT_NAMED.fullmatch(rel_path.rpartition("/")[2]) is not None


def cache_control(rel_path: str) -> str:
    return IMMUTABLE if is_content_named(rel_path) else SHORT


def etag_for(size: int, mtime_ns: int) -> str:
    """The one ETag formula: strong, quoted, hex size and hex mtime in nanoseconds."""
    return f'"{size:x}-{mtime_ns:x}"'


def http_date(epoch_s: float) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`."""
    return email.utils.formatdate(epoch_s, usegmt=True)


# ANSI C's asctime() format, which RFC 9110 §5.6.7 obliges recipients to accept: it names no
# zone (it is always UTC), so email.utils returns it as a naive datetime.
_ASCTIME = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"[ \d]\d \d\d:\d\d:\d\d \d{4}"
)


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch, or None for anything that is not an HTTP date (IMF-fixdate,
    RFC 850 or asctime; other zones email.utils understands are tolerated)."""
    try:
        parsed: datetime = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        if not _ASCTIME.fullmatch(value.strip(" \t")):
            return None  # a local time of unknown zone (e.g. `-0000`): not an HTTP date
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


class DateCache:
    """The Date header, formatted once per second rather than once per response."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._value = b""

    def now(self) -> float:
        """Seconds since the epoch by the same clock (conditionals compare dates with it)."""
        return self._clock()

    def get(self) -> bytes:
        now = int(self._clock())
        if now != self._second:
            self._second = now
            self._value = http_date(now).encode("ascii")
        return self._value

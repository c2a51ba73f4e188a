"""The origin's errors: each carries one line a user can act on (the CLI prints it and exits).

`SourceError` is about the input file, `StoreError` about the store folder, `EncodeError`
about ffmpeg, `IngestCancelled` about a signal that stopped an ingest before it published.
"""

from __future__ import annotations

from edgeflix.errors import EdgeflixError


class OriginError(EdgeflixError):
    """Root of the origin's errors."""


class SourceError(OriginError):
    """The source is missing, unreadable, not a video, or has no video stream."""


class StoreError(OriginError):
    """The store is not writable, full, or already holds the title."""


class EncodeError(OriginError):
    """ffmpeg failed or produced output that does not check out."""


class IngestCancelled(OriginError):
    """A signal stopped the ingest; the temporary folder was removed, nothing was published."""

    exit_code = 130

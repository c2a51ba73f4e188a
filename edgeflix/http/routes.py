"""Routes remembered by their exact request-head bytes, for server.py and connection.py.

A player repeats the same head for every segment but the path, so a head seen before skips
parsing and routing. A route is *armed* while its answer is a plain 200 with one body span
from a cached open file: then connection.py sends it with everything at hand (fstat, head,
sendfile, counters) and no call into the server.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeflix.http.ranges import Span

if TYPE_CHECKING:
    from edgeflix.http.filecache import OpenFile
    from edgeflix.http.server import FileTarget, Prepared
    from edgeflix.http.stats import ServerStats


class FastRoute:
    """A plain GET/HEAD already routed once. Mutable on purpose: re-armed in place when its
    file is reopened, so the dict entry stays and no object is built per request."""

    __slots__ = (
        "checked",
        "counts",
        "file",
        "head",
        "keep_alive",
        "length",
        "method",
        "mtime_ns",
        "size",
        "span",
        "start",
        "status",
        "tail",
        "target",
        "title",
        "touch",
        "whole",
    )

    def __init__(self, target: FileTarget, method: str, keep_alive: bool) -> None:
        self.target = target
        self.method = method
        self.keep_alive = keep_alive
        self.file: OpenFile | None = None  # set while armed
        self.size = self.mtime_ns = self.start = self.length = self.status = 0
        self.span = Span(0, 0)
        self.head = self.tail = self.whole = b""
        self.title = target.title_id
        self.counts: list[int] = [0, 0]
        self.touch: Callable[[str], object] = _no_touch
        self.checked = -1  # the server epoch of the last `verify`

    def arm(
        self, file: OpenFile, prepared: Prepared, stats: ServerStats, touch: Callable[[str], object]
    ) -> None:
        """Remember `prepared` (the cached answer for `file` at its current size and mtime)
        when it is the armed kind; otherwise leave the route to the general path."""
        body = prepared.body
        if (
            self.method != "GET"
            or not self.keep_alive
            or prepared.status != 200
            or len(body) != 1
            or not isinstance(body[0], Span)
        ):
            self.file = None
            return
        span = body[0]
        self.file = file
        self.size, self.mtime_ns = file.size, file.mtime_ns
        self.span, self.start, self.length = span, span.start, span.length
        self.head, self.tail, self.whole = prepared.head, b"", b""
        self.status = prepared.status
        # The very list stats.requests holds for (status, title): adding to it is the record.
        self.counts = stats.counter(prepared.status, prepared.title)
        self.touch = touch
        self.checked = -1

    def verify(self, epoch: int) -> bool:
        """The armed file, fully checked (once per server epoch): still linked at its path (not
        moved, replaced or removed), same size and mtime. Also marks it used (LRU order, idle
        sweeps), precise enough at that granularity."""
        file = self.file
        assert file is not None
        try:
            st = os.fstat(file.fd)
        except OSError:
            return False
        if not st.st_nlink or st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            return False
        self.touch(file.path)
        file.idle = 0
        self.checked = epoch
        return True


def _no_touch(path: str) -> None:
    return None

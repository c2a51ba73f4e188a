"""The pacer of a fill run: the shared bandwidth cap (a TokenBucket) and the fill window
(streams stop when it closes and wait for the next opening). Stream threads call `charge`;
the asyncio side waits with the injected sleep, so tests drive time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from edgeflix.bucket import TokenBucket
from edgeflix.fillwindow import FillWindow
from edgeflix.log import event

log = logging.getLogger("appliance.fill")
BUFFER = 1 << 20  # most bytes a stream reads, writes and hashes in one go


class WindowClosed(Exception):
    """The fill window closed mid-stream: keep the .part, wait for the next opening."""


Sleep = Callable[[float], Awaitable[None]]


@dataclass
class Pacer:
    """Bandwidth cap and fill window shared by every stream of a fill run. `charge` is
    called from the stream threads; waiting is always done with the injected async sleep."""

    cap_bps: int | None
    window: FillWindow | None
    clock: Callable[[], float] = time.monotonic
    # The time the window is judged at: the daemon's scheduler passes its own, this box's
    # clock plus the fleet link's correction (FillScheduler.now).
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    sleep: Sleep = asyncio.sleep
    _bucket: TokenBucket | None = None
    # The [open, close) span of the window the streams run in (None: never closes).
    _open_at: datetime | None = None
    _close_at: datetime | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.cap_bps:
            self._bucket = TokenBucket.full(self.cap_bps / 8, None, self.clock())

    def open_now(self) -> bool:
        return self.window is None or self.window.is_open(self.now())

    async def wait_open(self) -> None:
        if self.window is None:
            return
        # One reading for the check and the close time: read twice, a window closing in
        # between would be taken as open until its next day's close.
        while not self.window.is_open(now := self.now()):
            wait = self.window.seconds_until_open(now)
            event(log, "fill.window_wait", seconds=round(wait))
            # Re-check at least hourly: the wall clock may be stepped by NTP meanwhile.
            await self.sleep(min(max(wait, 0.05), 3600))
        self._open_at, self._close_at = _span(self.window, now)

    def closed(self) -> bool:
        """The window this run's streams started in has closed (a stream thread stops before
        its next file, as `charge` stops it mid-file). So has it when the clock reads before
        its opening: stepped back (NTP), the close kept would let the fill run outside the
        window for as long as the step, days of it; the streams wait for the window again,
        which sets the span anew."""
        if self._close_at is None:
            return False
        now = self.now()
        return now >= self._close_at or (self._open_at is not None and now < self._open_at)

    def charge(self, nbytes: int) -> float:
        """Account for `nbytes` received; WindowClosed once the window has closed, else the
        seconds to wait before using them (the cap)."""
        if self.closed():
            raise WindowClosed
        if self._bucket is None:
            return 0.0
        with self._lock:
            self._bucket, wait = self._bucket.take(nbytes, self.clock())
        return wait

    async def spend(self, nbytes: int) -> None:
        wait = self.charge(nbytes)
        if wait > 0:
            await self.sleep(wait)

    def batch_bytes(self) -> int:
        """Bytes a stream gathers between charges: under a cap about 1/16 s of it, so the
        pacing stays smooth and a window close or SIGKILL loses little."""
        if not self.cap_bps:
            return BUFFER
        return max(64 * 1024, min(BUFFER, self.cap_bps // 8 // 16))


def _span(window: FillWindow, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The [open, close) span of the open `window` holding `now`; (None, None) when it never
    closes (00:00-24:00)."""
    close = window.next_close(now)
    if close is None:
        return None, None
    opens = max((a for a, _ in window.intervals(now) if a <= now), default=None)
    return opens, close

"""Whether a title whose site peer lacks the planned version yet waits for it or goes to the
origin now. Pure: the downloader asks after the peer's files.json answers 404 or another
digest (the peer is itself still filling the title from the origin), the runner does the wait.

Open Connect fills one appliance per site from upstream and its peers from it: falling
straight through to the origin would make every appliance of a site fetch the same title at
once. So the title is deferred a few times, minutes apart, and the origin is used only once
those waits are spent or when waiting longer would leave too little of the fill window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from edgeflix.fillwindow import FillWindow

# Why a title stops waiting for its peer and goes to the next source (the log says which).
WAITS_SPENT = "peer_waits_spent"
WINDOW_SHORT = "window_short"


@dataclass(frozen=True)
class PeerWaitPolicy:
    first_s: float = 120.0  # the first wait; each next one doubles, up to 4 x first_s
    waits: int = 4  # deferrals of one title per run before the origin (0: never wait)
    # Never wait into the last share of the open window: that much (or the title's transfer
    # time at the cap, when longer) is kept for fetching it from the origin.
    window_share: float = 0.25

    def __post_init__(self) -> None:
        if not self.first_s > 0 or self.waits < 0 or not 0 <= self.window_share <= 1:
            raise ValueError(f"not a usable peer wait policy: {self}")

    def delay(self, wait: int) -> float:
        """Seconds of the `wait`-th wait (1 = the first)."""
        return self.first_s * 2 ** min(max(wait - 1, 0), 2)


@dataclass(frozen=True)
class PeerDecision:
    wait_s: float | None  # defer the title this long; None: the next source now
    reason: str | None = None  # why not wait (WAITS_SPENT, WINDOW_SHORT)
    window_left_s: float | None = None  # seconds of the open window left now
    reserve_s: float | None = None  # seconds of window kept for the origin fetch


def transfer_s(size_bytes: int | None, cap_bps: int | None) -> float:
    """The title's transfer time at the cap; 0 when either is unknown (uncapped is fast)."""
    if not size_bytes or not cap_bps:
        return 0.0
    return size_bytes * 8 / cap_bps


def open_span(window: FillWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """The [open, close) span of the window holding `now`, or None when it is shut."""
    for opens, closes in window.intervals(now):
        if opens <= now < closes:
            return opens, closes
    return None


def decide(
    policy: PeerWaitPolicy,
    waited: int,
    now: datetime,
    window: FillWindow | None,
    cap_bps: int | None = None,
    size_bytes: int | None = None,
) -> PeerDecision:
    """After the peer lacked the title's planned version for the `waited + 1`-th time in
    this run: how long to defer it, or why to take it from the next source now. `size_bytes`
    is the title's expected size when known (the peer's older version says roughly)."""
    if waited >= policy.waits:
        return PeerDecision(None, WAITS_SPENT)
    now = now.astimezone(UTC)  # the window's spans are UTC: compare instants, not wall times
    wait_s = policy.delay(waited + 1)
    span = open_span(window, now) if window is not None else None
    if span is None:
        # No window (fills at any hour), or it shut meanwhile: the peer has until the next.
        return PeerDecision(wait_s)
    opens, closes = span
    left = (closes - now).total_seconds()
    length = (closes - opens).total_seconds()
    reserve = max(policy.window_share * length, transfer_s(size_bytes, cap_bps))
    if wait_s + reserve > left:  # in seconds: a huge title at a tiny cap is no datetime
        return PeerDecision(None, WINDOW_SHORT, left, reserve)
    return PeerDecision(wait_s, None, left, reserve)

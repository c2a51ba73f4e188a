"""Wait for the machine to go quiet before a measured run: `make bench` runs the benches one
after another, and the CPU-heavy one before (an encode, the simulation) leaves work behind
(ffmpeg exiting, page-cache writeback) that lands in the next one's first seconds.

Idle share from /proc/stat over short windows, not the load average (a one-minute mean
that stays high long after the machine is quiet).
"""

from __future__ import annotations

import sys
import time

Sample = tuple[int, int]  # (idle + iowait jiffies, all jiffies)


def _cpu() -> Sample:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def idle_share(window_s: float = 0.5) -> float:
    a = _cpu()
    time.sleep(window_s)
    b = _cpu()
    return (b[0] - a[0]) / max(b[1] - a[1], 1)


def wait_for_quiet(min_idle: float = 0.9, max_wait_s: float = 60.0) -> float:
    """Block until two windows in a row are at least `min_idle` idle, or `max_wait_s` has
    passed (then say so: the figures that follow ran on a busy machine). Returns the last
    idle share seen."""
    deadline = time.monotonic() + max_wait_s
    calm = 0
    share = idle_share()
    while time.monotonic() < deadline:
        calm = calm + 1 if share >= min_idle else 0
        if calm >= 2:
            return share
        share = idle_share()
    print(
        f"note: the machine stayed busy ({share:.0%} idle after {max_wait_s:.0f} s); "
        "the figures below ran beside other work",
        file=sys.stderr,
    )
    return share

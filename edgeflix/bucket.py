"""A token bucket: pure arithmetic over an injected clock. It paces the appliance's fill
(bytes against the bandwidth cap) and the fleet manager's work on one appliance's beats.

`take(n, now)` always grants and returns how long the caller must wait before sending, so
a chunk larger than the burst is allowed but paid for (the bucket goes into debt): the fill's
downloader owns the waiting, one bucket shared by all streams; the manager refuses beats
while an appliance's bucket is in debt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class TokenBucket:
    rate: float  # tokens (bytes; seconds of work) per second
    burst: float  # most tokens saved up while idle
    tokens: float
    updated: float  # clock reading of the last refill

    @classmethod
    def full(cls, rate: float, burst: float | None, now: float) -> TokenBucket:
        if rate <= 0:
            raise ValueError("rate must be positive")
        size = burst if burst is not None else rate / 4  # a quarter second of line rate
        if size <= 0:
            raise ValueError("burst must be positive")
        return cls(rate=rate, burst=size, tokens=size, updated=now)

    def refill(self, now: float) -> TokenBucket:
        elapsed = max(now - self.updated, 0.0)  # a clock that steps back never mints tokens
        tokens = min(self.burst, self.tokens + elapsed * self.rate)
        return replace(self, tokens=tokens, updated=max(now, self.updated))

    def take(self, amount: float, now: float) -> tuple[TokenBucket, float]:
        """Spend `amount`; return the new bucket and the seconds to wait before using it."""
        bucket = self.refill(now)
        left = bucket.tokens - amount
        wait = 0.0 if left >= 0 else -left / bucket.rate
        return replace(bucket, tokens=left), wait

"""When a worker stops waiting for more requests to batch with the first one.

One rule for both worker modes (Celery's `InferenceBatches` and the embedded pool): a batch
leaves when it is full, when no new request has arrived for `quiet_s`, or at the latest
`max_wait_s` after its first request. A lone request waits only `quiet_s`; requests of a burst
(concurrent chart opens reach the broker a few ms apart) keep the batch open and share one
generate call. While a batch runs, new requests pile up for the next one whatever the window.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchWindow:
    max_size: int
    max_wait_s: float  # counted from the batch's first request
    quiet_s: float  # counted from its latest request

    def wait_left(self, now: float, first_at: float, last_at: float, size: int) -> float:
        """Seconds to keep waiting for more requests (0: run the batch now)."""
        if size >= self.max_size:
            return 0.0
        return max(0.0, min(first_at + self.max_wait_s, last_at + self.quiet_s) - now)

    @property
    def tick_s(self) -> float:
        """How often a timer-driven worker re-checks the window (a quarter of the shorter wait, so a
        batch leaves at most 25% late; never under 1 ms)."""
        return max(min(self.quiet_s, self.max_wait_s) / 4, 0.001)

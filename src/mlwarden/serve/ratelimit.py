"""Per-client token buckets with a bounded number of clients.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a request takes one. The table of
clients is an LRU bounded by ``max_clients`` so a flood of distinct clients costs memory once, not forever
(an evicted client comes back with a full bucket, which is the cheap side of the trade).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mlwarden.core.errors import UsageError


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a request may go on; when not, how long until one token is back (for ``Retry-After``)."""

    allowed: bool
    retry_after_s: float
    remaining: float


class RateLimiter:
    """Token buckets keyed by client (see the module docstring)."""

    def __init__(
        self, rate: float, burst: int, *, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise UsageError(f"rate must be a positive number, got {rate}")
        if burst < 1 or max_clients < 1:
            raise UsageError(f"burst and max_clients must be >= 1, got {burst} and {max_clients}")
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, last time)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> RateDecision:
        """Take one token from ``client``'s bucket."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        wait = 0.0 if allowed else (1.0 - tokens) / self.rate
        return RateDecision(allowed, wait, tokens)

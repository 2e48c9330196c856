"""Per-client token buckets: burst, refill, independence of clients, bounded memory, thread safety."""

from __future__ import annotations

import threading

import pytest

from mlwarden.core.errors import UsageError
from mlwarden.serve.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    assert [limiter.take("a").allowed for _ in range(6)] == [True] * 5 + [False]
    refused = limiter.take("a")
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.1)
    clock.now = 0.1  # one token back
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed
    clock.now = 100.0  # refill is capped at the burst
    assert sum(limiter.take("a").allowed for _ in range(10)) == 5


def test_clients_do_not_share_buckets_and_the_table_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=1, max_clients=3, clock=clock)
    assert limiter.take("a").allowed
    assert not limiter.take("a").allowed
    assert limiter.take("b").allowed
    for name in ("c", "d", "e"):
        limiter.take(name)
    assert len(limiter) == 3  # "a" and "b" were evicted, least recently seen first
    assert limiter.take("a").allowed  # an evicted client comes back with a full bucket


def test_concurrent_takes_never_exceed_the_burst() -> None:
    limiter = RateLimiter(rate=1e-6, burst=100, clock=Clock())
    granted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [limiter.take("x").allowed for _ in range(100)]
        with lock:
            granted.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 100


@pytest.mark.parametrize(
    ("rate", "burst", "clients"), [(0, 1, 1), (-1, 1, 1), (float("inf"), 1, 1), (1, 0, 1), (1, 1, 0)]
)
def test_bad_settings_are_refused(rate: float, burst: int, clients: int) -> None:
    with pytest.raises(UsageError):
        RateLimiter(rate, burst, max_clients=clients)

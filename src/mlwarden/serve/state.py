"""Per-client state the guard's decisions depend on: in this process, or in Redis shared by several workers.

Two pieces of state follow a client from request to request: its rate-limit token bucket and its extraction
statistics (PRADA distances, query rate, coverage). With one process they live in memory
(:class:`LocalState`, the default, exactly today's behaviour). With ``mlwarden serve --workers N`` a client's
requests land on any worker, so a per-process bucket would let it through N times as fast and its extraction
queries would be split into N harmless-looking streams: :class:`RedisState` keeps both in Redis instead.

- The bucket is one Lua script (atomic on the server, clock from Redis ``TIME`` so workers agree on time): the
  same token bucket as :class:`~mlwarden.serve.ratelimit.RateLimiter`, its key expiring once the bucket would be
  full again.
- A client's extraction state is one value (see :func:`mlwarden.guard.extraction.export_client`), read, updated
  and written back under a per-client Redis lock (two round trips), so the requests of one client are observed
  one after another whatever worker they reach: the detector sees the same stream as on one process.

Redis unreachable (or slower than ``timeout_s``) fails closed: :class:`StateUnavailableError`, which the request path
answers with 503 ``state_unavailable`` and counts (``mlwarden_guard_rejections_total{reason="state_unavailable"}``).
"""

from __future__ import annotations

import abc
import secrets
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mlwarden.core.errors import MlwardenError, UsageError
from mlwarden.guard.extraction import ClientVerdict, ExtractionMonitor, export_client, import_client
from mlwarden.serve.ratelimit import RateDecision, RateLimiter

if TYPE_CHECKING:
    import redis

# Token bucket: KEYS[1] the bucket; ARGV rate per second, burst, key ttl in ms. Returns {allowed, tokens}.
# Floats go back as strings (Redis truncates Lua numbers to integers).
_TAKE = """
local rate, burst, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, last = tonumber(v[1]), tonumber(v[2])
if tokens == nil or last == nil then tokens, last = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ttl)
return {allowed, string.format('%.17g', tokens)}
"""


# Write a client's extraction state and drop its lock, only while the lock is still ours. KEYS: value, lock; ARGV:
# lock token, new value ("" when there is none), ttl in ms. Returns 1 when written, 0 when the lock was lost.
_WRITE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3])) end
redis.call('DEL', KEYS[2])
return 1
"""


class StateUnavailableError(MlwardenError):
    """The shared state store did not answer: the request is refused (503), never decided without its state."""


class StateSettings(BaseModel):
    """Where per-client state lives (policy section ``state``; ``mlwarden serve --redis URL`` overrides the URL).

    Attributes:
        redis_url: ``redis://host:port/db`` (or ``rediss://``, ``unix://``); ``None``: in this process only.
        key_prefix: prefix of every key, so several services can share one Redis.
        timeout_s: connect and command timeout; beyond it a request fails closed (503).
        lock_timeout_s: how long a request waits for another request of the same client to finish its
            extraction update (then 503); the lock itself expires after 10 times this, should a worker die.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str | None = None
    key_prefix: str = Field(default="mlwarden", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    timeout_s: float = Field(default=0.5, gt=0.0, le=60.0)
    lock_timeout_s: float = Field(default=2.0, gt=0.0, le=60.0)


class StateBackend(abc.ABC):
    """Per-client rate buckets and extraction statistics (see the module docstring)."""

    #: ``memory`` or ``redis`` (shown on ``/metrics`` and in logs).
    kind: str = "memory"

    @abc.abstractmethod
    def take(self, client: str) -> RateDecision:
        """Take one token from ``client``'s bucket.

        Raises:
            StateUnavailableError: the store did not answer.
        """

    @abc.abstractmethod
    def observe(
        self, monitor: ExtractionMonitor, scope: str, client: str, rows: np.ndarray, classes: Sequence[int], now: float
    ) -> ClientVerdict:
        """Feed ``rows`` (with their predicted ``classes``) of ``client`` to ``monitor``; the last verdict.

        Stops at the first ``block`` verdict. ``scope`` names the served version (its input space): state of
        one version never mixes with another's.

        Raises:
            StateUnavailableError: the store did not answer.
            UsageError: a row the monitor refuses (wrong dimension, non-finite).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def _observe_rows(
    monitor: ExtractionMonitor, client: str, rows: np.ndarray, classes: Sequence[int], now: float
) -> ClientVerdict:
    verdict = None
    for row, cls in zip(rows, classes, strict=True):
        verdict = monitor.observe(client, row, int(cls), now)
        if verdict.action == "block":
            break
    if verdict is None:
        raise UsageError("no rows to observe")
    return verdict


class LocalState(StateBackend):
    """Both pieces of state in this process (one worker; the default)."""

    kind = "memory"

    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000) -> None:
        self.rates = RateLimiter(rate, burst, max_clients=max_clients)
        self._lock = threading.Lock()

    def take(self, client: str) -> RateDecision:
        """See :meth:`StateBackend.take`."""
        return self.rates.take(client)

    def observe(
        self, monitor: ExtractionMonitor, scope: str, client: str, rows: np.ndarray, classes: Sequence[int], now: float
    ) -> ClientVerdict:
        """See :meth:`StateBackend.observe`."""
        with self._lock:
            return _observe_rows(monitor, client, rows, classes, now)


class RedisState(StateBackend):
    """Both pieces of state in Redis, shared by every worker using the same URL and prefix.

    Args:
        url: the Redis URL.
        rate / burst: the token bucket (as :class:`~mlwarden.serve.ratelimit.RateLimiter`).
        settings: prefix and timeouts.
        client: an existing ``redis.Redis`` (tests); built from ``url`` otherwise.

    Raises:
        UsageError: redis-py is missing (the ``scale`` extra) or the URL is malformed.
    """

    kind = "redis"

    def __init__(
        self, url: str, rate: float, burst: int, settings: StateSettings | None = None, *, client: Any = None
    ) -> None:
        try:
            import redis
        except ImportError:
            raise UsageError("shared state in Redis needs redis-py: pip install 'mlwarden[scale]'") from None
        self.settings = settings or StateSettings()
        if not (rate > 0 and burst >= 1):
            raise UsageError(f"rate must be > 0 and burst >= 1, got {rate} and {burst}")
        self.rate, self.burst = float(rate), int(burst)
        self._ttl_ms = int((burst / rate + 1.0) * 1000)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        try:
            self.redis: redis.Redis = client or redis.Redis.from_url(
                url, socket_timeout=self.settings.timeout_s, socket_connect_timeout=self.settings.timeout_s
            )
        except ValueError as exc:
            raise UsageError(f"--redis {url!r}: {exc}") from None
        self._take = self.redis.register_script(_TAKE)
        self._write = self.redis.register_script(_WRITE)
        self._local = threading.Lock()  # one extraction update at a time in this process (a shared monitor)

    def _key(self, *parts: str) -> str:
        return ":".join((self.settings.key_prefix, *parts))

    def ping(self) -> None:
        """Check the store answers (``mlwarden serve`` does at start-up: a wrong URL fails before listening).

        Raises:
            StateUnavailableError: it does not.
        """
        try:
            self.redis.ping()
        except self._errors as exc:
            raise StateUnavailableError(f"redis did not answer: {exc}") from None

    def take(self, client: str) -> RateDecision:
        """See :meth:`StateBackend.take`."""
        try:
            allowed, tokens = self._take(keys=[self._key("rate", client)], args=[self.rate, self.burst, self._ttl_ms])
        except self._errors as exc:
            raise StateUnavailableError(f"rate limit state unavailable: {exc}") from None
        left = float(tokens)
        ok = bool(int(allowed))
        return RateDecision(ok, 0.0 if ok else (1.0 - left) / self.rate, left)

    def observe(
        self, monitor: ExtractionMonitor, scope: str, client: str, rows: np.ndarray, classes: Sequence[int], now: float
    ) -> ClientVerdict:
        """See :meth:`StateBackend.observe`.

        Two round trips: take the client's lock and read its value in one pipeline; write the new value and drop
        the lock in one script, which writes only while the lock is still ours (a request that outlived the
        lock's expiry is refused rather than overwrite a newer state).
        """
        key = self._key("extraction", scope, client)
        lock_key = key + ":lock"
        ttl_ms = int(monitor.config.rate_window_s * 1000 * 60)  # an idle client is forgotten after 60 windows
        try:
            token, blob = self._lock_and_read(lock_key, key, client)
            with self._local:
                import_client(monitor, client, blob, int(rows.shape[1]))
                try:
                    verdict = _observe_rows(monitor, client, rows, classes, now)
                    new = export_client(monitor, client)
                finally:
                    monitor.reset(client)  # this process keeps nothing: Redis holds the truth
            written = self._write(keys=[key, lock_key], args=[token, new or b"", ttl_ms])
        except self._errors as exc:
            raise StateUnavailableError(f"extraction state unavailable: {exc}") from None
        if not int(written):
            raise StateUnavailableError(f"extraction state of {client!r}: the lock expired before the update")
        return verdict

    def _lock_and_read(self, lock_key: str, key: str, client: str) -> tuple[str, bytes | None]:
        hold = self.settings.lock_timeout_s
        token = secrets.token_hex(8)
        deadline = time.monotonic() + hold
        wait = 0.0005
        while True:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(lock_key, token, nx=True, px=int(hold * 10_000))
            pipe.get(key)
            locked, blob = pipe.execute()
            if locked:
                if blob is not None and not isinstance(blob, bytes):
                    raise StateUnavailableError("the redis client decodes responses; state needs bytes")
                return token, blob
            if time.monotonic() >= deadline:
                raise StateUnavailableError(f"extraction state of {client!r} stayed locked for {hold:g}s")
            time.sleep(wait)
            wait = min(wait * 2, 0.02)

    def close(self) -> None:
        """See :meth:`StateBackend.close`."""
        try:
            self.redis.close()
        except self._errors:
            pass


def make_state(
    settings: StateSettings, rate: float, burst: int, *, max_clients: int, redis_url: str | None = None
) -> StateBackend:
    """The backend ``settings`` (and ``--redis``, which wins) ask for; a Redis one is pinged first.

    Raises:
        UsageError: a bad URL or missing redis-py.
        StateUnavailableError: Redis does not answer at start-up.
    """
    url = redis_url or settings.redis_url
    if url is None:
        return LocalState(rate, burst, max_clients=max_clients)
    backend = RedisState(url, rate, burst, settings)
    backend.ping()
    return backend

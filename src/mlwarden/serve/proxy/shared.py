"""State of the LLM proxy that several workers must share: budgets used, and holds (cut-offs, quarantines, switches).

With one process both live in memory (:class:`LocalUsage`, :class:`LocalHolds`). With ``mlwarden serve
--workers N --redis URL`` a client's requests land on any worker, so a per-process budget would let it spend N
times its allowance and a cut-off client would still be served by the other workers: :class:`RedisUsage` and
:class:`RedisHolds` keep both in Redis instead (keys under the policy's ``state.key_prefix``, like the rate
buckets of :mod:`mlwarden.serve.state`).

- A client's use is one hash per client (window start, tokens, cost), read and updated by one Lua script, atomic
  on the server and timed by Redis ``TIME`` so that workers agree on when a window ends; the key expires with
  the window.
- A hold is one key per held thing (``proxy:hold:<kind>:<name>``) whose value is a small JSON document (reason,
  playbook, until) and which Redis expires when the hold ends; lifting it deletes the key.

Redis unreachable fails closed, as for the rate limits: :class:`~mlwarden.serve.state.StateUnavailableError`.
"""

from __future__ import annotations

import abc
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlwarden.core.errors import UsageError
from mlwarden.serve.state import StateSettings, StateUnavailableError

# KEYS[1] the client's use; ARGV window seconds, tokens to add, cost to add. Returns {tokens, cost, resets in s}.
_USE = """
local window, add_t, add_c = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'start', 'tokens', 'cost')
local start, tokens, cost = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
if start == nil or now - start >= window then start, tokens, cost = now, 0, 0 end
if add_t > 0 or add_c > 0 then
  tokens, cost = tokens + add_t, cost + add_c
  redis.call('HSET', KEYS[1], 'start', string.format('%.6f', start), 'tokens', string.format('%d', tokens),
             'cost', string.format('%.17g', cost))
  redis.call('PEXPIRE', KEYS[1], math.ceil((start + window - now) * 1000) + 1000)
end
return {string.format('%d', tokens), string.format('%.17g', cost), string.format('%.6f', start + window - now)}
"""


@dataclass(frozen=True, slots=True)
class WindowUse:
    """A client's use in its current window."""

    tokens: int
    cost: float
    resets_in_s: float


class UsageStore(abc.ABC):
    """Per-client tokens and cost over a fixed window (see the module docstring)."""

    kind = "memory"

    @abc.abstractmethod
    def add(self, client: str, tokens: int, cost: float, window_s: float) -> WindowUse:
        """Add to ``client``'s window (nothing: just read it) and return its use.

        Raises:
            StateUnavailableError: the store did not answer.
        """


class LocalUsage(UsageStore):
    """Use in this process (one worker), the least recently seen clients beyond ``max_clients`` forgotten."""

    def __init__(self, max_clients: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_clients = max_clients
        self._clock = clock
        self._use: OrderedDict[str, tuple[float, int, float]] = OrderedDict()  # client -> (start, tokens, cost)
        self._lock = threading.Lock()

    def add(self, client: str, tokens: int, cost: float, window_s: float) -> WindowUse:
        """See :meth:`UsageStore.add`."""
        now = self._clock()
        with self._lock:
            start, used, spent = self._use.pop(client, (now, 0, 0.0))
            if now - start >= window_s:
                start, used, spent = now, 0, 0.0
            used, spent = used + tokens, spent + cost
            self._use[client] = (start, used, spent)
            while len(self._use) > self.max_clients:
                self._use.popitem(last=False)
        return WindowUse(used, spent, max(0.0, start + window_s - now))


def connect(url: str, settings: StateSettings) -> Any:
    """A ``redis.Redis`` for ``url`` with the settings' timeouts, pinged.

    Raises:
        UsageError: redis-py is missing or the URL is malformed.
        StateUnavailableError: Redis does not answer.
    """
    try:
        import redis
    except ImportError:
        raise UsageError("shared state in Redis needs redis-py: pip install 'mlwarden[scale]'") from None
    try:
        client = redis.Redis.from_url(url, socket_timeout=settings.timeout_s, socket_connect_timeout=settings.timeout_s)
    except ValueError as exc:
        raise UsageError(f"--redis {url!r}: {exc}") from None
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise StateUnavailableError(f"redis did not answer: {exc}") from None
    return client


def _errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError, OSError)


class RedisUsage(UsageStore):
    """Use in Redis, shared by every worker with the same URL and key prefix."""

    kind = "redis"

    def __init__(self, client: Any, settings: StateSettings) -> None:
        self.redis, self.prefix = client, settings.key_prefix
        self._script = client.register_script(_USE)
        self._errors = _errors()

    def add(self, client: str, tokens: int, cost: float, window_s: float) -> WindowUse:
        """See :meth:`UsageStore.add`."""
        key = f"{self.prefix}:proxy:budget:{client}"
        try:
            used, spent, left = self._script(keys=[key], args=[window_s, int(tokens), float(cost)])
        except self._errors as exc:
            raise StateUnavailableError(f"budget state unavailable: {exc}") from None
        return WindowUse(int(used), float(spent), max(0.0, float(left)))


class HoldStore(abc.ABC):
    """Time-limited holds by kind and name: ``client`` cut-offs, ``route`` quarantines, the ``upstream`` switch.

    A hold is a JSON-able document; ``ttl_s`` ``None`` holds until lifted.
    """

    kind = "memory"

    @abc.abstractmethod
    def put(self, kind: str, name: str, doc: dict[str, Any], ttl_s: float | None) -> None:
        """Hold ``name`` (replacing a hold already there)."""

    @abc.abstractmethod
    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The hold on ``name``, or ``None``."""

    @abc.abstractmethod
    def lift(self, kind: str, name: str) -> dict[str, Any] | None:
        """End the hold on ``name``; the document it had, or ``None`` when there was none."""

    @abc.abstractmethod
    def items(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every current hold of ``kind``."""


class LocalHolds(HoldStore):
    """Holds in this process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._holds: dict[tuple[str, str], tuple[float | None, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def put(self, kind: str, name: str, doc: dict[str, Any], ttl_s: float | None) -> None:
        """See :meth:`HoldStore.put`."""
        with self._lock:
            self._holds[(kind, name)] = (None if ttl_s is None else self._clock() + ttl_s, dict(doc))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """See :meth:`HoldStore.get`."""
        with self._lock:
            held = self._holds.get((kind, name))
            if held is None:
                return None
            if held[0] is not None and self._clock() >= held[0]:
                del self._holds[(kind, name)]
                return None
            return held[1]

    def lift(self, kind: str, name: str) -> dict[str, Any] | None:
        """See :meth:`HoldStore.lift`."""
        doc = self.get(kind, name)
        with self._lock:
            self._holds.pop((kind, name), None)
        return doc

    def items(self, kind: str) -> dict[str, dict[str, Any]]:
        """See :meth:`HoldStore.items`."""
        names = [n for k, n in list(self._holds) if k == kind]
        return {n: doc for n in names if (doc := self.get(kind, n)) is not None}


class RedisHolds(HoldStore):
    """Holds in Redis, shared by every worker (see the module docstring)."""

    kind = "redis"

    def __init__(self, client: Any, settings: StateSettings) -> None:
        self.redis, self.prefix = client, settings.key_prefix
        self._errors = _errors()

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:proxy:hold:{kind}:{name}"

    def put(self, kind: str, name: str, doc: dict[str, Any], ttl_s: float | None) -> None:
        """See :meth:`HoldStore.put`."""
        try:
            px = None if ttl_s is None else max(1, int(ttl_s * 1000))
            self.redis.set(self._key(kind, name), json.dumps(doc, default=str), px=px)
        except self._errors as exc:
            raise StateUnavailableError(f"hold state unavailable: {exc}") from None

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """See :meth:`HoldStore.get`."""
        try:
            raw = self.redis.get(self._key(kind, name))
        except self._errors as exc:
            raise StateUnavailableError(f"hold state unavailable: {exc}") from None
        return None if raw is None else dict(json.loads(raw))

    def lift(self, kind: str, name: str) -> dict[str, Any] | None:
        """See :meth:`HoldStore.lift`."""
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.get(self._key(kind, name))
            pipe.delete(self._key(kind, name))
            raw, _ = pipe.execute()
        except self._errors as exc:
            raise StateUnavailableError(f"hold state unavailable: {exc}") from None
        return None if raw is None else dict(json.loads(raw))

    def items(self, kind: str) -> dict[str, dict[str, Any]]:
        """See :meth:`HoldStore.items`."""
        prefix = self._key(kind, "")
        try:
            keys = list(self.redis.scan_iter(match=prefix + "*", count=500))
            values = self.redis.mget(keys) if keys else []
        except self._errors as exc:
            raise StateUnavailableError(f"hold state unavailable: {exc}") from None
        out = {}
        for key, raw in zip(keys, values, strict=True):
            if raw is not None:
                name = (key.decode() if isinstance(key, bytes) else str(key))[len(prefix) :]
                out[name] = dict(json.loads(raw))
        return out

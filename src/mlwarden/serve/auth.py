"""Who is calling: registry tokens, checked against the registry and cached.

Every request carries ``Authorization: Bearer mlw_...``. Asking the database on every request would put a
query on the hot path, so an authenticated principal is cached (keyed by the SHA-256 of the token, never the
token itself) for between half of ``ttl`` and ``ttl`` seconds (spread at random, so many clients' entries do not
expire together): a revoked token stops working within ``ttl``. Failures are not cached, so a newly issued token
works at once; each failure is counted on ``/metrics`` and audited by the registry.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from mlwarden.registry.roles import Permission, Principal
from mlwarden.registry.service import Registry

#: Cached principals at most (least recently used evicted).
MAX_CACHED = 10_000


class TokenCache:
    """Authenticate bearer tokens through the registry, caching successes (see the module docstring)."""

    def __init__(self, registry: Registry, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.ttl = ttl
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The principal behind ``token`` if it was authenticated less than ``ttl`` ago, else ``None``."""
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and self._clock() - hit[1] < self.ttl:
                self._cache.move_to_end(key)
                return hit[0]
        return None

    def authenticate(self, token: str) -> Principal:
        """The principal behind ``token``.

        Raises:
            AuthError: unknown, expired, revoked or malformed token, or a disabled user.
            DatabaseError: the registry is unreachable and the token is not cached.
        """
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[1] < self.ttl:
                self._cache.move_to_end(key)
                return hit[0]
        principal = self.registry.authenticate(token)
        if self.ttl > 0:
            # Entries expire at spread-out times (a random part of the ttl is used up at once), so the tokens of
            # many clients that arrived together are not all checked again in the same instant.
            aged = now - random.uniform(0.0, 0.5) * self.ttl  # noqa: S311 - jitter, not a secret
            with self._lock:
                self._cache[key] = (principal, aged)
                while len(self._cache) > MAX_CACHED:
                    self._cache.popitem(last=False)
        return principal

    def clear(self) -> None:
        """Forget every cached principal (e.g. after tokens were revoked in bulk)."""
        with self._lock:
            self._cache.clear()


def may_predict(principal: Principal, subject: str) -> str | None:
    """Why ``principal`` may not call predict on ``subject`` (``model:NAME:VERSION``), or ``None`` if it may."""
    if not principal.can(Permission.READ):
        return f"{principal.username} lacks the read permission needed to call the model"
    if not principal.within(subject):
        return f"the token's scope {principal.scope!r} does not cover {subject}"
    return None

"""Who is calling: registry tokens, checked against the registry and cached.

Every request carries ``Authorization: Bearer mlw_...``. Asking the database on every request would put a
query on the hot path, so an authenticated principal is cached (keyed by the SHA-256 of the token, never the
token itself) for between half of ``ttl`` and ``ttl`` seconds (spread at random, so many clients' entries do not
expire together): a revoked token stops working within ``ttl``. Failures are not cached, so a newly issued token
works at once; each failure is counted on ``/metrics`` and audited by the registry.

**Refresh ahead.** Once an entry is past half of ``ttl``, the next request that uses it is still answered from
the cache and the token is checked again by a background thread; the refreshed entry replaces it, a failed check
(revoked, expired, disabled user) removes it. A busy client therefore never waits for the registry (whose check
is a write: the token's last use), and a revoked token still stops working within ``ttl``: an entry is never used
past ``ttl``. The token is handed to the background thread for that one check and not kept.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mlwarden.registry.errors import AuthError
from mlwarden.registry.roles import Permission, Principal
from mlwarden.registry.service import Registry

log = logging.getLogger("mlwarden.serve")

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
        self._refreshing: set[bytes] = set()
        self._refresher: ThreadPoolExecutor | None = None

    def cached(self, token: str) -> Principal | None:
        """The principal behind ``token`` if it was authenticated less than ``ttl`` ago, else ``None``.

        Past half of ``ttl`` the entry is still returned and a background check of the token is started (once).
        """
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            age = self._clock() - hit[1]
            if age >= self.ttl:
                return None
            self._cache.move_to_end(key)
            if age >= self.ttl / 2 and key not in self._refreshing:
                self._refreshing.add(key)
                if self._refresher is None:
                    self._refresher = ThreadPoolExecutor(1, thread_name_prefix="mlwarden-token-refresh")
                self._refresher.submit(self._refresh, key, token)
            return hit[0]

    def _refresh(self, key: bytes, token: str) -> None:
        try:
            principal = self.registry.authenticate(token)
        except AuthError:
            with self._lock:
                self._cache.pop(key, None)  # revoked, expired or disabled: the next request is refused
        except Exception:  # e.g. the database is down: the entry ages out as it would have
            log.warning("background token check failed; the cached entry expires at its time", exc_info=True)
        else:
            with self._lock:
                if key in self._cache:
                    self._cache[key] = (principal, self._clock())
        finally:
            with self._lock:
                self._refreshing.discard(key)

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

    def close(self) -> None:
        """Stop the background refresher (after the checks it has started)."""
        if self._refresher is not None:
            self._refresher.shutdown(wait=True)


def may_predict(principal: Principal, subject: str) -> str | None:
    """Why ``principal`` may not call predict on ``subject`` (``model:NAME:VERSION``), or ``None`` if it may."""
    if not principal.can(Permission.READ):
        return f"{principal.username} lacks the read permission needed to call the model"
    if not principal.within(subject):
        return f"the token's scope {principal.scope!r} does not cover {subject}"
    return None

"""Who is calling: registry tokens, checked against the registry and cached.

Every request carries ``Authorization: Bearer mlw_...``. Asking the database on every request would put a
query on the hot path, so an authenticated principal is cached (keyed by the SHA-256 of the token, never the
token itself). An entry is trusted for at most ``ttl`` seconds after the registry last confirmed it: a revoked
token, a disabled user or changed roles take effect within ``ttl``. Failures are not cached, so a newly issued
token works at once; each failure is counted on ``/metrics`` and audited by the registry.

**Kept fresh in the background.** A sweeper thread wakes every ``ttl / 4`` and confirms, in one read query per
500 tokens (:meth:`~mlwarden.registry.service.Registry.recheck_tokens`, by token id), every entry older than
``ttl / 2`` whose client sent a request in the last ``keep_warm`` seconds; it also records those clients' last
use (a write at most once a minute per token, as :meth:`~mlwarden.registry.service.Registry.authenticate`
does). A client that keeps calling, even after a pause of up to ``keep_warm``, is therefore answered from memory
and never waits for the registry; an entry confirmed by a sweep is ``ttl / 2 + ttl / 4`` old at most when the next
sweep confirms it again, so a healthy sweeper never lets one lapse. If the registry cannot be read, entries are
not confirmed and lapse at ``ttl`` as they would without the sweeper (the next request of that client asks the
registry itself and gets a clear error if it is down). Entries idle past ``keep_warm`` are forgotten.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mlwarden.registry.roles import Permission, Principal
from mlwarden.registry.service import Registry

log = logging.getLogger("mlwarden.serve")

#: Cached principals at most (least recently used evicted).
MAX_CACHED = 10_000
#: Default ``keep_warm``: how long after its last request a client's entry is still kept confirmed.
KEEP_WARM_S = 900.0


@dataclass(slots=True)
class _Entry:
    principal: Principal
    checked: float  # when the registry last confirmed it (the cache's clock)
    used: float  # the client's last request


class TokenCache:
    """Authenticate bearer tokens through the registry, caching successes (see the module docstring).

    Args:
        registry: where tokens are checked.
        ttl: seconds an entry is trusted after the registry confirmed it; 0 disables caching.
        keep_warm: seconds after a client's last request during which the sweeper keeps its entry confirmed.
        background: run the sweeper thread (started with the first cached entry); without it, call
            :meth:`refresh` yourself.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        registry: Registry,
        ttl: float,
        *,
        keep_warm: float = KEEP_WARM_S,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.ttl = ttl
        self.keep_warm = keep_warm
        self._background = background
        self._clock = clock
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._used_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def cached(self, token: str) -> Principal | None:
        """The principal behind ``token`` if the registry confirmed it less than ``ttl`` ago, else ``None``."""
        return self._cached(_key(token))

    def _cached(self, key: bytes) -> Principal | None:
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key)
            if entry is None or now - entry.checked >= self.ttl:
                return None
            self._cache.move_to_end(key)
            entry.used = now
            if entry.principal.token_id is not None:
                self._used_ids.add(entry.principal.token_id)
            return entry.principal

    def authenticate(self, token: str) -> Principal:
        """The principal behind ``token``, from the cache or else from the registry (then cached).

        Raises:
            AuthError: unknown, expired, revoked or malformed token, or a disabled user.
            DatabaseError: the registry is unreachable and the token is not cached (or not confirmed within ttl).
        """
        key = _key(token)
        hit = self._cached(key)
        if hit is not None:
            return hit
        now = self._clock()
        principal = self.registry.authenticate(token)
        if self.ttl > 0:
            with self._lock:
                self._cache[key] = _Entry(principal, now, now)
                self._cache.move_to_end(key)
                while len(self._cache) > MAX_CACHED:
                    self._cache.popitem(last=False)
                if self._background and self._sweeper is None and not self._stop.is_set():
                    self._sweeper = threading.Thread(target=self._sweep, name="mlwarden-token-refresh", daemon=True)
                    self._sweeper.start()
        return principal

    def refresh(self) -> int:
        """Confirm the entries due with the registry; the number confirmed.

        Due: older than ``ttl / 2`` and used within ``keep_warm``. Entries the registry no longer accepts are
        dropped, and so are those idle past ``keep_warm``.

        Raises:
            DatabaseError: the registry could not be read (nothing changed; entries lapse at ``ttl``).
        """
        started = self._clock()
        with self._lock:
            for key in [k for k, e in self._cache.items() if started - e.used > self.keep_warm]:
                del self._cache[key]
            due = {
                e.principal.token_id: key
                for key, e in self._cache.items()
                if started - e.checked >= self.ttl / 2 and e.principal.token_id is not None
            }
            used, self._used_ids = self._used_ids, set()
        if not due and not used:
            return 0
        try:
            live = self.registry.recheck_tokens(due.keys(), used)
        except Exception:
            with self._lock:
                self._used_ids |= used  # written by the next sweep that reaches the registry
            raise
        with self._lock:
            for token_id, key in due.items():
                entry = self._cache.get(key)
                if entry is None:
                    continue
                principal = live.get(token_id)
                if principal is None:
                    del self._cache[key]  # revoked, expired or disabled: the next request is refused
                else:
                    entry.principal, entry.checked = principal, max(entry.checked, started)
        return sum(1 for token_id in due if token_id in live)

    def _sweep(self) -> None:
        interval = max(self.ttl / 4, 0.05)
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception:  # e.g. the database is down: entries lapse at ttl, requests then ask themselves
                log.warning("background token check failed; cached entries lapse at their ttl", exc_info=True)

    def clear(self) -> None:
        """Forget every cached principal (e.g. after tokens were revoked in bulk)."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        """Stop the sweeper (after the check it may be running)."""
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join()


def _key(token: str) -> bytes:
    """What the cache keeps a token under: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def may_predict(principal: Principal, subject: str) -> str | None:
    """Why ``principal`` may not call predict on ``subject`` (``model:NAME:VERSION``), or ``None`` if it may."""
    if not principal.can(Permission.READ):
        return f"{principal.username} lacks the read permission needed to call the model"
    if not principal.within(subject):
        return f"the token's scope {principal.scope!r} does not cover {subject}"
    return None

"""The guard's token cache: entries spread over the ttl, refreshed ahead in the background, never used past ttl."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from mlwarden.registry.errors import AuthError
from mlwarden.registry.roles import Principal, Role
from mlwarden.serve import auth
from mlwarden.serve.auth import TokenCache

TTL = 100.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Registry:
    """Stands in for the registry's token check: counts checks, can revoke, can hold a check until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.revoked = False
        self.gate = threading.Event()
        self.gate.set()
        self.checked = threading.Event()

    def authenticate(self, token: str) -> Principal:
        self.gate.wait(10)
        self.calls += 1
        self.checked.set()
        if self.revoked:
            raise AuthError("token revoked")
        return Principal(username="carol", roles=frozenset({Role.VIEWER}))


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TokenCache, _Registry, _Clock]]:
    monkeypatch.setattr(auth.random, "uniform", lambda a, b: 0.0)  # no jitter: ages are exact
    registry, clock = _Registry(), _Clock()
    tokens = TokenCache(registry, TTL, clock=clock)  # type: ignore[arg-type]
    yield tokens, registry, clock
    tokens.close()


def _refreshed(tokens: TokenCache, registry: _Registry, calls: int) -> None:
    assert registry.checked.wait(10)
    tokens.close()  # waits for the background check
    tokens._refresher = None  # a later refresh gets a new thread
    assert registry.calls == calls


def test_a_busy_client_is_answered_from_the_cache_while_its_token_is_checked_again(
    cache: tuple[TokenCache, _Registry, _Clock],
) -> None:
    tokens, registry, clock = cache
    principal = tokens.authenticate("mlw_token")
    assert registry.calls == 1
    clock.now += 0.4 * TTL
    assert tokens.cached("mlw_token") == principal  # fresh: no check
    assert registry.calls == 1
    registry.checked.clear()
    registry.gate.clear()  # the registry is slow
    clock.now += 0.2 * TTL  # past half of ttl
    started = time.monotonic()
    assert tokens.cached("mlw_token") == principal  # answered at once, not waiting for the registry
    assert time.monotonic() - started < 1.0
    assert tokens.cached("mlw_token") == principal  # one check in flight, not one per request
    registry.gate.set()
    _refreshed(tokens, registry, calls=2)
    clock.now += 0.9 * TTL  # 1.5 ttl after the first check, 0.9 after the refresh
    assert tokens.cached("mlw_token") == principal


def test_a_revoked_token_stops_working_within_the_ttl(cache: tuple[TokenCache, _Registry, _Clock]) -> None:
    tokens, registry, clock = cache
    tokens.authenticate("mlw_token")
    registry.revoked = True
    registry.checked.clear()
    clock.now += 0.6 * TTL
    assert tokens.cached("mlw_token") is not None  # within ttl, as before refresh-ahead
    _refreshed(tokens, registry, calls=2)
    assert tokens.cached("mlw_token") is None  # the background check found it revoked


def test_an_entry_is_never_used_past_the_ttl(cache: tuple[TokenCache, _Registry, _Clock]) -> None:
    tokens, registry, clock = cache
    tokens.authenticate("mlw_token")
    clock.now += TTL
    assert tokens.cached("mlw_token") is None
    assert registry.calls == 1  # no background check for an expired entry: the request authenticates itself

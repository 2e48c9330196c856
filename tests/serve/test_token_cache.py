"""The guard's token cache: confirmed in the background while in use, never trusted past ttl, forgotten when idle."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator

import pytest

from mlwarden.registry.db import DatabaseError
from mlwarden.registry.errors import AuthError
from mlwarden.registry.roles import Principal, Role
from mlwarden.serve.auth import TokenCache

TTL = 100.0
KEEP_WARM = 1000.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Registry:
    """Stands in for the registry: counts per-token checks and batch re-checks, can revoke, change roles, fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.rechecks: list[tuple[set[int], set[int]]] = []
        self.revoked: set[int] = set()
        self.roles = frozenset({Role.VIEWER})
        self.down = False
        self.rechecked = threading.Event()

    def _principal(self, token_id: int) -> Principal:
        return Principal(username=f"client{token_id}", roles=self.roles, token_id=token_id)

    def authenticate(self, token: str) -> Principal:
        self.calls += 1
        token_id = int(token.rsplit("_", 1)[1])
        if token_id in self.revoked:
            raise AuthError("token revoked")
        return self._principal(token_id)

    def recheck_tokens(self, token_ids: Collection[int], used: Collection[int] = ()) -> dict[int, Principal]:
        if self.down:
            raise DatabaseError("the registry database is unreachable")
        self.rechecks.append((set(token_ids), set(used)))
        self.rechecked.set()
        return {i: self._principal(i) for i in token_ids if i not in self.revoked}


@pytest.fixture
def cache() -> Iterator[tuple[TokenCache, _Registry, _Clock]]:
    registry, clock = _Registry(), _Clock()
    tokens = TokenCache(registry, TTL, keep_warm=KEEP_WARM, background=False, clock=clock)  # type: ignore[arg-type]
    yield tokens, registry, clock
    tokens.close()


def test_a_client_in_use_is_confirmed_in_the_background_and_never_asks_the_registry_again(
    cache: tuple[TokenCache, _Registry, _Clock],
) -> None:
    tokens, registry, clock = cache
    principal = tokens.authenticate("mlw_7")
    assert registry.calls == 1
    clock.now += 0.4 * TTL
    assert tokens.cached("mlw_7") == principal
    assert tokens.refresh() == 0  # not due before half of ttl
    assert registry.rechecks == [(set(), {7})]  # only its last use is recorded
    clock.now += 0.2 * TTL
    assert tokens.refresh() == 1
    assert registry.rechecks[-1] == ({7}, set())  # due, but not used since the last sweep
    for _ in range(20):  # ten ttl of sweeps every quarter ttl, with a request now and then
        clock.now += TTL / 4
        assert tokens.cached("mlw_7") == principal
        tokens.refresh()
    assert registry.calls == 1  # every request answered from memory


def test_a_client_back_after_a_pause_within_keep_warm_is_answered_from_memory(
    cache: tuple[TokenCache, _Registry, _Clock],
) -> None:
    tokens, registry, clock = cache
    tokens.authenticate("mlw_3")
    for _ in range(12):  # three ttl without a request from this client: the sweeps keep the entry confirmed
        clock.now += TTL / 4
        tokens.refresh()
    assert tokens.cached("mlw_3") is not None
    assert registry.calls == 1


def test_an_entry_idle_past_keep_warm_is_forgotten(cache: tuple[TokenCache, _Registry, _Clock]) -> None:
    tokens, registry, clock = cache
    tokens.authenticate("mlw_3")
    while clock.now < 1000.0 + KEEP_WARM + TTL:
        clock.now += TTL / 4
        tokens.refresh()
    assert any(3 in due for due, _ in registry.rechecks)  # confirmed while warm
    checks = len(registry.rechecks)
    for _ in range(4):
        clock.now += TTL / 4
        tokens.refresh()
    assert len(registry.rechecks) == checks  # forgotten: no longer checked
    assert tokens.cached("mlw_3") is None
    tokens.authenticate("mlw_3")
    assert registry.calls == 2


def test_a_revoked_token_stops_working_at_the_next_sweep_and_within_the_ttl(
    cache: tuple[TokenCache, _Registry, _Clock],
) -> None:
    tokens, registry, clock = cache
    tokens.authenticate("mlw_5")
    tokens.authenticate("mlw_6")
    registry.revoked.add(5)
    clock.now += 0.6 * TTL
    assert tokens.cached("mlw_5") is not None  # within ttl, not yet re-checked
    tokens.refresh()
    assert tokens.cached("mlw_5") is None
    assert tokens.cached("mlw_6") is not None
    with pytest.raises(AuthError):
        tokens.authenticate("mlw_5")


def test_changed_roles_reach_the_cache_at_the_next_sweep(cache: tuple[TokenCache, _Registry, _Clock]) -> None:
    tokens, registry, clock = cache
    assert tokens.authenticate("mlw_1").roles == frozenset({Role.VIEWER})
    registry.roles = frozenset()
    clock.now += 0.5 * TTL
    tokens.refresh()
    cached = tokens.cached("mlw_1")
    assert cached is not None
    assert cached.roles == frozenset()


def test_an_entry_is_never_used_past_the_ttl_when_the_registry_cannot_be_read(
    cache: tuple[TokenCache, _Registry, _Clock],
) -> None:
    tokens, registry, clock = cache
    tokens.authenticate("mlw_2")
    registry.down = True
    clock.now += 0.75 * TTL
    assert tokens.cached("mlw_2") is not None
    with pytest.raises(DatabaseError):
        tokens.refresh()
    clock.now += 0.25 * TTL
    assert tokens.cached("mlw_2") is None  # lapsed at ttl: the next request asks the registry itself
    registry.down = False
    tokens.refresh()
    assert 2 in registry.rechecks[-1][1]  # the use seen while the registry was down is still recorded


def test_the_sweeper_thread_keeps_entries_confirmed_on_its_own() -> None:
    registry = _Registry()
    # ttl 2 s: sweeps every 0.5 s confirm the entry once it is 1 s old, so a sweep may be late by 0.5 s (a loaded
    # CI machine) before the entry would lapse.
    tokens = TokenCache(registry, 2.0, keep_warm=60)  # type: ignore[arg-type]
    try:
        principal = tokens.authenticate("mlw_9")
        deadline = time.monotonic() + 3.0  # past the ttl: only a confirmed entry is still answered
        while time.monotonic() < deadline:
            assert tokens.cached("mlw_9") == principal
            time.sleep(0.1)
        assert registry.calls == 1
        assert any(9 in due for due, _ in registry.rechecks)
    finally:
        tokens.close()
    assert not any(t.name == "mlwarden-token-refresh" for t in threading.enumerate())


def test_a_zero_ttl_caches_nothing() -> None:
    registry = _Registry()
    tokens = TokenCache(registry, 0.0)  # type: ignore[arg-type]
    tokens.authenticate("mlw_4")
    assert tokens.cached("mlw_4") is None
    tokens.authenticate("mlw_4")
    assert registry.calls == 2
    assert tokens._sweeper is None

"""Fixtures shared by the serve tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serve.test_shared_state import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throw-away ``redis-server`` on a loopback port of its own, stopped after the test."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()

"""Bulk fixtures: one local Ray for the whole session (2 CPUs), and a results store on SQLite and PostgreSQL.

Starting Ray costs several seconds, so it is started once. PostgreSQL comes from ``$MLWARDEN_TEST_POSTGRES_URL``
(``make test`` sets it, see tests/registry/conftest.py); without it the PostgreSQL variants skip locally and fail
under CI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlwarden.bulk.store import ResultStore
from tests.registry.conftest import _postgres_database  # one way to get a throw-away PostgreSQL database


@pytest.fixture(scope="session")
def ray_backend() -> Iterator[Any]:
    """A RayBackend on a local Ray with 2 CPUs, shared by every test of the session."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'mlwarden[bulk]')")
    from mlwarden.bulk.backends import RayBackend

    backend = RayBackend(workers=2)
    try:
        yield backend
    finally:
        import ray

        ray.shutdown()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty results database URL: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def store(store_url: str) -> Iterator[ResultStore]:
    """The results store at ``store_url`` (tables created)."""
    s = ResultStore.open(store_url)
    try:
        yield s
    finally:
        s.dispose()

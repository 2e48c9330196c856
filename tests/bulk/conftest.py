"""Bulk fixtures: one local Ray for the whole session (2 CPUs), and a results store on SQLite and PostgreSQL.

Starting Ray costs several seconds, so it is started once. PostgreSQL comes from ``$MLWARDEN_TEST_POSTGRES_URL``
(``make test`` sets it, see tests/registry/conftest.py); without it the PostgreSQL variants skip locally and fail
under CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mlwarden.bulk.store import ResultStore

PG_ENV = "MLWARDEN_TEST_POSTGRES_URL"


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


def _postgres_url() -> Iterator[str]:
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("CI"):
            pytest.fail(f"{PG_ENV} is not set under CI: PostgreSQL must be tested")
        pytest.skip(f"PostgreSQL not available (set {PG_ENV}; `make test` does)")
    name = f"mlw_bulk_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty results database URL: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
    else:
        yield from _postgres_url()


@pytest.fixture
def store(store_url: str) -> Iterator[ResultStore]:
    """The results store at ``store_url`` (tables created)."""
    s = ResultStore.open(store_url)
    try:
        yield s
    finally:
        s.dispose()

"""Database fixtures: every test that takes ``db_url`` or ``database`` runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``$MLWARDEN_TEST_POSTGRES_URL`` (``make test`` starts a throw-away server and sets it). Without
it the PostgreSQL variants are skipped locally, but fail under CI (``CI`` set), so CI can never silently test
SQLite only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mlwarden.registry.db import Database, open_database

PG_ENV = "MLWARDEN_TEST_POSTGRES_URL"


def _postgres_database() -> Iterator[str]:
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("CI"):
            pytest.fail(f"{PG_ENV} is not set under CI: PostgreSQL must be tested")
        pytest.skip(f"PostgreSQL not available (set {PG_ENV}; `make test` does)")
    name = f"mlw_{uuid.uuid4().hex[:12]}"
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
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty database: one SQLite file, or one new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """The database at ``db_url``, migrated to head."""
    db = open_database(db_url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database only (for tests about SQLite behaviour, e.g. a killed writer)."""
    db = open_database(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        yield db
    finally:
        db.dispose()

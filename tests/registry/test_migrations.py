"""Alembic migrations: the shipped migrations build exactly the models' schema, re-running them on a populated
database changes nothing, and a database at another revision is refused with an actionable message."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from mlwarden.registry import schema
from mlwarden.registry.audit import AuditEvent, AuditLog
from mlwarden.registry.db import Database, DatabaseError, open_database
from mlwarden.registry.migrate import current_revision, head_revision


def test_migrations_build_exactly_the_models_schema(database: Database) -> None:
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), schema.Base.metadata)
    assert differences == []
    assert current_revision(database) == head_revision()


def test_upgrading_a_populated_database_keeps_every_row(db_url: str) -> None:
    first = open_database(db_url)
    log = AuditLog(first)
    for n in range(5):
        log.append_now(AuditEvent("alice", "register", f"model:m:{n}", True))
    first.dispose()
    again = open_database(db_url)  # an existing database: the migration runs again and must be a no-op
    try:
        assert [r.subject for r in AuditLog(again).entries()] == [f"model:m:{n}" for n in range(5)]
        again.check()
    finally:
        again.dispose()


def test_a_database_at_another_revision_is_refused(db_url: str) -> None:
    database = open_database(db_url)
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    try:
        with pytest.raises(DatabaseError, match="schema revision ffff, this mlwarden needs"):
            database.check()
    finally:
        database.dispose()


def test_an_empty_database_asks_for_init(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="empty database.*mlwarden registry init"):
        open_database(f"sqlite:///{tmp_path / 'new.db'}", upgrade=False)


def test_two_processes_migrating_at_once_both_succeed(db_url: str) -> None:
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            open_database(db_url).dispose()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    database = open_database(db_url, upgrade=False)
    try:
        assert current_revision(database) == head_revision()
    finally:
        database.dispose()


def test_a_dead_server_is_one_clear_error() -> None:
    with pytest.raises(DatabaseError, match="is unavailable") as caught:
        open_database("postgresql+psycopg://nobody:secret@127.0.0.1:9/none", lock_timeout=1)
    assert "secret" not in str(caught.value)


def test_an_invalid_url_is_one_clear_error() -> None:
    with pytest.raises(DatabaseError, match="invalid database URL"):
        open_database("not a url")

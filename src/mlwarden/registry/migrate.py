"""Alembic, driven from code: the migrations ship inside the package, so no ``alembic.ini`` is needed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

if TYPE_CHECKING:
    from mlwarden.registry.db import Database

MIGRATIONS = Path(__file__).with_name("migrations")
#: Any constant: PostgreSQL advisory-lock key serialising concurrent migrations.
_PG_LOCK_KEY = 0x6D6C7764


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest revision this version of mlwarden knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if not (head is not None):
        raise RuntimeError("the package ships at least one migration")
    return head


def current_revision(database: Database) -> str | None:
    """The database's revision, or ``None`` for an empty database."""
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(database: Database, revision: str = "head") -> None:
    """Run the migrations up to ``revision`` in one transaction (two processes doing it at once queue)."""
    config = _config()
    with database.engine.begin() as connection:
        if database.dialect == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

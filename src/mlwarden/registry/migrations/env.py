"""Alembic environment: runs on the connection :mod:`mlwarden.registry.migrate` passes in."""

from __future__ import annotations

from alembic import context

from mlwarden.registry import schema  # noqa: F401 - registers every table on Base.metadata
from mlwarden.registry.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things in place
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()

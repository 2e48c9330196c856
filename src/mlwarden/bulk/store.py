"""The bulk results store: two SQLAlchemy tables in their own database (SQLite by default, PostgreSQL by URL).

It is not the registry: nothing migrates it (no Alembic), :meth:`ResultStore.open` runs ``metadata.create_all``,
which creates missing tables and leaves existing ones alone. One row per (source, digest): the same bytes at the
same place are scanned once; a changed file is a new row beside the old one. Every result is written in its own
transaction the moment it arrives, so a killed run loses at most the results still in flight.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from mlwarden.core.errors import UsageError

STATUSES = ("done", "failed", "timeout")

metadata = MetaData()

runs = Table(
    "bulk_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("state", String(16), nullable=False),  # running, finished, interrupted
    Column("sources", JSON, nullable=False),
    Column("modes", String(32), nullable=False),
    Column("backend", String(64), nullable=False),
    Column("workers", Integer, nullable=False),
    Column("planned", Integer, nullable=False, default=0),
    Column("skipped", Integer, nullable=False, default=0),
    Column("dispatched", Integer, nullable=False, default=0),  # items sent to a worker (a re-split batch counts again)
    Column("done", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("timeout", Integer, nullable=False, default=0),
)

results = Table(
    "bulk_results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False),  # the path or the URL (credentials removed)
    Column("digest", String(128), nullable=False),  # sha256 of the bytes; remote: sha256/etag pin or read digest
    Column("kind", String(8), nullable=False),  # local, remote
    Column("size", BigInteger),
    Column("mtime_ns", BigInteger),
    Column("status", String(8), nullable=False),  # done, failed, timeout
    Column("verdict", String(8), nullable=False),  # pass, fail, error
    Column("max_severity", String(16)),
    Column("rule_ids", JSON, nullable=False),
    Column("formats", JSON, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("error", Text),
    Column("result", JSON),  # the FileResult as the JSON report writes one file (report/jsonfmt.file_dict)
    Column("run_id", Integer, nullable=False),
    Column("scanned_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("source", "digest", name="uq_bulk_results_source_digest"),
)


class BulkError(UsageError):
    """Bad bulk input (URL, sources, options) or an unreachable results store."""


@dataclass(frozen=True, slots=True)
class Known:
    """What the store already holds for one source (the newest row), to decide whether to dispatch it again."""

    status: str
    digest: str
    size: int | None
    mtime_ns: int | None


def default_url(path: str) -> str:
    """``--results`` accepts a SQLAlchemy URL or a plain file name (a SQLite file)."""
    return path if "://" in path else f"sqlite:///{path}"


class ResultStore:
    """The engine of the results database and the few statements the runner and the report need."""

    def __init__(self, engine: Engine, url: str) -> None:
        """Wrap an engine; use :meth:`open`."""
        self.engine = engine
        self.url = url

    @classmethod
    def open(cls, url: str) -> ResultStore:
        """Connect to ``url`` (or a SQLite file name) and create the two tables if missing.

        Raises:
            BulkError: invalid URL, missing driver, or unreachable server.
        """
        url = default_url(url)
        try:
            parsed = make_url(url)
            kwargs: dict[str, Any] = {}
            if parsed.get_backend_name() == "sqlite":
                kwargs["connect_args"] = {"timeout": 30}
            else:
                kwargs["pool_pre_ping"] = True
            engine = create_engine(parsed, **kwargs)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise BulkError(f"--results: cannot use {url!r}: {exc}") from None
        if engine.dialect.name == "sqlite":
            _sqlite_setup(engine)
        try:
            metadata.create_all(engine)
        except OperationalError as exc:
            raise BulkError(f"--results: {parsed.render_as_string(hide_password=True)}: {exc.orig}") from None
        return cls(engine, url)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def known(self) -> dict[str, Known]:
        """The newest row of every source (a done row wins over a later failure of the same source)."""
        out: dict[str, Known] = {}
        query = select(results.c.source, results.c.status, results.c.digest, results.c.size, results.c.mtime_ns)
        with self.engine.connect() as conn:
            for source, status, digest, size, mtime_ns in conn.execute(query.order_by(results.c.id)):
                prev = out.get(source)
                if prev is not None and prev.status == "done" and status != "done":
                    continue
                out[source] = Known(status, digest, size, mtime_ns)
        return out

    def begin_run(self, sources: list[str], modes: tuple[str, ...], backend: str, workers: int) -> int:
        """Insert a ``running`` row in ``bulk_runs`` and return its id."""
        values = {
            "started_at": datetime.now(UTC),
            "state": "running",
            "sources": sources,
            "modes": ",".join(modes),
            "backend": backend,
            "workers": workers,
            "planned": 0,
            "skipped": 0,
            "dispatched": 0,
            "done": 0,
            "failed": 0,
            "timeout": 0,
        }
        with self._tx() as conn:
            key = conn.execute(insert(runs).values(**values)).inserted_primary_key
            if key is None:  # pragma: no cover - an INSERT into a table with a primary key always has one
                raise BulkError("the results store did not return the new run's id")
            return int(key[0])

    def plan(self, run_id: int, planned: int, skipped: int) -> None:
        """Record how many items the run will dispatch and how many the store already had."""
        with self._tx() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id).values(planned=planned, skipped=skipped))

    def dispatched(self, run_id: int, count: int) -> None:
        """Count ``count`` more items sent to workers (committed before they run)."""
        with self._tx() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id).values(dispatched=runs.c.dispatched + count))

    def record(self, row: dict[str, Any], run_id: int) -> None:
        """Write one result in its own transaction: upsert on (source, digest), drop stale failures of the source."""
        values = {**row, "run_id": run_id, "scanned_at": datetime.now(UTC)}
        status = str(row["status"])
        with self._tx() as conn:
            conn.execute(
                delete(results).where(
                    results.c.source == row["source"], results.c.digest != row["digest"], results.c.status != "done"
                )
            )
            found = conn.execute(
                select(results.c.id).where(results.c.source == row["source"], results.c.digest == row["digest"])
            ).scalar()
            if found is None:
                conn.execute(insert(results).values(**values))
            else:
                conn.execute(update(results).where(results.c.id == found).values(**values))
            counter = runs.c[status]
            conn.execute(update(runs).where(runs.c.id == run_id).values({counter: counter + 1}))

    def finish_run(self, run_id: int, state: str) -> None:
        """Mark the run ``finished`` or ``interrupted``."""
        with self._tx() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id).values(state=state, finished_at=datetime.now(UTC)))

    def rows(self) -> list[dict[str, Any]]:
        """Every result row as a dict (without the full result JSON unless asked by :meth:`result`)."""
        cols = [c for c in results.c if c.name != "result"]
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(*cols).order_by(results.c.id))]

    def result(self, source: str) -> list[dict[str, Any]]:
        """The stored FileResult JSON of every row of ``source``."""
        with self.engine.connect() as conn:
            found = conn.execute(select(results.c.result).where(results.c.source == source).order_by(results.c.id))
            return [r if isinstance(r, dict) else json.loads(r) for (r,) in found]

    def run_rows(self) -> list[dict[str, Any]]:
        """Every row of ``bulk_runs``, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(runs).order_by(runs.c.id))]

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # a committed row survives the process being killed
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

"""The registry's database: one SQLAlchemy engine, short transactions, Alembic-managed schema.

SQLite (a file under ``~/.mlwarden``) is the zero-set-up default; PostgreSQL is chosen by URL for production.
Every write goes through :meth:`Database.transaction`, so a refused or failed operation leaves no partial state.

SQLite specifics, and why:
* WAL journal: readers never block the writer, and a committed transaction survives the process being killed.
* ``BEGIN IMMEDIATE`` for every transaction: the write lock is taken up front, so two writers queue on the busy
  timeout instead of one failing half-way with "database is locked" when it upgrades a read lock.
* ``foreign_keys=ON``: SQLite leaves them off by default.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from mlwarden.core.errors import MlwardenError

#: Environment variable naming the database URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
URL_ENV = "MLWARDEN_DB_URL"
#: Environment variable naming mlwarden's home (default ``~/.mlwarden``): the SQLite file and blob store live there.
HOME_ENV = "MLWARDEN_HOME"
#: Seconds a writer waits for another writer's lock before giving up with :class:`DatabaseError`.
DEFAULT_LOCK_TIMEOUT = 10.0

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every registry table (one metadata, so Alembic sees the whole schema)."""

    metadata = MetaData(naming_convention=_NAMING)


class DatabaseError(MlwardenError):
    """The database cannot be reached, is locked for too long, or is not at the schema this version expects."""


def home() -> Path:
    """Return mlwarden's home directory (``$MLWARDEN_HOME`` or ``~/.mlwarden``); not created here."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".mlwarden")


def default_url() -> str:
    """``$MLWARDEN_DB_URL``, else a SQLite file in :func:`home`."""
    return os.environ.get(URL_ENV) or f"sqlite:///{home() / 'registry.db'}"


def describe(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


class Database:
    """An engine plus a session factory; the only way the registry and the audit log touch SQL."""

    def __init__(self, url: str, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, echo: bool = False) -> None:
        """Create the engine (lazily connects; :meth:`upgrade` or :meth:`check` make the first connection)."""
        self.url = url
        self.lock_timeout = lock_timeout
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise DatabaseError(f"invalid database URL: {url!r}") from None
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
                from mlwarden.registry._fs import private_file

                try:  # 0600 before SQLite opens it: its WAL and SHM files take the database file's mode
                    private_file(Path(parsed.database).expanduser())
                except OSError as exc:
                    raise DatabaseError(f"cannot create {describe(url)}: {exc.strerror or exc}") from None
            kwargs["connect_args"] = {"timeout": lock_timeout}
        elif self.dialect == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": max(1, int(lock_timeout))}
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(parsed, **kwargs)
        except (NoSuchModuleError, ImportError) as exc:
            raise DatabaseError(f"no driver for {describe(url)}: {exc}") from None
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine, lock_timeout)
        elif self.dialect == "postgresql":
            _postgres_setup(self.engine, lock_timeout)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({describe(self.url)!r})"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on normal exit, rolled back on any exception.

        Driver errors (server down, lock timeout) become :class:`DatabaseError` with the URL (password hidden).
        """
        session = self._sessions()
        try:
            with _translated(self.url):
                yield session
                session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only (rolled back at the end, so nothing it did can persist)."""
        session = self._sessions()
        try:
            with _translated(self.url):
                yield session
        finally:
            session.rollback()
            session.close()

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` with Alembic (idempotent; creates a new database)."""
        from mlwarden.registry.migrate import upgrade

        with _translated(self.url):
            upgrade(self, revision)

    def check(self) -> None:
        """Raise :class:`DatabaseError` unless the database is reachable and at this version's schema head."""
        from mlwarden.registry.migrate import current_revision, head_revision

        with _translated(self.url):
            current, head = current_revision(self), head_revision()
        if current != head:
            found = "an empty database" if current is None else f"schema revision {current}"
            raise DatabaseError(
                f"{describe(self.url)} has {found}, this mlwarden needs {head}: run `mlwarden registry init`"
            )

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def open_database(
    url: str | None = None, *, upgrade: bool = True, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> Database:
    """Open the registry database at ``url`` (default :func:`default_url`).

    Args:
        url: SQLAlchemy URL; ``None`` for ``$MLWARDEN_DB_URL`` or the SQLite file in mlwarden's home.
        upgrade: run the Alembic migrations up to head first (the default); otherwise only check the revision.
        lock_timeout: seconds to wait for another writer's lock.

    Raises:
        DatabaseError: bad URL, unreachable server, or (with ``upgrade=False``) a schema that is not at head.
    """
    database = Database(url or default_url(), lock_timeout=lock_timeout)
    if upgrade:
        database.upgrade()
    else:
        database.check()
    return database


@contextmanager
def _translated(url: str) -> Iterator[None]:
    """Turn driver exceptions into one-line :class:`DatabaseError` messages."""
    try:
        yield
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        if "locked" in reason or "lock timeout" in reason or "could not obtain lock" in reason:
            raise DatabaseError(f"{describe(url)} is locked by another writer ({reason}); try again") from exc
        raise DatabaseError(f"database {describe(url)} is unavailable: {reason}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise DatabaseError(f"lost the connection to {describe(url)}: {exc.orig}") from exc
        raise


def _sqlite_setup(engine: Engine, lock_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against a killed process
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _postgres_setup(engine: Engine, lock_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
        dbapi_connection.commit()


def ping(database: Database) -> None:
    """Run ``SELECT 1`` (raises :class:`DatabaseError` when the server is down)."""
    with database.reading() as session:
        session.execute(text("SELECT 1"))

"""The registry's tables (SQLAlchemy 2 typed ORM on the shared :class:`~mlwarden.registry.db.Base`).

Rows are the service's private storage; callers see the frozen values of :mod:`mlwarden.registry.values`.
Artifact bytes never live in the database: files are content-addressed blobs on disk
(:mod:`mlwarden.registry.blobs`) and the rows hold their SHA-256 digests.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from mlwarden.registry.db import Base

__all__ = [
    "AliasEventRow",
    "AliasRow",
    "AttachmentRow",
    "ModelRow",
    "SuppressionRow",
    "TokenRow",
    "UserRow",
    "VersionFileRow",
    "VersionRow",
    "utcnow",
]

#: Longest model, alias or user name (they appear in paths and URLs).
NAME_LENGTH = 100


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (what every timestamp column stores)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the backend keeps (SQLite keeps none)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UserRow(Base):
    """A person or service account; ``roles`` is a sorted list of role names.

    Names are unique case-insensitively (``Alice`` and ``alice`` would read as one person in every log).
    """

    __tablename__ = "users"
    __table_args__ = (Index("ix_users_username_casefold", func.lower(text("username")), unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    roles: Mapped[list[str]] = mapped_column(JSON)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))

    tokens: Mapped[list[TokenRow]] = relationship(back_populates="user")


class TokenRow(Base):
    """An API token: only a short public lookup prefix and the SHA-256 of the whole token are stored."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    lookup: Mapped[str] = mapped_column(String(16), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: None: the user's full roles; "model:NAME" or "model:NAME:VERSION": only that model or version.
    scope: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)

    user: Mapped[UserRow] = relationship(back_populates="tokens")


class ModelRow(Base):
    """A named model; its versions are numbered 1, 2, 3... in registration order."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))


class VersionRow(Base):
    """One registered version of a model: its digest, state and who submitted it."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    digest: Mapped[str] = mapped_column(String(80))
    artifact_name: Mapped[str] = mapped_column(String(255))
    is_file: Mapped[bool] = mapped_column(Boolean)
    total_size: Mapped[int] = mapped_column(BigInteger)
    framework: Mapped[str | None] = mapped_column(String(100), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    submitted_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The evidence the last approval froze, ``[{"id", "kind", "digest"}, ...]``; None before any approval.
    evidence: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)

    model: Mapped[ModelRow] = relationship()
    files: Mapped[list[VersionFileRow]] = relationship(order_by="VersionFileRow.id")
    attachments: Mapped[list[AttachmentRow]] = relationship(order_by="AttachmentRow.id")


class VersionFileRow(Base):
    """One file of a version's artifact: its path inside the model and the digest of the blob holding it."""

    __tablename__ = "version_files"
    __table_args__ = (UniqueConstraint("version_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class AttachmentRow(Base):
    """Evidence attached to a version (signature, dataset manifest, training record, scan or test report, BOM)."""

    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    filename: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AliasRow(Base):
    """A deployment alias (``production``) of one model, pointing at one of its versions (none once retired)."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"), nullable=True, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(NAME_LENGTH))

    version: Mapped[VersionRow | None] = relationship()


class AliasEventRow(Base):
    """Every move of an alias, oldest first: what rollback walks back through."""

    __tablename__ = "alias_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias_id: Mapped[int] = mapped_column(ForeignKey("aliases.id"), index=True)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"), nullable=True)
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"), nullable=True)
    action: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SuppressionRow(Base):
    """A reviewed acceptance of one rule's findings on one version's bytes (``digest``), until ``expires``.

    Written by an approver or admin who did not submit the version; the approve gate then ignores that rule's
    findings in the registry's scan of exactly these bytes until the expiry date (a day, UTC).
    """

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    rule_id: Mapped[str] = mapped_column(String(40))
    digest: Mapped[str] = mapped_column(String(80))
    reason: Mapped[str] = mapped_column(Text)
    reviewer: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires: Mapped[date] = mapped_column(Date)

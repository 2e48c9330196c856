"""The audit log's two tables: entries (one row per event) and signed checkpoints (tree heads).

Entries keep every field in its own, queryable column (actor, action, subject and time are indexed) plus the leaf
hash computed when the row was written. ``digests`` and ``details`` hold canonical JSON *text*: it is exactly what was
hashed, and both SQLite (``json_extract``) and PostgreSQL (``details::jsonb``) can still query it.

Checkpoints store the signed fields and the signature; the signed body is rebuilt from the columns, so editing any
of them breaks the signature. ``frontier`` (the roots of the tree's complete subtrees at that size) lets the next
checkpoint hash only the entries since; it is not signed but is checked against the signed root before use.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mlwarden.registry.audit.events import LIMITS
from mlwarden.registry.db import Base

_SEQ = BigInteger().with_variant(Integer, "sqlite")


class AuditEntryRow(Base):
    """One audit event, at position ``seq`` (0-based, gapless) of the Merkle tree."""

    __tablename__ = "audit_entries"

    # INTEGER on SQLite makes seq the rowid: rows are stored in seq order, so replaying a range is a sequential read.
    seq: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=False)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(LIMITS["actor"]), index=True)
    action: Mapped[str] = mapped_column(String(LIMITS["action"]), index=True)
    subject: Mapped[str] = mapped_column(String(LIMITS["subject"]), index=True)
    allowed: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text, default="")
    from_state: Mapped[str | None] = mapped_column(String(LIMITS["from_state"]))
    to_state: Mapped[str | None] = mapped_column(String(LIMITS["to_state"]))
    digests: Mapped[str] = mapped_column(Text, default="{}")
    details: Mapped[str] = mapped_column(Text, default="{}")
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpointRow(Base):
    """A signed tree head: the log had ``tree_size`` entries whose Merkle root was ``root_hash``."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tree_size: Mapped[int] = mapped_column(BigInteger, index=True)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary(128))
    frontier: Mapped[bytes] = mapped_column(LargeBinary)

"""The append-only audit log: append events inside the caller's transaction, read them, sign checkpoints, prove.

Why ``append`` takes the caller's session: the event must commit or roll back with the state change it records, so
the log never claims something that did not happen. A refusal is recorded with :meth:`AuditLog.append_now`, in its
own transaction, after the refused change was rolled back.

Sequence numbers are gapless and unique under concurrent writers: SQLite transactions start with ``BEGIN IMMEDIATE``
(one writer at a time), and on PostgreSQL ``append`` takes a transaction-scoped advisory lock before reading the
last ``seq``; the lock is released at commit or rollback, so audited transactions are serialised (a deliberate price:
the log is one ordered history). The primary key on ``seq`` is a second guard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.orm import Session

from mlwarden.registry.audit.checkpoint import Checkpoint, CheckpointSigner, checkpoint_body
from mlwarden.registry.audit.errors import AuditError, ProofError, TamperedError
from mlwarden.registry.audit.events import (
    DEFAULT_MAX_DETAILS_BYTES,
    AuditEvent,
    AuditRecord,
    entry_bytes,
    format_timestamp,
    normalise,
    now,
)
from mlwarden.registry.audit.merkle import HASH_SIZE, MerkleTree, TreeBuilder, leaf_hash
from mlwarden.registry.audit.replay import BATCH, ENTRY_COLUMNS, canonical_time, leaf_from_row, stream_entries
from mlwarden.registry.audit.tables import AuditCheckpointRow, AuditEntryRow
from mlwarden.registry.audit.verify import VerificationReport, load_checkpoints, verify_log
from mlwarden.registry.db import Database

#: PostgreSQL advisory-lock key serialising appends ("mlwa"; the migration lock uses another).
PG_LOCK_KEY = 0x6D6C7761
#: Sign a checkpoint automatically whenever the log crosses a multiple of this many entries (with a signer).
DEFAULT_CHECKPOINT_EVERY = 1000
_ENTRIES: Table = AuditEntryRow.__table__  # type: ignore[assignment]


class AuditLog:
    """The tamper-evident log of every registry action (RFC 6962 Merkle tree + signed checkpoints)."""

    def __init__(
        self,
        database: Database,
        signer: CheckpointSigner | None = None,
        *,
        checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY,
        max_details_bytes: int = DEFAULT_MAX_DETAILS_BYTES,
    ) -> None:
        """Use the log in ``database``.

        Args:
            database: the registry database (migrated).
            signer: key for checkpoints; without one, :meth:`checkpoint` is refused and none are made automatically.
            checkpoint_every: with a signer, sign a checkpoint in the appending transaction each time the log
                crosses a multiple of this many entries (None: only on request). Smaller narrows down a rewrite.
            max_details_bytes: cap on an event's text (reason, digests and details), to keep rows bounded.
        """
        if checkpoint_every is not None and checkpoint_every < 1:
            raise AuditError("checkpoint_every must be at least 1 (or None)")
        self.database = database
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.max_details_bytes = max_details_bytes

    def __repr__(self) -> str:
        return f"AuditLog({self.database!r}, signer={self.signer!r})"

    # -- writing ---------------------------------------------------------------------------------------------------

    def _lock(self, session: Session) -> int:
        """Serialise writers (see the module docstring) and return the next ``seq``."""
        if self.database.dialect == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
        last = session.execute(select(func.max(AuditEntryRow.seq))).scalar()
        return 0 if last is None else int(last) + 1

    def append(self, session: Session, event: AuditEvent) -> AuditRecord:
        """Append ``event`` inside the caller's transaction (it commits or rolls back with the caller's change).

        Raises:
            AuditError: the event is invalid (nothing is written).
        """
        return self.append_many(session, [event])[0]

    def append_many(self, session: Session, events: Sequence[AuditEvent]) -> list[AuditRecord]:
        """Append several events in the caller's transaction with one lock and one multi-row insert.

        Every event is validated before anything is written, so a bad one leaves the log unchanged.
        """
        prepared = [(event, *normalise(event, self.max_details_bytes)) for event in events]
        if not prepared:
            return []
        first = self._lock(session)
        moment = now()
        stamp = format_timestamp(moment)
        records: list[AuditRecord] = []
        for offset, (e, digests_json, details_json) in enumerate(prepared):
            seq = first + offset
            entry = entry_bytes(
                seq, stamp, e.actor, e.action, e.subject, e.allowed, e.reason, e.from_state, e.to_state,
                digests_json, details_json,
            )  # fmt: skip
            records.append(
                AuditRecord(
                    seq, moment, e.actor, e.action, e.subject, e.allowed, e.reason, e.from_state, e.to_state,
                    digests_json, details_json, leaf_hash(entry),
                )
            )  # fmt: skip
        session.execute(insert(_ENTRIES), [_row(r) for r in records])
        every = self.checkpoint_every
        if self.signer is not None and every is not None and first // every != (first + len(records)) // every:
            self._checkpoint(session, first + len(records))
        return records

    def append_now(self, event: AuditEvent) -> AuditRecord:
        """Append ``event`` in a transaction of its own (for refusals, recorded after the change rolled back)."""
        if self.database.dialect == "sqlite":
            fast = self._append_now_sqlite(event)
            if fast is not None:
                return fast
        with self.database.transaction() as session:
            return self.append(session, event)

    def _append_now_sqlite(self, event: AuditEvent) -> AuditRecord | None:
        """:meth:`append_now` on the driver connection: the same row, without the ORM's per-transaction cost.

        Values go through the column types' own bind processors, so the stored row is byte-for-byte what the
        ORM path writes. Returns ``None`` (nothing written) when this append must also sign a checkpoint; the
        caller then takes the ordinary path.
        """
        import sqlite3

        from mlwarden.registry.db import DatabaseError, describe

        digests_json, details_json = normalise(event, self.max_details_bytes)
        raw = self.database.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
                last = cursor.execute("SELECT max(seq) FROM audit_entries").fetchone()[0]
                seq = 0 if last is None else int(last) + 1
                every = self.checkpoint_every
                if self.signer is not None and every is not None and seq // every != (seq + 1) // every:
                    cursor.execute("ROLLBACK")
                    return None
                moment = now()
                e = event
                entry = entry_bytes(
                    seq, format_timestamp(moment), e.actor, e.action, e.subject, e.allowed, e.reason,
                    e.from_state, e.to_state, digests_json, details_json,
                )  # fmt: skip
                record = AuditRecord(
                    seq, moment, e.actor, e.action, e.subject, e.allowed, e.reason, e.from_state, e.to_state,
                    digests_json, details_json, leaf_hash(entry),
                )  # fmt: skip
                row = _row(record)
                columns, values = list(row), [_bind(name, value, self.database) for name, value in row.items()]
                cursor.execute(
                    f"INSERT INTO audit_entries ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",  # noqa: S608 - column names are the code's own
                    values,
                )
                cursor.execute("COMMIT")
                return record
            except BaseException:
                if raw.driver_connection is not None and raw.driver_connection.in_transaction:
                    cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()
        except sqlite3.OperationalError as exc:
            reason = str(exc)
            if "locked" in reason:
                raise DatabaseError(f"{describe(self.database.url)} is locked by another writer ({reason})") from exc
            raise DatabaseError(f"database {describe(self.database.url)} is unavailable: {reason}") from exc
        finally:
            raw.close()

    def checkpoint(self) -> Checkpoint:
        """Sign the current tree head in a transaction of its own.

        Raises:
            AuditError: no signer.
            TamperedError: an entry no longer matches its leaf hash, or the last checkpoint does not verify; the log
                must be investigated (``mlwarden audit verify``) before anything more is signed.
        """
        with self.database.transaction() as session:
            return self._checkpoint(session, self._lock(session))

    def _checkpoint(self, session: Session, size: int) -> Checkpoint:
        """Sign the head of the tree of ``size`` entries, hashing only those since the last checkpoint."""
        signer = self.signer
        if signer is None:
            raise AuditError("no checkpoint signer configured (create one with `mlwarden audit checkpoint`)")
        c = AuditCheckpointRow
        last = session.execute(select(c).order_by(c.tree_size.desc(), c.id.desc()).limit(1)).scalar_one_or_none()
        if last is not None and size < last.tree_size:
            raise TamperedError(f"the log has {size} entries but was signed at size {last.tree_size}; refusing to sign")
        builder = self._resume(last, signer)
        query = select(*ENTRY_COLUMNS).where(AuditEntryRow.seq >= builder.size).order_by(AuditEntryRow.seq)
        for row in session.execute(query, execution_options={"yield_per": BATCH}):
            if row[0] != builder.size:
                raise TamperedError(f"audit entry {builder.size} is missing; refusing to sign (run `audit verify`)")
            leaf = leaf_from_row(row)
            if leaf != row[11]:
                raise TamperedError(f"audit entry {row[0]} was changed after it was written; refusing to sign")
            builder.append(leaf)
        if builder.size != size:
            raise TamperedError(f"audit entry {builder.size} is missing; refusing to sign (run `audit verify`)")
        moment = now()
        root = builder.root()
        signature = signer.sign(checkpoint_body(builder.size, root, moment, signer.key_id))
        session.add(
            c(
                tree_size=builder.size,
                root_hash=root,
                timestamp=moment,
                key_id=signer.key_id,
                signature=signature,
                frontier=b"".join(builder.frontier),
            )
        )
        session.flush()
        return Checkpoint(builder.size, root, moment, signer.key_id, signature)

    @staticmethod
    def _resume(last: AuditCheckpointRow | None, signer: CheckpointSigner) -> TreeBuilder:
        """The tree at the last checkpoint, if it is ours and its frontier matches its signed root; else empty."""
        if last is None or last.key_id != signer.key_id:
            return TreeBuilder()  # first checkpoint, or a new key: rebuild from the first entry
        cp = Checkpoint(last.tree_size, last.root_hash, last.timestamp, last.key_id, last.signature)
        if not cp.signature_valid(signer.public_key):
            raise TamperedError(f"the checkpoint at size {cp.tree_size} does not verify; refusing to sign")
        raw = last.frontier or b""
        try:
            builder = TreeBuilder(cp.tree_size, [raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE)])
        except ProofError:
            builder = None
        if builder is None or builder.root() != cp.root_hash:
            raise TamperedError(f"the stored frontier of the checkpoint at size {cp.tree_size} does not match its root")
        return builder

    # -- reading ---------------------------------------------------------------------------------------------------

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[AuditRecord]:
        """Records with ``start <= seq < stop``, in order (streamed)."""
        for row in stream_entries(self.database, start, stop):
            moment = datetime.fromisoformat(canonical_time(row[1]))
            seq, _, actor, action, subject, allowed, reason, from_state, to_state, digests, details, leaf = row
            yield AuditRecord(
                seq, moment, actor, action, subject, bool(allowed), reason, from_state, to_state, digests, details, leaf
            )

    def size(self) -> int:
        """Number of entries (one more than the last ``seq``)."""
        with self.database.reading() as session:
            last = session.execute(select(func.max(AuditEntryRow.seq))).scalar()
        return 0 if last is None else int(last) + 1

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint, by tree size."""
        return load_checkpoints(self.database)

    def latest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint with the largest tree size, if any."""
        found = self.checkpoints()
        return found[-1] if found else None

    def verify(self, public_key: Ed25519PublicKey, *, full: bool = True, jobs: int | None = None) -> VerificationReport:
        """Recompute everything and check every checkpoint (see :func:`~mlwarden.registry.audit.verify.verify_log`)."""
        return verify_log(self.database, public_key, full=full, jobs=jobs)

    # -- proofs ----------------------------------------------------------------------------------------------------

    def _tree(self, size: int) -> MerkleTree:
        with self.database.reading() as session:
            query = select(AuditEntryRow.leaf_hash).where(AuditEntryRow.seq < size).order_by(AuditEntryRow.seq)
            leaves = list(session.execute(query, execution_options={"yield_per": BATCH}).scalars())
        if len(leaves) != size:
            raise AuditError(f"the log has {len(leaves)} entries below {size}; cannot prove at tree size {size}")
        return MerkleTree(leaves)

    def inclusion_proof(self, seq: int, tree_size: int | None = None) -> list[bytes]:
        """Audit path of entry ``seq`` in the tree of ``tree_size`` entries (default: the whole log).

        Raises:
            AuditError: ``seq`` or ``tree_size`` is out of range.
        """
        size = self.size() if tree_size is None else tree_size
        if not 0 <= seq < size:
            raise AuditError(f"entry {seq} is not in a tree of {size} entries")
        return self._tree(size).inclusion_proof(seq, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Proof that the tree of ``new_size`` entries extends the one of ``old_size`` (RFC 6962 §2.1.2).

        Raises:
            AuditError: sizes out of order or beyond the log.
        """
        if not 0 < old_size <= new_size:
            raise AuditError(f"no consistency proof from size {old_size} to size {new_size} (need 0 < old <= new)")
        return self._tree(new_size).consistency_proof(old_size, new_size)


_BINDERS: dict[tuple[int, str], Any] = {}


def _bind(column: str, value: Any, database: Database) -> Any:
    """``value`` as the column's type stores it on this database (cached bind processor per engine)."""
    key = (id(database.engine), column)
    if key not in _BINDERS:
        _BINDERS[key] = _ENTRIES.c[column].type.bind_processor(database.engine.dialect)
    processor = _BINDERS[key]
    return value if processor is None else processor(value)


def _row(record: AuditRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "timestamp": record.timestamp,
        "actor": record.actor,
        "action": record.action,
        "subject": record.subject,
        "allowed": record.allowed,
        "reason": record.reason,
        "from_state": record.from_state,
        "to_state": record.to_state,
        "digests": record.digests_json,
        "details": record.details_json,
        "leaf_hash": record.leaf_hash,
    }

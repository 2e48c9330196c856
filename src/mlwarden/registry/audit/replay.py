"""Replay the log: recompute leaves from the stored columns and the tree heads at given sizes, over seq ranges.

Why ranges: verifying a million entries is dominated by fetching rows and re-encoding them (about 9 µs each in one
process), so :func:`replay` splits the log into ranges that start on multiples of a power of two and replays them in
worker processes. A range aligned that way is a complete subtree (or the left part of one) of the whole tree, so
each worker needs no leaf outside its range: it returns the frontier of its range at every checkpoint size inside it,
and the parent joins them with the frontiers of the ranges before (O(log n) hashes per checkpoint). A log with gaps in
``seq`` cannot be split that way and is replayed in one process, where the gaps are reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from json.encoder import encode_basestring as _enc
from multiprocessing import get_all_start_methods, get_context
from typing import Any

from sqlalchemy import func, select

from mlwarden.registry.audit.events import ENTRY_VERSION
from mlwarden.registry.audit.merkle import TreeBuilder
from mlwarden.registry.audit.tables import AuditEntryRow
from mlwarden.registry.db import Database

#: Rows fetched per round trip while streaming (a server-side cursor on PostgreSQL).
BATCH = 20_000
_E = AuditEntryRow
ENTRY_COLUMNS = (
    _E.seq,
    _E.timestamp,
    _E.actor,
    _E.action,
    _E.subject,
    _E.allowed,
    _E.reason,
    _E.from_state,
    _E.to_state,
    _E.digests,
    _E.details,
    _E.leaf_hash,
)


def canonical_time(value: datetime | str) -> str:
    """RFC 3339 UTC text of a stored timestamp: a datetime (PostgreSQL, SQLAlchemy) or SQLite's raw text.

    SQLAlchemy stores SQLite datetimes as ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC here); that form is rewritten directly,
    anything else is parsed, so a reformatted but equal time is read as that time, exactly as SQLAlchemy would.
    """
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " " and value[19] == ".":
            return f"{value[:10]}T{value[11:]}Z"
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value  # not a time at all: hashes as is, so the leaf differs and the row is named
        value = parsed
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


def leaf_from_row(row: Any) -> bytes:
    """The Merkle leaf of an entry, recomputed from its columns (in :data:`ENTRY_COLUMNS` order).

    This is :func:`~mlwarden.registry.audit.events.entry_bytes` plus the leaf hash, inlined: verification runs it a
    million times, and the inlined form is about twice as fast (a test checks that both agree).
    """
    seq, ts, actor, action, subject, allowed, reason, from_state, to_state, digests, details = row[:11]
    if type(ts) is str and len(ts) == 26 and ts[10] == " ":
        stamp = f"{ts[:10]}T{ts[11:]}Z"
    else:
        stamp = canonical_time(ts)
    entry = (
        f'{{"action":{_enc(action)},"actor":{_enc(actor)},"allowed":{"true" if allowed else "false"},'
        f'"details":{details},"digests":{digests},'
        f'"from_state":{"null" if from_state is None else _enc(from_state)},"reason":{_enc(reason)},'
        f'"seq":{seq},"subject":{_enc(subject)},"timestamp":"{stamp}",'
        f'"to_state":{"null" if to_state is None else _enc(to_state)},"v":{ENTRY_VERSION}}}'
    )
    return sha256(b"\x00" + entry.encode()).digest()


def stream_entries(database: Database, start: int = 0, stop: int | None = None) -> Iterator[tuple[Any, ...]]:
    """Entry rows (tuples in :data:`ENTRY_COLUMNS` order) with ``start <= seq < stop`` in ``seq`` order, in batches.

    The read is one transaction, so it sees one snapshot even while others append. It runs on the raw driver
    connection: the driver's plain tuples are two to three times faster than SQLAlchemy's row processing at a million
    rows. On SQLite the transaction is *deferred* (the registry's sessions begin with ``BEGIN IMMEDIATE``, the write
    lock, which would stall every writer for the whole replay) and the timestamp comes back as its stored text; on
    PostgreSQL a named (server-side) cursor streams the rows instead of loading them all.
    """
    query = select(*ENTRY_COLUMNS).where(_E.seq >= start).order_by(_E.seq)
    if stop is not None:
        query = query.where(_E.seq < stop)
    sql = str(query.compile(dialect=database.engine.dialect, compile_kwargs={"literal_binds": True}))
    raw = database.engine.raw_connection()
    try:
        sqlite = database.dialect == "sqlite"
        cursor = raw.cursor() if sqlite else raw.driver_connection.cursor(name=f"mlwarden_audit_{os.getpid()}")  # type: ignore[union-attr]
        try:
            if sqlite:
                cursor.execute("BEGIN")
            cursor.execute(sql)
            while rows := cursor.fetchmany(BATCH):
                yield from rows
        finally:
            cursor.close()
            raw.rollback()
    finally:
        raw.close()


#: Below this many entries, worker processes cost more than they save.
PARALLEL_MIN = 200_000


@dataclass(frozen=True)
class Damage:
    """A row problem found while replaying: ``kind`` is ``edited`` or ``gap``."""

    kind: str
    seq: int
    message: str


@dataclass(frozen=True)
class RangeReplay:
    """The replay of entries ``[start, start + count)``: local frontiers at checkpoint sizes, and what was wrong.

    ``frontiers[size]`` is the frontier of the leaves from ``start`` up to global tree size ``size``.
    """

    start: int
    count: int
    end: tuple[bytes, ...] = ()
    frontiers: dict[int, tuple[bytes, ...]] = field(default_factory=dict)
    damage: tuple[Damage, ...] = ()


def replay_range(
    database: Database, start: int, stop: int | None, sizes: Sequence[int], full: bool = True
) -> RangeReplay:
    """Replay entries ``start <= seq < stop`` and record the frontier at each size in ``sizes`` (ascending).

    Leaves take consecutive positions from ``start`` whatever their ``seq``, so a gap shifts every later leaf and
    the signed roots after it no longer match — which is right: the log lost an entry.
    """
    wanted = [s for s in sizes if s > start and (stop is None or s <= stop)]
    frontiers: dict[int, tuple[bytes, ...]] = {}
    damage: list[Damage] = []
    builder = TreeBuilder()
    next_size = wanted.pop(0) if wanted else -1
    position = expected = start
    for row in stream_entries(database, start, stop):
        seq = row[0]
        if seq != expected:
            missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            damage.append(Damage("gap", expected, f"entry {missing} is missing (rows deleted)"))
        expected = seq + 1
        leaf = row[11]
        if full:
            recomputed = leaf_from_row(row)
            if recomputed != leaf:
                damage.append(
                    Damage(
                        "edited",
                        seq,
                        f"entry {seq} ({row[3]} {row[4]} by {row[2]}) was changed after it was written: "
                        "its columns no longer match its leaf hash",
                    )
                )
            leaf = recomputed
        builder.append(leaf)
        position += 1
        if position == next_size:
            frontiers[position] = builder.frontier
            next_size = wanted.pop(0) if wanted else -1
    return RangeReplay(start, builder.size, builder.frontier, frontiers, tuple(damage))


def _worker(url: str, start: int, stop: int, sizes: Sequence[int], full: bool) -> RangeReplay:
    database = Database(url)
    try:
        return replay_range(database, start, stop, sizes, full)
    finally:
        database.dispose()


def extent(database: Database) -> tuple[int, int | None, int | None]:
    """``(row count, smallest seq, largest seq)``."""
    e = AuditEntryRow
    with database.reading() as session:
        count, low, high = session.execute(select(func.count(), func.min(e.seq), func.max(e.seq))).one()
    return int(count), low, high


def replay(
    database: Database, sizes: Sequence[int], *, full: bool = True, jobs: int | None = None
) -> list[RangeReplay]:
    """Replay the whole log, in ``jobs`` processes (default: the CPU count) when it is big and gapless.

    Returns the ranges in order; for a split log every range but the last is a complete subtree of the tree.
    """
    count, low, high = extent(database)
    jobs = max(1, jobs if jobs is not None else (os.cpu_count() or 1))
    gapless = count > 0 and low == 0 and high == count - 1
    in_memory = database.dialect == "sqlite" and database.engine.url.database in (None, "", ":memory:")
    if jobs == 1 or count < PARALLEL_MIN or not gapless or in_memory:
        return [replay_range(database, 0, None, sizes, full)]
    span = 1 << max(0, (-(-count // jobs) - 1).bit_length())  # a power of two >= count / jobs
    bounds = [(start, min(start + span, count)) for start in range(0, count, span)]
    url = database.engine.url.render_as_string(hide_password=False)
    # fork where there is one: it needs no ``if __name__ == "__main__"`` guard in the caller's script, and each
    # worker opens its own engine (the parent's pooled connections are never touched in the child).
    context = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
    try:
        with ProcessPoolExecutor(len(bounds), mp_context=context) as pool:
            futures = [pool.submit(_worker, url, a, b, list(sizes), full) for a, b in bounds]
            parts = [f.result() for f in futures]
    except (BrokenProcessPool, OSError):  # no processes here (sandbox, limits): one process still verifies
        return [replay_range(database, 0, None, sizes, full)]
    # A range that came back short (rows deleted meanwhile) breaks the alignment: replay in one process instead.
    if any(part.count != b - a for part, (a, b) in zip(parts, bounds, strict=True)):
        return [replay_range(database, 0, None, sizes, full)]
    return parts

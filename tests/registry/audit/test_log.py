"""Appending, reading, checkpoints and proofs of the audit log, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from mlwarden.registry.audit import (
    AuditError,
    AuditEvent,
    AuditLog,
    CheckpointSigner,
    TamperedError,
)
from mlwarden.registry.audit.events import canonical_json, entry_bytes, format_timestamp
from mlwarden.registry.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from mlwarden.registry.audit.replay import leaf_from_row
from mlwarden.registry.db import Database

DIGEST = "sha256:" + "ab" * 32


def event(i: int = 0, **changes: object) -> AuditEvent:
    fields: dict[str, object] = {
        "actor": f"user{i % 3}",
        "action": "approve",
        "subject": f"model:fraud:{i}",
        "allowed": i % 5 != 0,
        "reason": "" if i % 5 else "gate: scan not clean",
        "from_state": "scanned",
        "to_state": "approved",
        "digests": {"model": DIGEST},
        "details": {"i": i, "note": "ünïcode ✓", "nested": [1, 2.5, None, True]},
    }
    fields.update(changes)
    return AuditEvent(**fields)  # type: ignore[arg-type]


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    return CheckpointSigner.generate(tmp_path / "keys" / "audit.key")


def test_append_assigns_gapless_seq_and_round_trips(database: Database) -> None:
    log = AuditLog(database)
    records = [log.append_now(event(i)) for i in range(7)]
    assert [r.seq for r in records] == list(range(7))
    assert log.size() == 7
    read = list(log.entries())
    assert read == records
    assert read[3].event == event(3)
    assert all(r.timestamp.tzinfo is not None for r in read)
    assert list(log.entries(2, 4)) == records[2:4]


def test_append_commits_and_rolls_back_with_the_callers_transaction(database: Database) -> None:
    log = AuditLog(database)
    with database.transaction() as session:
        log.append(session, event(1))

    def failing_change() -> None:
        with database.transaction() as session:
            log.append(session, event(2))
            raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        failing_change()
    refused = log.append_now(event(3, allowed=False, reason="refused"))
    assert refused.seq == 1  # the rolled-back append left no gap
    assert [r.subject for r in log.entries()] == ["model:fraud:1", "model:fraud:3"]


def test_append_many_is_one_batch_and_validates_everything_first(database: Database) -> None:
    log = AuditLog(database)
    with database.transaction() as session:
        assert [r.seq for r in log.append_many(session, [event(i) for i in range(50)])] == list(range(50))
    with pytest.raises(AuditError), database.transaction() as session:
        log.append_many(session, [event(100), event(101, digests={"model": "md5:zz"})])
    assert log.size() == 50


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"actor": ""}, "actor"),
        ({"action": "x" * 65}, "action"),
        ({"subject": None}, "subject"),
        ({"allowed": "yes"}, "allowed"),
        ({"digests": {"model": "sha256:XYZ"}}, "digest"),
        ({"digests": {"model": "deadbeef"}}, "digest"),
        ({"details": {"x": math.nan}}, "JSON"),
        ({"details": {"x": object()}}, "JSON"),
        ({"details": {"x": "y" * 70_000}}, "bytes"),
        ({"reason": "a\x00b"}, "NUL"),
        ({"actor": "\ud800"}, "surrogate"),
    ],
)
def test_invalid_events_are_refused_and_nothing_is_written(
    database: Database, changes: dict[str, object], message: str
) -> None:
    log = AuditLog(database)
    with pytest.raises(AuditError, match=message):
        log.append_now(event(1, **changes))
    assert log.size() == 0


def test_stored_columns_rebuild_the_leaf_exactly(database: Database) -> None:
    log = AuditLog(database)
    record = log.append_now(event(4, details={"b": [1, {"z": 1, "a": 2}], "a": 'é\n"q"'}))
    stored = next(log.entries())
    assert stored.leaf_hash == record.leaf_hash == leaf_hash(record.entry_bytes())
    row = (stored.seq, stored.timestamp, stored.actor, stored.action, stored.subject, stored.allowed, stored.reason,
           stored.from_state, stored.to_state, stored.digests_json, stored.details_json)  # fmt: skip
    assert leaf_from_row(row) == record.leaf_hash
    assert json.loads(stored.entry_bytes())["details"] == {"a": 'é\n"q"', "b": [1, {"a": 2, "z": 1}]}


_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(0, 2**40),
    moment=st.datetimes(timezones=st.just(UTC)),
    actor=_text,
    subject=_text,
    allowed=st.booleans(),
    reason=st.text(max_size=20),
    states=st.tuples(st.none() | _text, st.none() | _text),
    details=st.dictionaries(_text, _json, max_size=4),
)
def test_fast_entry_encoding_equals_canonical_json(
    seq: int,
    moment: datetime,
    actor: str,
    subject: str,
    allowed: bool,
    reason: str,
    states: tuple[str | None, str | None],
    details: dict[str, object],
) -> None:
    digests = {"model": DIGEST}
    stamp = format_timestamp(moment)
    fields = {
        "seq": seq, "timestamp": stamp, "actor": actor, "action": "deploy", "subject": subject, "allowed": allowed,
        "reason": reason, "from_state": states[0], "to_state": states[1], "digests": digests, "details": details,
        "v": 1,
    }  # fmt: skip
    canonical = canonical_json(fields).encode()
    fast = entry_bytes(seq, stamp, actor, "deploy", subject, allowed, reason, *states, canonical_json(digests),
                       canonical_json(details))  # fmt: skip
    assert fast == canonical
    row = (seq, moment, actor, "deploy", subject, allowed, reason, *states, canonical_json(digests),
           canonical_json(details))  # fmt: skip
    assert leaf_from_row(row) == leaf_hash(canonical)
    naive_text = moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")  # SQLite's stored form
    assert leaf_from_row((seq, naive_text, *row[2:])) == leaf_hash(canonical)


def test_checkpoint_needs_a_signer(database: Database) -> None:
    log = AuditLog(database)
    log.append_now(event())
    with pytest.raises(AuditError, match="signer"):
        log.checkpoint()


def test_checkpoints_sign_the_root_and_are_made_every_n_entries(database: Database, signer: CheckpointSigner) -> None:
    log = AuditLog(database, signer, checkpoint_every=10)
    for i in range(25):
        log.append_now(event(i))
    with database.transaction() as session:
        log.append_many(session, [event(i) for i in range(25, 47)])  # crosses 30 and 40: one checkpoint at 47
    assert [c.tree_size for c in log.checkpoints()] == [10, 20, 47]
    manual = log.checkpoint()
    assert manual.tree_size == 47
    for cp in log.checkpoints():
        assert cp.signature_valid(signer.public_key)
    assert not manual.signature_valid(CheckpointSigner(Ed25519PrivateKey.generate()).public_key)


def test_proofs_verify_against_signed_checkpoints(database: Database, signer: CheckpointSigner) -> None:
    log = AuditLog(database, signer, checkpoint_every=None)
    for batch in range(3):
        with database.transaction() as session:
            log.append_many(session, [event(batch * 100 + i) for i in range(37)])
        log.checkpoint()
    first, _, last = log.checkpoints()
    records = list(log.entries())
    for seq in (0, 36, 50, 110):
        proof = log.inclusion_proof(seq, last.tree_size)
        verify_inclusion(seq, last.tree_size, records[seq].leaf_hash, proof, last.root_hash)
    proof = log.consistency_proof(first.tree_size, last.tree_size)
    verify_consistency(first.tree_size, last.tree_size, proof, first.root_hash, last.root_hash)
    with pytest.raises(AuditError):
        log.inclusion_proof(200)
    with pytest.raises(AuditError):
        log.consistency_proof(0, 5)


def test_checkpoint_refuses_to_sign_an_edited_log(database: Database, signer: CheckpointSigner) -> None:
    log = AuditLog(database, signer, checkpoint_every=None)
    for i in range(5):
        log.append_now(event(i))
    log.checkpoint()
    log.append_now(event(5))
    with database.transaction() as session:
        session.execute(text("UPDATE audit_entries SET actor = 'mallory' WHERE seq = 5"))
    with pytest.raises(TamperedError, match="entry 5"):
        log.checkpoint()
    with database.transaction() as session:
        session.execute(text("UPDATE audit_checkpoints SET frontier = :f"), {"f": b"\x00" * 32})
    with pytest.raises(TamperedError, match="frontier"):
        log.checkpoint()


def test_concurrent_writers_get_unique_gapless_seq(database: Database, signer: CheckpointSigner) -> None:
    log = AuditLog(database, signer, checkpoint_every=25)
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(30):
                if i % 3:
                    log.append_now(event(worker * 1000 + i))
                else:
                    with database.transaction() as session:
                        log.append_many(session, [event(worker * 1000 + i), event(worker * 1000 + i + 500)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    seqs = [r.seq for r in log.entries()]
    assert seqs == list(range(4 * 40))
    subjects = [r.subject for r in log.entries()]
    assert len(set(subjects)) == len(subjects)
    report = log.verify(signer.public_key)
    assert report.ok, report.problems
    assert report.good_checkpoints == report.checkpoints >= 5

"""Offline verification names what was tampered with: edited rows, rewrites, gaps, truncation, forged checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from mlwarden.registry.audit import AuditEvent, AuditLog, CheckpointSigner
from mlwarden.registry.audit import replay as replay_module
from mlwarden.registry.audit.events import canonical_json
from mlwarden.registry.audit.replay import leaf_from_row
from mlwarden.registry.db import Database

DIGEST = "sha256:" + "cd" * 32


def event(i: int) -> AuditEvent:
    return AuditEvent(
        actor=f"user{i % 4}",
        action="deploy" if i % 2 else "approve",
        subject=f"model:m:{i}",
        allowed=bool(i % 7),
        reason="why" if i % 7 == 0 else "",
        from_state="approved" if i % 2 else None,
        to_state="deployed" if i % 2 else None,
        digests={"model": DIGEST},
        details={"i": i},
    )


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    return CheckpointSigner.generate(tmp_path / "audit.key")


def build(database: Database, signer: CheckpointSigner, n: int = 60, every: int = 20) -> AuditLog:
    log = AuditLog(database, signer, checkpoint_every=every)
    with database.transaction() as session:
        for i in range(n):
            log.append(session, event(i))
    return log


def sql(database: Database, statement: str, **params: object) -> None:
    with database.transaction() as session:
        session.execute(text(statement), params)


def test_an_intact_log_verifies(database: Database, signer: CheckpointSigner) -> None:
    log = build(database, signer)
    report = log.verify(signer.public_key)
    assert report.ok, report.problems
    assert (report.size, report.checkpoints, report.good_checkpoints, report.signed_size) == (60, 3, 3, 60)
    assert report.unsigned_tail is None
    assert report.root == log.latest_checkpoint().root_hash  # type: ignore[union-attr]
    assert "OK" in report.summary()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "mallory"),
        ("action", "approve!"),
        ("subject", "model:m:999"),
        ("allowed", True),
        ("reason", "nothing to see"),
        ("from_state", "received"),
        ("to_state", "retired"),
        ("digests", canonical_json({"model": "sha256:" + "00" * 32})),
        ("details", '{"i": 33}'),  # the same JSON value, spaced differently: still an edit of the signed bytes
        ("timestamp", "2001-01-01 00:00:00.000000"),
    ],
)
def test_editing_any_column_in_sql_is_detected_and_names_the_entry(
    database: Database, signer: CheckpointSigner, column: str, value: object
) -> None:
    log = build(database, signer)
    if column == "allowed":
        value = not next(log.entries(33, 34)).allowed
    if column == "timestamp" and database.dialect == "postgresql":
        value = "2001-01-01 00:00:00+00"
    sql(database, f"UPDATE audit_entries SET {column} = :v WHERE seq = 33", v=value)  # noqa: S608 - the tamper
    report = log.verify(signer.public_key)
    assert not report.ok
    assert report.named_entries == (33,)
    kinds = {p.kind for p in report.problems}
    assert kinds == {"edited", "rewritten"}
    assert any("entry 33" in p.message for p in report.problems if p.kind == "edited")
    rewritten = [p.tree_size for p in report.problems if p.kind == "rewritten"]
    assert rewritten == [40, 60]  # the checkpoint at 20 still matches


def test_rewriting_a_row_and_its_leaf_hash_is_narrowed_to_a_checkpoint_range(
    database: Database, signer: CheckpointSigner
) -> None:
    log = build(database, signer)
    sql(database, "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 27")
    row = next(replay_module.stream_entries(database, 27, 28))
    sql(database, "UPDATE audit_entries SET leaf_hash = :h WHERE seq = 27", h=leaf_from_row(row))
    report = log.verify(signer.public_key)
    assert not report.ok
    assert report.named_entries == ()
    first = next(p for p in report.problems if p.kind == "rewritten")
    assert first.tree_size == 40
    assert "20..39" in first.message
    assert report.signed_size == 20
    assert report.unsigned_tail == (20, 60)


def test_a_deleted_row_is_named_as_a_gap(database: Database, signer: CheckpointSigner) -> None:
    log = build(database, signer)
    sql(database, "DELETE FROM audit_entries WHERE seq = 45")
    report = log.verify(signer.public_key)
    assert [p.seq for p in report.problems if p.kind == "gap"] == [45]
    assert not report.ok


def test_deleting_the_newest_entries_is_truncation(database: Database, signer: CheckpointSigner) -> None:
    log = build(database, signer)
    sql(database, "DELETE FROM audit_entries WHERE seq >= 50")
    report = log.verify(signer.public_key)
    assert [p.tree_size for p in report.problems if p.kind == "truncated"] == [60]
    assert report.size == 50


def test_an_edited_checkpoint_fails_its_signature(database: Database, signer: CheckpointSigner) -> None:
    log = build(database, signer)
    sql(database, "UPDATE audit_checkpoints SET tree_size = 19 WHERE tree_size = 20")
    report = log.verify(signer.public_key)
    assert [p.kind for p in report.problems] == ["bad-signature"]
    assert report.problems[0].tree_size == 19


def test_checkpoints_by_another_key_are_reported(database: Database, signer: CheckpointSigner) -> None:
    log = build(database, signer)
    other = CheckpointSigner(Ed25519PrivateKey.generate())
    report = log.verify(other.public_key)
    assert {p.kind for p in report.problems} == {"unknown-key"}
    assert report.signed_size == 0


def test_a_forked_history_is_reported_inconsistent(database: Database, signer: CheckpointSigner) -> None:
    log = build(database, signer, n=40)
    sql(database, "UPDATE audit_entries SET subject = 'model:forged' WHERE seq = 5")
    row = next(replay_module.stream_entries(database, 5, 6))
    sql(database, "UPDATE audit_entries SET leaf_hash = :h WHERE seq = 5", h=leaf_from_row(row))
    sql(database, "DELETE FROM audit_checkpoints WHERE tree_size = 40")
    AuditLog(
        database, CheckpointSigner(signer._key), checkpoint_every=None
    ).checkpoint()  # re-signs from the 20 frontier
    report = log.verify(signer.public_key)
    # the new checkpoint extends the *signed* frontier at 20, so it cannot bless the forged entry 5
    assert [p.tree_size for p in report.problems if p.kind == "rewritten"] == [20, 40]


def test_an_unsigned_tail_is_reported_but_is_not_tampering(database: Database, signer: CheckpointSigner) -> None:
    log = build(database, signer, n=45)
    report = log.verify(signer.public_key)
    assert report.ok
    assert report.unsigned_tail == (40, 45)
    assert "5 unsigned entries (40..44)" in report.summary()


def test_quick_mode_trusts_leaf_hashes_but_still_checks_signed_roots(
    database: Database, signer: CheckpointSigner
) -> None:
    log = build(database, signer)
    sql(database, "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 3")
    assert log.verify(signer.public_key, full=False).ok  # content edits need the full check ...
    sql(database, "UPDATE audit_entries SET leaf_hash = :h WHERE seq = 3", h=b"\x11" * 32)
    quick = log.verify(signer.public_key, full=False)
    assert [p.kind for p in quick.problems] == ["rewritten"] * 3  # ... a leaf change breaks every signed root


def test_parallel_replay_gives_the_same_report(
    sqlite_database: Database, signer: CheckpointSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = build(sqlite_database, signer, n=700, every=64)
    sql(sqlite_database, "UPDATE audit_entries SET reason = 'x' WHERE seq = 300")
    serial = log.verify(signer.public_key, jobs=1)
    monkeypatch.setattr(replay_module, "PARALLEL_MIN", 10)
    calls: list[int] = []
    real = replay_module.replay_range
    monkeypatch.setattr(replay_module, "replay_range", lambda *a, **k: calls.append(1) or real(*a, **k))
    parallel = log.verify(signer.public_key, jobs=3)
    assert calls == []  # the workers did the replay, not this process
    assert parallel == serial
    assert serial.named_entries == (300,)
    sql(sqlite_database, "UPDATE audit_entries SET reason = '' WHERE seq = 300")
    clean = log.verify(signer.public_key, jobs=3)
    assert clean.ok
    assert clean.good_checkpoints == 10

"""Guard decisions reach the audit log: at once when asked, in batches otherwise, and never silently dropped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlwarden.registry.audit import AuditEvent, AuditLog, CheckpointSigner
from mlwarden.registry.db import Database, DatabaseError
from mlwarden.serve.auditor import AuditBacklog, DecisionAuditor
from tests.registry.conftest import database, db_url  # noqa: F401 - fixtures used by name


@pytest.fixture
def log(database: Database, tmp_path: Path) -> AuditLog:  # noqa: F811 - the imported fixture
    return AuditLog(database, CheckpointSigner.generate(tmp_path / "audit.key"))


def _event(i: int, allowed: bool = True) -> AuditEvent:
    return AuditEvent(
        actor="carol", action="guard.predict", subject="model:fraud:1", allowed=allowed, details={"request_id": f"r{i}"}
    )


@pytest.fixture
def auditor(log: AuditLog) -> Iterator[DecisionAuditor]:
    a = DecisionAuditor(log, flush_every_s=30)  # the test flushes by hand
    try:
        yield a
    finally:
        a.close()


def test_now_is_written_before_returning_and_batches_on_flush(auditor: DecisionAuditor, log: AuditLog) -> None:
    auditor.record(_event(0, allowed=False), now=True)
    assert log.size() == 1
    for i in range(1, 251):
        auditor.record(_event(i))
    assert log.size() == 1
    assert auditor.pending == 250
    assert auditor.flush() == 250
    assert [e.details["request_id"] for e in log.entries()] == [f"r{i}" for i in range(251)]


def test_close_writes_what_is_pending(log: AuditLog) -> None:
    a = DecisionAuditor(log, flush_every_s=30)
    for i in range(10):
        a.record(_event(i))
    a.close()
    assert log.size() == 10


class _DeadLog:
    """An audit log whose database is down."""

    def __init__(self, log: AuditLog) -> None:
        self.database = log.database

    def append_now(self, event: AuditEvent) -> None:
        raise DatabaseError("connection refused")

    def append_many(self, session: object, events: list[AuditEvent]) -> None:
        raise DatabaseError("connection refused")


def test_a_dead_database_refuses_instead_of_dropping(log: AuditLog) -> None:
    failures: list[int] = []
    a = DecisionAuditor(_DeadLog(log), flush_every_s=30, max_pending=5, on_failure=failures.append)  # type: ignore[arg-type]
    try:
        with pytest.raises(AuditBacklog, match="unavailable"):
            a.record(_event(0), now=True)
        for i in range(5):
            a.record(_event(i))
        with pytest.raises(AuditBacklog, match="not keeping up"):
            a.record(_event(5))
        assert a.flush() == 0
        assert a.pending == 5
        assert failures == [5]
        a.audit = log  # the database is back
        assert a.flush() == 5
        assert [e.details["request_id"] for e in log.entries()] == [f"r{i}" for i in range(5)]
    finally:
        a._stop.set()

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


def test_an_urgent_event_is_written_in_the_callers_thread_when_the_writer_is_idle(log: AuditLog) -> None:
    import threading

    a = DecisionAuditor(log, flush_every_s=30, urgent=True)
    try:
        outcome: list[tuple[str | None, str]] = []
        a.record_urgent(
            _event(0, allowed=False), lambda error: outcome.append((error, threading.current_thread().name))
        )
        assert outcome == [(None, threading.current_thread().name)]  # done before record_urgent returned
        assert log.size() == 1
    finally:
        a.close()


def test_an_urgent_event_waits_for_one_batch_chunk_not_the_whole_batch(log: AuditLog) -> None:
    import threading

    class _SlowLog:
        """The real log, with each batch chunk held until the test lets it go."""

        def __init__(self, real: AuditLog) -> None:
            self.database, self.real = real.database, real
            self.chunk_started, self.release = threading.Event(), threading.Event()

        def append_now(self, event: AuditEvent) -> None:
            self.real.append_now(event)

        def append_many(self, session: object, events: list[AuditEvent]) -> None:
            self.chunk_started.set()
            assert self.release.wait(10)
            self.real.append_many(session, events)  # type: ignore[arg-type]

    slow = _SlowLog(log)
    a = DecisionAuditor(slow, flush_every_s=30, urgent=True)  # type: ignore[arg-type]
    try:
        for i in range(1, 3 * a.urgent_chunk + 1):
            a.record(_event(i))
        a._wake.set()  # the writer starts on the batch
        assert slow.chunk_started.wait(10)
        written = threading.Event()
        outcome: list[str | None] = []
        a.record_urgent(_event(0, allowed=False), lambda error: (outcome.append(error), written.set()))
        assert outcome == []  # the writer is busy: handed over, the caller does not wait
        slow.release.set()
        assert written.wait(10)
        assert outcome == [None]
        a.close()  # the writer finishes the batch (a flush from here could return while it writes the last chunk)
        ids = [e.details["request_id"] for e in log.entries()]
        assert ids.index("r0") == a.urgent_chunk  # written right after the first chunk, ahead of the rest
        assert len(ids) == 3 * a.urgent_chunk + 1
    finally:
        slow.release.set()
        a.close()

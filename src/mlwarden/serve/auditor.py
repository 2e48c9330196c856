"""Every guard decision goes to the registry's audit log: blocks and flags at once, allowed requests in batches.

A blocked or flagged request is appended before its response is sent (the evidence must survive a crash).
Allowed requests — nearly all of them — are queued and appended by a background thread in one transaction per
batch (``append_many``), which keeps the database off the request path; a crash loses at most the last
``flush_every_s`` of allowed decisions, never a block. The queue is bounded: when the log cannot keep up (a dead
database), :meth:`DecisionAuditor.record` raises :class:`AuditBacklog` and the service answers 503 rather than
serve unaudited.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from mlwarden.core.errors import MlwardenError
from mlwarden.registry.audit import AuditLog
from mlwarden.registry.audit.events import AuditEvent
from mlwarden.registry.db import DatabaseError

log = logging.getLogger("mlwarden.serve")


class AuditBacklog(MlwardenError):  # noqa: N818 - a condition the caller acts on
    """The audit log is not keeping up (or unreachable); the request is refused rather than left unaudited."""


class DecisionAuditor:
    """Appends guard decisions to the audit log (see the module docstring).

    Args:
        audit: the registry's audit log.
        flush_every_s: longest time an allowed decision waits in the queue.
        max_batch: most events per transaction.
        max_pending: queued events beyond which :meth:`record` refuses.
        on_failure: called with the number of events a failed flush could not write (they are retried).
        urgent: :meth:`record_urgent` will be used: batches are written in chunks of :attr:`urgent_chunk` so an
            urgent event waits for at most one chunk.
    """

    def __init__(
        self,
        audit: AuditLog,
        *,
        flush_every_s: float = 0.2,
        max_batch: int = 1000,
        max_pending: int = 50_000,
        on_failure: Callable[[int], None] | None = None,
        urgent: bool = False,
    ) -> None:
        self.audit = audit
        self.flush_every_s = flush_every_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._on_failure = on_failure
        self._urgent_possible = urgent
        self._queue: deque[AuditEvent] = deque()
        self._urgent: deque[tuple[AuditEvent, Callable[[str | None], None]]] = deque()
        self._lock = threading.Lock()
        #: Held while this auditor writes to the database (a batch chunk, an urgent event): the caller of
        #: :meth:`record_urgent` writes at once when it is free, and never waits for it.
        self._writing = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlwarden-audit", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Events queued and not yet written."""
        return len(self._queue)

    def record(self, event: AuditEvent, *, now: bool = False) -> None:
        """Audit ``event``: appended before returning if ``now``, else queued.

        Raises:
            AuditBacklog: the queue is full, or (``now``) the append failed.
        """
        if now:
            try:
                self.audit.append_now(event)
            except (DatabaseError, MlwardenError) as exc:
                raise AuditBacklog(f"the audit log is unavailable: {exc}") from None
            return
        with self._lock:
            if len(self._queue) >= self.max_pending:
                raise AuditBacklog(f"{len(self._queue)} audit events are waiting; the audit log is not keeping up")
            self._queue.append(event)

    def record_urgent(self, event: AuditEvent, done: Callable[[str | None], None]) -> None:
        """Append ``event`` in a transaction of its own, ahead of the queued batches.

        ``done(error)`` is called once it is written (``None``) or could not be. When this auditor is not
        writing, the caller's thread writes it at once: no handover to another thread, which had to win the
        interpreter lock from the threads keeping the process busy (about half a millisecond per step).
        Otherwise the writer thread writes it next, between two batch chunks (at most ``urgent_chunk`` events),
        and calls ``done`` from there: an urgent event never waits for the database's write lock held by a
        batch of this process.
        """
        if self._writing.acquire(blocking=False):
            try:
                self._write_one(event, done)
            finally:
                self._writing.release()
            return
        self._urgent.append((event, done))
        self._wake.set()

    def _write_one(self, event: AuditEvent, done: Callable[[str | None], None]) -> None:
        try:
            self.audit.append_now(event)
        except (DatabaseError, MlwardenError) as exc:
            done(f"the audit log is unavailable: {exc}")
        else:
            done(None)

    #: Events per batch transaction while urgent events may be waiting (bounds how long one waits).
    urgent_chunk = 25

    def _write_urgent(self) -> None:
        while self._urgent:
            with self._writing:
                if not self._urgent:
                    return
                event, done = self._urgent.popleft()
                self._write_one(event, done)

    def flush(self) -> int:
        """Write every queued event now (urgent ones first, and between batch chunks); returns batched ones written."""
        written = 0
        while True:
            self._write_urgent()
            with self._lock:
                size = self.urgent_chunk if self._urgent_possible else self.max_batch
                batch = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
            if not batch:
                return written
            try:
                with self._writing, self.audit.database.transaction() as session:
                    self.audit.append_many(session, batch)
            except (DatabaseError, MlwardenError) as exc:
                with self._lock:
                    self._queue.extendleft(reversed(batch))  # keep them, in order, for the next attempt
                log.error("audit flush of %d event(s) failed: %s", len(batch), exc)
                if self._on_failure is not None:
                    self._on_failure(len(batch))
                return written
            written += len(batch)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            self.flush()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after a last flush."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.flush()
        self._write_urgent()

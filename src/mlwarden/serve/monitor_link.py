"""The request process's side of the monitor process: a bounded, non-blocking hand-off.

The request path calls :meth:`MonitorLink.observe`, :meth:`MonitorLink.record` (an audit event),
:meth:`MonitorLink.alert` and :meth:`MonitorLink.keep`; each appends one tuple to an in-process buffer and
returns — no lock, no system call, no pickling. A sender thread sends the buffer to the monitor process
(:mod:`mlwarden.serve.monitor_host`) in batches every ``flush_s`` (20 ms; an event that must be written before
its reply goes at once). The buffer is bounded (``max_pending``): when
the monitor process falls behind and the buffer is full, observations and records are dropped and counted
(``mlwarden_guard_monitor_dropped_total``; the monitor process raises the ``monitor_queue_overflow`` alert), and an
allowed decision's audit event is refused with :class:`~mlwarden.serve.auditor.AuditBacklog` (the service
answers 503: no answer leaves unaudited). Nothing on the request path ever waits for the monitor process, except
a blocked or flagged decision, whose audit event must be written before its reply: :meth:`record` with ``now``
sends it at once and waits (at most ``ack_timeout_s``) for the monitor process to confirm the write.

When the monitor process dies the link starts a new one (``mlwarden_guard_monitor_restarts_total``) and tells it
what is served; events waiting for a confirmation fail (503), queued ones are sent to the new process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from mlwarden.core.errors import MlwardenError
from mlwarden.monitor.alerts import Alert
from mlwarden.registry.audit.events import AuditEvent
from mlwarden.serve.auditor import AuditBacklog
from mlwarden.serve.monitor_host import HostConfig, host_main

log = logging.getLogger("mlwarden.serve")

#: Seconds a new monitor process has to start (a spawned interpreter imports and opens the registry first).
START_S = 30.0


class MonitorUnavailable(MlwardenError):  # noqa: N818 - a condition, reported as a clear error
    """The monitor process cannot start; the service must not serve without it."""


class _Waiter:
    __slots__ = ("done", "error", "future", "loop", "state")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.done = threading.Event()
        self.error: str | None = None
        self.state: dict[str, Any] = {}
        self.loop = loop
        self.future: asyncio.Future[None] | None = loop.create_future() if loop is not None else None

    def finish(self, error: str | None = None) -> None:
        """Mark it done (``error``: why not), waking a thread or an event loop that waits on it."""
        if error is not None:
            self.error = error
        self.done.set()
        if self.loop is not None and self.future is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ForwardedRecords:
    """A ``deque``-like sink for forensic records that forwards them to the monitor process (which keeps them)."""

    def __init__(self, link: MonitorLink, maxlen: int) -> None:
        self._link = link
        self.maxlen = maxlen

    def append(self, record: dict[str, Any]) -> None:
        """Hand one record over (dropped and counted when the buffer is full)."""
        self._link.keep(record)


class MonitorLink:
    """See the module docstring.

    Args:
        config: the monitor process's configuration.
        model: the served model's name (metric label).
        registry: the Prometheus registry of the request process (the link adds its series).
        flush_s: how often the buffer is sent.
        max_batch: most items per message.
        max_pending: the buffer's bound.
        ack_timeout_s: longest wait for an ``audit_now`` confirmation.
        stall_s: the monitor process is taken as stalled when it has sent nothing (not even its heartbeat) for this
            long: an ``audit_now`` waiting on it fails then, and later ones fail at once until it is heard again.
        start: start the monitor process now (tests may want to start it themselves).
        conn: attach to a monitor process shared with other request processes (``mlwarden serve --workers N``)
            over this pipe, instead of starting one; the supervisor owns that process (it stops the service when
            the monitor process dies, so a process manager restarts all of it).
    """

    def __init__(
        self,
        config: HostConfig,
        *,
        model: str,
        registry: CollectorRegistry,
        flush_s: float = 0.02,
        max_batch: int = 2000,
        max_pending: int = 50_000,
        ack_timeout_s: float = 10.0,
        stall_s: float = 2.0,
        start: bool = True,
        conn: Connection | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.flush_s = flush_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.ack_timeout_s = ack_timeout_s
        self.stall_s = stall_s
        self._spawned_at = time.monotonic()
        self._heard: float | None = None
        self.dropped = Counter(
            "mlwarden_guard_monitor_dropped",
            "Items not handed to the monitor process because its buffer was full",
            ["model", "kind"],
            registry=registry,
        )
        self.restarts = Counter(
            "mlwarden_guard_monitor_restarts",
            "Monitor processes started again after they died",
            ["model"],
            registry=registry,
        )
        self.depth = Gauge(
            "mlwarden_guard_monitor_buffer",
            "Items waiting to be sent to the monitor process",
            ["model"],
            registry=registry,
        )
        self.depth.labels(model).set_function(lambda: len(self._buffer))
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._urgent: deque[tuple[Any, ...]] = deque()
        self._waiters: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._drops: dict[str, int] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._serving: tuple[Any, ...] | None = None
        self._metrics_text = b""
        self._hold_until = 0.0
        self._poll = threading.Event()
        self._ctx = multiprocessing.get_context("spawn")
        self._conn: Connection | None = None
        self._attached = conn
        self._process: Any = None
        self._alive = threading.Event()
        self._fatal: str | None = None
        self._sender = threading.Thread(target=self._send_loop, name="mlwarden-monitor-send", daemon=True)
        if start:
            self.start()

    # -- life cycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start (or attach to) the monitor process, and the sender and receiver threads."""
        if self._attached is not None:
            self._conn = self._attached
            self._spawned_at, self._heard = time.monotonic(), None
            self._alive.set()
            threading.Thread(
                target=self._receive_loop, args=(self._conn,), name="mlwarden-monitor-recv", daemon=True
            ).start()
        else:
            self._spawn()
        self._sender.start()

    def _spawn(self) -> None:
        ours, theirs = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=host_main, args=(theirs, self.config), name=f"mlwarden-monitor-{self.model}", daemon=True
        )
        process.start()
        theirs.close()
        self._conn, self._process = ours, process
        self._spawned_at, self._heard = time.monotonic(), None
        self._alive.set()
        threading.Thread(target=self._receive_loop, args=(ours,), name="mlwarden-monitor-recv", daemon=True).start()
        if self._serving is not None:
            self._urgent.appendleft(("batch", [self._serving]))

    def wait_ready(self, timeout: float = START_S) -> None:
        """Wait until the monitor process has started (its first heartbeat).

        Raises:
            MonitorUnavailable: it said why it cannot start, exited, or did not start within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while self._fatal is None and not self.heard:
            if self._attached is None and self._process is not None and not self._process.is_alive():
                raise MonitorUnavailable(f"the monitor process exited at start (status {self._exitcode()})")
            if time.monotonic() > deadline:
                raise MonitorUnavailable(f"the monitor process did not start within {timeout:.0f} s")
            time.sleep(0.02)
        if self._fatal is not None:
            raise MonitorUnavailable(self._fatal)

    @property
    def pid(self) -> int | None:
        """The monitor process's pid (``None`` before it started, or when it is shared and not ours)."""
        return None if self._process is None else self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the monitor process is running and its pipe open."""
        if self._attached is not None:
            return self._alive.is_set()
        return self._alive.is_set() and self._process is not None and self._process.is_alive()

    def close(self, timeout: float = 15.0) -> None:
        """Send what is buffered, tell the monitor process to stop (it writes its pending audit events), wait."""
        self._stop.set()
        self._wake.set()
        if self._sender.is_alive():
            self._sender.join(timeout)
        conn, process = self._conn, self._process
        if conn is not None and self._attached is None:  # a shared one stops when its last request process left
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                log.error("the monitor process did not stop in %.0f s; terminating it", timeout)
                process.terminate()
                process.join(5)
        if conn is not None:
            conn.close()
        self._fail_waiters("the guard is shutting down")

    # -- the request path -----------------------------------------------------------------------------------------

    def observe(
        self,
        features: np.ndarray | None,
        confidence: Sequence[float] | None,
        latency_s: float,
        error: bool,
        flagged: bool = False,
    ) -> None:
        """Hand one request's observation over (never blocks; dropped and counted when the buffer is full)."""
        self._put(("obs", features, confidence, latency_s, error, flagged), "observation")

    def keep(self, record: dict[str, Any]) -> None:
        """Hand one forensic record over (never blocks; dropped and counted when the buffer is full)."""
        self._put(("record", record), "record")

    def alert(self, alert: Alert) -> None:
        """Hand an alert raised on the request path over."""
        self._put(("alert", alert), "alert")

    def record(self, event: AuditEvent, *, now: bool = False) -> None:
        """Audit ``event``: queued, or (``now``) written by the monitor process before this returns.

        Raises:
            AuditBacklog: the buffer is full; or (``now``) the monitor process did not confirm the write in time,
                could not write it, or is not running.
        """
        if not now:
            if len(self._buffer) >= self.max_pending:
                self.dropped.labels(self.model, "audit").inc()
                raise AuditBacklog(f"{len(self._buffer)} events wait for the monitor process; it is not keeping up")
            self._buffer.append(("audit", event))
            return
        ident, waiter, message, deadline = self._ask_audit(event, None)
        try:
            while not waiter.done.wait(0.1):
                self._give_up_if_overdue(message, deadline)
        finally:
            self._waiters.pop(ident, None)
        if waiter.error is not None:
            raise AuditBacklog(waiter.error)

    async def record_now(self, event: AuditEvent) -> None:
        """:meth:`record` with ``now``, awaited on an event loop (the receiver thread resolves it).

        Raises:
            AuditBacklog: as :meth:`record` with ``now``.
        """
        ident, waiter, message, deadline = self._ask_audit(event, asyncio.get_running_loop())
        if waiter.future is None:
            raise RuntimeError("internal invariant broken: a loop waiter without its future")
        try:
            while not waiter.done.is_set():
                await asyncio.wait((waiter.future,), timeout=0.1)
                if not waiter.done.is_set():
                    self._give_up_if_overdue(message, deadline)
        finally:
            self._waiters.pop(ident, None)
        if waiter.error is not None:
            raise AuditBacklog(waiter.error)

    def _ask_audit(
        self, event: AuditEvent, loop: asyncio.AbstractEventLoop | None
    ) -> tuple[int, _Waiter, tuple[Any, ...], float]:
        """Queue ``event`` to be written at once; (its id, its waiter, the message, the deadline of the wait)."""
        if not self.alive:
            raise AuditBacklog("the monitor process is not running")
        if self.stalled():
            raise AuditBacklog(f"the monitor process has not answered for {self.silent_s():.1f} s")
        ident = next(self._ids)
        waiter = _Waiter(loop)
        self._waiters[ident] = waiter
        message = ("audit_now", ident, event)
        self._urgent.append(message)
        self._wake.set()
        return ident, waiter, message, time.monotonic() + self.ack_timeout_s

    def _give_up_if_overdue(self, message: tuple[Any, ...], deadline: float) -> None:
        """Raise :class:`AuditBacklog` when the monitor process went silent or the deadline passed."""
        if not self.stalled() and time.monotonic() <= deadline:
            return
        with contextlib.suppress(ValueError):  # not sent yet: take it back (sent: it may still land)
            self._urgent.remove(message)
        raise AuditBacklog(f"the monitor process did not confirm the audit write (silent for {self.silent_s():.1f} s)")

    def _put(self, item: tuple[Any, ...], kind: str) -> None:
        if len(self._buffer) >= self.max_pending:
            self.dropped.labels(self.model, kind).inc()
            self._drops[kind] = self._drops.get(kind, 0) + 1
            return
        self._buffer.append(item)

    # -- what the service asks --------------------------------------------------------------------------------------

    def serving(
        self,
        info: dict[str, Any],
        baseline: Any,
        confidence_reference: tuple[float, float] | None,
    ) -> None:
        """Tell the monitor process what is served now (its windows start over with this baseline)."""
        self._serving = ("serving", info, baseline, confidence_reference)
        self._urgent.append(("batch", [self._serving]))
        self._wake.set()

    def snapshot(self, alerts: int = 50, timeout: float = 5.0) -> dict[str, Any]:
        """The monitor's state and its ``alerts`` most recent alerts (``{}`` when it does not answer in time)."""
        if not self.alive:
            return {"available": False, "reason": "the monitor process is not running"}
        ident = next(self._ids)
        waiter = _Waiter()
        self._waiters[ident] = waiter
        self._urgent.append(("snapshot", ident, alerts))
        self._wake.set()
        try:
            if not waiter.done.wait(timeout):
                return {"available": False, "reason": f"the monitor process did not answer in {timeout} s"}
            return dict(waiter.state)
        finally:
            self._waiters.pop(ident, None)

    def silent_s(self) -> float:
        """Seconds since the monitor process last sent anything."""
        return time.monotonic() - (self._spawned_at if self._heard is None else self._heard)

    @property
    def heard(self) -> bool:
        """Whether the current monitor process has sent anything yet (it beats once it has started)."""
        return self._heard is not None

    def stalled(self) -> bool:
        """Whether the monitor process has been silent for longer than ``stall_s`` (``START_S`` before it started)."""
        return self.silent_s() > (self.stall_s if self._heard is not None else START_S)

    def metrics_text(self) -> bytes:
        """The monitor process's Prometheus series, as it last sent them."""
        return self._metrics_text

    def held(self) -> bool:
        """Whether a playbook is running in the monitor process (the registry may be half-way through it)."""
        return time.monotonic() < self._hold_until

    def take_poll(self) -> bool:
        """Whether the monitor process asked for a registry poll since the last call."""
        if self._poll.is_set():
            self._poll.clear()
            return True
        return False

    # -- threads --------------------------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            if not self.alive and not stopping and self._attached is None and self._fatal is None:
                self._respawn()
            try:
                self._flush()
            except (OSError, ValueError) as exc:  # the pipe broke: the receiver notices, the next round respawns
                log.error("cannot reach the monitor process: %s", exc)
                self._alive.clear()
                time.sleep(0.1)
            if stopping and not self._buffer and not self._urgent:
                return
            if stopping and not self.alive:
                return

    def _flush(self) -> None:
        conn = self._conn
        if conn is None:
            return
        while self._urgent:
            message = self._urgent[0]
            conn.send(message)
            self._urgent.popleft()
        while self._buffer:
            n = min(self.max_batch, len(self._buffer))
            items = [self._buffer.popleft() for _ in range(n)]
            if self._drops:
                drops, self._drops = self._drops, {}
                items.append(("dropped", drops))
            conn.send(("batch", items))

    def _respawn(self) -> None:
        self._fail_waiters("the monitor process stopped before confirming")
        log.error("the monitor process is not running (exit code %s); starting it again", self._exitcode())
        self.restarts.labels(self.model).inc()
        time.sleep(0.2)
        self._spawn()

    def _exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode

    def _receive_loop(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            self._dispatch(message)
        if conn is self._conn:
            self._alive.clear()
            self._fail_waiters("the monitor process stopped before confirming")
            self._wake.set()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "fatal":
            self._fatal = message[1]
            log.error("%s", message[1])
            return
        self._heard = time.monotonic()
        if kind in ("ack", "snapshot"):
            waiter = self._waiters.get(message[1])
            if waiter is not None:
                if kind == "snapshot":
                    waiter.state = message[2]
                waiter.finish(message[2] if kind == "ack" else None)
        elif kind == "metrics":
            self._metrics_text = message[1]
        elif kind == "hold":
            self._hold_until = time.monotonic() + float(message[1])
        elif kind == "poll":
            self._hold_until = 0.0
            self._poll.set()

    def _fail_waiters(self, why: str) -> None:
        for waiter in list(self._waiters.values()):
            if not waiter.done.is_set():
                waiter.finish(why)

"""The monitor process: the guard's background work, out of the request process.

A request process decides; everything else — audit writes, the monitor's windows, drift tests, control charts,
history, alerts and the playbooks — runs here, in a process of its own, so none of it holds the request process's
interpreter lock while a request waits (with it in a thread, every drift test stalled the requests in flight; the
closing notes of issues 6 and 15 measured +40 to +349 ms of added p99). The request side is
:class:`~mlwarden.serve.monitor_link.MonitorLink`; they talk over one duplex pipe:

* request → monitor: ``("batch", [item, ...])`` every few milliseconds, the items being observations
  (``"obs"``), batched audit events (``"audit"``), forensic records (``"record"``), alerts raised on the request
  path (``"alert"``), what is served (``"serving"``) and how many items the request side had to drop
  (``"dropped"``); ``("audit_now", id, event)`` for a decision that must be in the log before its reply;
  ``("snapshot", id)``; ``("stop",)``.
* monitor → request: ``("ack", id, error)`` once an ``audit_now`` event is written (``error`` ``None``) or could
  not be; ``("snapshot", id, state)``; ``("metrics", text)`` (its Prometheus series, every ``metrics_every_s``);
  ``("fatal", message)`` when it cannot start (the request side refuses to serve); ``("beat",)`` every
  :data:`BEAT_S` from the loop that confirms audit writes; ``("hold", seconds)`` when a playbook starts and
  ``("poll",)`` when it ended, so the request side does not read the registry half-way through a
  quarantine-then-rollback and asks it right after.

Playbooks act through the registry (quarantine, rollback); the request process follows the registry and swaps to
the rollback target (warm, when its standby was loaded). The monitor process opens the registry itself with the
service's own principal; it never loads a model.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, NoReturn

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from mlwarden.core.errors import MlwardenError
from mlwarden.monitor.alerts import Alert
from mlwarden.monitor.forensics import ForensicMaterial
from mlwarden.monitor.history import History
from mlwarden.monitor.playbooks import PlaybookRunner
from mlwarden.monitor.runtime import Monitor
from mlwarden.registry.audit.events import AuditEvent
from mlwarden.registry.gates import Gates
from mlwarden.registry.roles import Principal
from mlwarden.registry.service import Registry
from mlwarden.registry.values import parse_ref
from mlwarden.serve.auditor import AuditBacklog, DecisionAuditor
from mlwarden.serve.policy import GuardPolicy

log = logging.getLogger("mlwarden.serve.monitor")

#: The alert raised when request processes had to drop observations because this process fell behind.
OVERFLOW_RULE = "monitor_queue_overflow"
#: The monitor process's thread switch interval (Python's default is 5 ms; see ``_serve``).
SWITCH_INTERVAL_S = 0.0005
#: Seconds between the heartbeats the request side uses to tell a stalled monitor process from a slow write.
BEAT_S = 0.5


@dataclass(frozen=True, slots=True)
class HostConfig:
    """What the monitor process needs (picklable: it crosses the process boundary at spawn).

    Attributes:
        db_url / home / gates: the registry the service serves from (the process opens it itself, with the same
            gates: a rollback passes the deploy gate).
        actor: the service's principal (quarantine and rollback are done as this user).
        model: ``NAME@ALIAS`` or ``NAME:VERSION``, as served.
        policy: the guard policy (its ``monitor`` and ``playbooks`` sections are used here).
        history_dir / forensics_dir: as :class:`~mlwarden.serve.service.ServiceOptions`.
        signer_pem: the forensics signing key, PKCS#8 PEM (``None``: a forensics step fails, audited).
        tick_s: how often alerts, drift tests and control charts are looked at.
        metrics_every_s: how often the Prometheus series are sent to the request side.
        log_level: the process's log level.
        nice: added to the process's niceness at start, so the kernel lets the request processes (and their
            clients) run first when cores are scarce; the buffer absorbs what the monitor process defers.
    """

    db_url: str
    home: str
    actor: Principal
    model: str
    policy: GuardPolicy
    history_dir: str | None
    forensics_dir: str
    gates: Gates | None = None
    signer_pem: bytes | None = None
    tick_s: float = 0.25
    metrics_every_s: float = 1.0
    log_level: str = "WARNING"
    nice: int = 0


class MonitorHost:
    """The monitor side of a guard service (see the module docstring); also a playbook's ``ServingControl``.

    Args:
        registry: the open registry.
        config: the host's configuration.
        conns: the pipes of the request processes it serves.
    """

    def __init__(self, registry: Registry, config: HostConfig, conns: list[Connection]) -> None:
        self.registry = registry
        self.config = config
        self.actor = config.actor
        self.ref = parse_ref(config.model)
        self.policy = config.policy
        self._conns = list(conns)
        self._send_locks = {id(c): threading.Lock() for c in conns}
        self.metrics = CollectorRegistry()
        name = self.ref.model
        self._steps = Counter(
            "mlwarden_monitor_playbook_steps", "Playbook steps run", ["model", "action", "ok"], registry=self.metrics
        )
        self._dropped = Counter(
            "mlwarden_monitor_dropped",
            "Items the request processes dropped because the monitor process fell behind",
            ["model", "kind"],
            registry=self.metrics,
        )
        self._audit_failures = Counter(
            "mlwarden_monitor_audit_failures",
            "Audit events the monitor process could not write",
            ["model"],
            registry=self.metrics,
        )
        self._pending = Gauge(
            "mlwarden_monitor_audit_pending",
            "Audit events queued in the monitor process",
            ["model"],
            registry=self.metrics,
        )
        self.auditor = DecisionAuditor(
            registry.audit(), on_failure=lambda n: self._audit_failures.labels(name).inc(n), urgent=True
        )
        history = History(config.history_dir) if config.history_dir else None
        self.monitor = Monitor(self.policy.monitor, None, model=name, history=history, registry=self.metrics)
        self.runner = PlaybookRunner(
            self.policy.playbooks,
            self,
            audit=self._audit_now,
            signer=_load_signer(config.signer_pem),
            forensics_dir=Path(config.forensics_dir),
        )
        self.records: deque[Mapping[str, Any]] = deque(maxlen=self.policy.limits.records_kept)
        self.serving: dict[str, Any] = {"ref": config.model, "digest": "", "signature_bundle": None}
        self._alerts: queue.Queue[Alert] = queue.Queue(maxsize=10_000)
        self._stop = threading.Event()
        self._tick_thread = threading.Thread(target=self._ticks, name="mlwarden-monitor-tick", daemon=True)

    # -- messages from the request processes ------------------------------------------------------------------

    def run(self) -> None:
        """Read messages until every request process has gone or one said stop."""
        self._tick_thread.start()
        last_beat = -math.inf
        while self._conns and not self._stop.is_set():
            if time.monotonic() - last_beat >= BEAT_S:  # from this loop: it is what confirms audit writes
                last_beat = time.monotonic()
                self._broadcast(("beat",))
            for conn in wait(self._conns, timeout=BEAT_S / 2):
                if not isinstance(conn, Connection):
                    continue
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    self._conns.remove(conn)
                    continue
                try:
                    self.handle(conn, message)
                except Exception:  # one bad message must not stop the monitor; logged with its traceback
                    log.exception("the monitor process could not handle a %r message", message[0])
        self._stop.set()

    def handle(self, conn: Connection, message: tuple[Any, ...]) -> None:
        """One message (see the module docstring)."""
        kind = message[0]
        if kind == "batch":
            for item in message[1]:
                self._item(item)
        elif kind == "audit_now":  # written at once, or by the auditor thread between batch chunks; then acknowledged
            _, ident, event = message

            def done(error: str | None, conn: Connection = conn, ident: int = ident) -> None:
                if error is not None:
                    self._audit_failures.labels(self.ref.model).inc()
                self._send(conn, ("ack", ident, error))

            self.auditor.record_urgent(event, done)
        elif kind == "snapshot":
            state = dict(self.monitor.snapshot())
            state["recent_alerts"] = [a.to_dict() for a in self.monitor.recent_alerts(int(message[2]))]
            state["monitor_process"] = {"pid": os.getpid(), "request_processes": len(self._conns)}
            self._send(conn, ("snapshot", message[1], state))
        elif kind == "stop":
            self._stop.set()

    def _item(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "obs":
            _, features, confidence, latency_s, error, flagged = item
            self.monitor.observe(features, confidence, latency_s, error, flagged)
        elif kind == "audit":
            try:
                self.auditor.record(item[1], now=False)
            except AuditBacklog as exc:
                self._audit_failures.labels(self.ref.model).inc()
                log.error("could not queue an audit event: %s", exc)
        elif kind == "record":
            self.records.append(item[1])
        elif kind == "alert":
            self._queue_alert(item[1])
        elif kind == "serving":
            _, info, baseline, confidence_reference = item
            if info.get("ref") != self.serving.get("ref"):  # several request processes announce the same version
                self.monitor.reset(baseline, confidence_reference)
            self.serving = dict(info)
        elif kind == "dropped":
            counts: Mapping[str, int] = item[1]
            for what, n in counts.items():
                self._dropped.labels(self.ref.model, what).inc(n)
            total = sum(counts.values())
            self._queue_alert(
                Alert(
                    rule=OVERFLOW_RULE,
                    kind="guard",
                    severity="warning",
                    metric="dropped",
                    value=float(total),
                    threshold=0.0,
                    message=f"the monitor process fell behind: the request side dropped {dict(counts)}",
                    at=time.time(),
                    evidence=dict(counts),
                )
            )

    def _queue_alert(self, alert: Alert) -> None:
        try:
            self._alerts.put_nowait(alert)
        except queue.Full:
            log.error("alert queue full; dropped %s", alert.rule)

    # -- background work ------------------------------------------------------------------------------------------

    def _ticks(self) -> None:
        last_metrics = -math.inf
        while not self._stop.wait(self.config.tick_s):
            try:
                self.tick()
                if time.monotonic() - last_metrics >= self.config.metrics_every_s:
                    last_metrics = time.monotonic()
                    self._pending.labels(self.ref.model).set(self.auditor.pending)
                    self._broadcast(("metrics", generate_latest(self.metrics)))
            except Exception:  # the loop must survive anything; the failure is logged with its traceback
                log.exception("monitor tick failed")

    def tick(self) -> None:
        """Admit queued alerts, run the drift tests when due, and respond to every new alert."""
        alert_round(self.monitor, self._alerts, self._respond)

    def _respond(self, alert: Alert) -> None:
        log.warning("alert %s (%s): %s", alert.rule, alert.severity, alert.message)
        acting = any(book.matches(alert) for book in self.runner.playbooks)
        if acting:
            self._broadcast(("hold", 60.0))
        try:
            for step in self.runner.handle(alert):
                self._steps.labels(self.ref.model, step.action, str(step.ok).lower()).inc()
        finally:
            if acting:
                self._broadcast(("poll",))

    # -- ServingControl ---------------------------------------------------------------------------------------

    @property
    def model_ref(self) -> str:
        """``NAME:VERSION`` the request processes said they serve."""
        return str(self.serving["ref"])

    def quarantine(self, reason: str) -> Mapping[str, Any]:
        """Quarantine the served version in the registry."""
        info = self.registry.quarantine(self.actor, self.model_ref, reason)
        return {"version": info.ref, "state": info.state.value}

    def rollback(self) -> Mapping[str, Any]:
        """Move the alias back in the registry; the request processes swap when told to poll (after the playbook)."""
        if self.ref.alias is None:
            raise MlwardenError(f"serving {self.ref.model} by version number: a rollback needs NAME@ALIAS")
        before = self.model_ref
        target = self.registry.rollback(self.actor, self.ref.model, self.ref.alias)
        return {"from": before, "to": target.ref, "request_processes": len(self._conns)}

    def forensic_material(self, window: int) -> ForensicMaterial:
        """The served version (as the request side reported it), recent records, alerts and the monitor's state."""
        records = list(self.records)[-window:] if window > 0 else []
        return ForensicMaterial(
            model_ref=self.model_ref,
            model_digest=str(self.serving.get("digest", "")),
            signature_bundle=self.serving.get("signature_bundle"),
            policy=self.policy.summary(),
            records=records,
            alerts=[a.to_dict() for a in self.monitor.recent_alerts(100)],
            monitor=self.monitor.snapshot(),
        )

    def _audit_now(self, event: AuditEvent) -> None:
        try:
            self.auditor.record(event, now=True)
        except AuditBacklog as exc:
            self._audit_failures.labels(self.ref.model).inc()
            log.error("could not audit %s: %s", event.action, exc)

    # -- pipes ----------------------------------------------------------------------------------------------------

    def _send(self, conn: Connection, message: tuple[Any, ...]) -> None:
        lock = self._send_locks.setdefault(id(conn), threading.Lock())
        with lock:
            try:
                conn.send(message)
            except (OSError, ValueError):  # the request process went away; its pipe is dropped by run()
                pass

    def _broadcast(self, message: tuple[Any, ...]) -> None:
        for conn in list(self._conns):
            self._send(conn, message)

    def close(self) -> None:
        """Stop the tick thread and write every pending audit event."""
        self._stop.set()
        if self._tick_thread.is_alive():
            self._tick_thread.join(10)
        self.auditor.close()


def alert_round(monitor: Monitor, alerts: queue.Queue[Alert], respond: Callable[[Alert], None]) -> None:
    """One round of the monitor's background work (here, or in a thread of the request process).

    Alerts raised on the request path are admitted (cooldowns apply), the drift tests and chart rules run when
    due, and ``respond`` gets every alert that came out of either.
    """
    while True:
        try:
            raised = monitor.raise_alert(alerts.get_nowait())
        except queue.Empty:
            break
        if raised is not None:
            respond(raised)
    if monitor.due():
        for alert in monitor.evaluate():
            respond(alert)


def spawn_shared(config: HostConfig, clients: int) -> tuple[Any, list[Connection]]:
    """Start one monitor process for ``clients`` request processes: (the process, the request side's pipe ends).

    The caller hands pipe ``i`` to request process ``i`` (as a ``multiprocessing`` argument) and then closes its own
    copies, so the monitor process sees each request process go (and stops after the last one).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    pairs = [ctx.Pipe(duplex=True) for _ in range(clients)]
    process = ctx.Process(
        target=host_shared_main, args=([theirs for _, theirs in pairs], config), name="mlwarden-monitor", daemon=False
    )
    process.start()
    for _, theirs in pairs:
        theirs.close()
    return process, [ours for ours, _ in pairs]


def host_shared_main(conns: list[Connection], config: HostConfig) -> None:
    """The body of a monitor process shared by several request processes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops the workers; this one stops after them
    _serve(conns, config)


def host_main(conn: Connection, config: HostConfig) -> None:
    """The monitor process's body (a ``multiprocessing`` target): serve ``conn`` until it closes or says stop."""
    _serve([conn], config)


def _serve(conns: list[Connection], config: HostConfig) -> None:
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The loop that confirms audit writes (blocked and flagged requests wait for it) must get the interpreter lock
    # within a fraction of a millisecond even while a drift test or an audit batch runs on another thread: with
    # Python's default 5 ms switch interval, such requests waited for whole drift evaluations (p99 +40-80 ms).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if config.nice > 0:
        try:
            os.nice(config.nice)
        except OSError as exc:  # not fatal: it only changes who runs first when cores are scarce
            log.warning("could not lower the monitor process's priority: %s", exc)
    try:
        registry = Registry.open(config.db_url, home=Path(config.home), gates=config.gates, upgrade=False)
    except MlwardenError as exc:
        _fatal(conns, f"the monitor process cannot open the registry: {exc}")
    try:
        host = MonitorHost(registry, config, conns)
    except (MlwardenError, OSError, ValueError) as exc:  # e.g. an alert rule on a metric the guard does not keep
        registry.close()
        _fatal(conns, f"the monitor process cannot start: {exc}")
    try:
        host.run()
    finally:
        host.close()
        registry.close()


def _fatal(conns: list[Connection], message: str) -> NoReturn:
    """Tell the request processes why this process cannot run (they refuse to start), and exit 2."""
    log.error("%s", message)
    for conn in conns:
        try:
            conn.send(("fatal", message))
        except (OSError, ValueError):
            pass
        conn.close()
    raise SystemExit(2)


def _load_signer(pem: bytes | None) -> Any:
    if pem is None:
        return None
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(pem, password=None)


def signer_pem(signer: Any) -> bytes | None:
    """A private key as unencrypted PKCS#8 PEM, to hand to the monitor process over its private pipe."""
    if signer is None:
        return None
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    pem: bytes = signer.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return pem

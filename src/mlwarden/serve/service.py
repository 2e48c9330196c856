"""The guard service: one served model, its checks, monitor, playbooks, and the registry behind them.

:class:`GuardService` is what ``mlwarden serve`` runs and what the HTTP app calls. It holds the
:class:`~mlwarden.serve.deployment.Deployment` being served and swaps it atomically (one reference assignment)
when a playbook rolls back or the registry moves the alias, so a request is always answered by exactly one
version and no request waits for a load: the rollback target is kept loaded as a warm standby.

Where the background work runs is ``ServiceOptions.monitor``:

* ``"process"`` (what ``mlwarden serve`` runs): audit writes, the monitor's windows, drift tests, control charts,
  history, alerts and playbooks run in a **monitor process** (:mod:`.monitor_host`), fed through a bounded,
  non-blocking buffer (:mod:`.monitor_link`), so none of it holds this process's interpreter lock while requests
  wait. This process keeps only what a decision needs, the standby, and the registry poll.
* ``"thread"`` (the library default, and what most tests use): the same work in a background thread of this
  process.

Either way a background thread keeps the standby warm and follows the registry (a version quarantined or retired
there stops being served within ``poll_s``; at once when a playbook of the monitor process asks).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlwarden.core.errors import MlwardenError
from mlwarden.monitor.alerts import Alert
from mlwarden.monitor.forensics import ForensicMaterial
from mlwarden.monitor.history import History
from mlwarden.monitor.playbooks import PlaybookRunner
from mlwarden.monitor.runtime import Monitor
from mlwarden.registry.audit.events import AuditEvent
from mlwarden.registry.roles import Principal
from mlwarden.registry.service import Registry
from mlwarden.registry.states import State
from mlwarden.registry.values import parse_ref
from mlwarden.serve.auditor import DecisionAuditor
from mlwarden.serve.auth import TokenCache
from mlwarden.serve.deployment import Deployment, ServeError, prepare
from mlwarden.serve.metrics import ServiceMetrics
from mlwarden.serve.monitor_host import HostConfig, alert_round, signer_pem
from mlwarden.serve.monitor_link import ForwardedRecords, MonitorLink, MonitorUnavailable
from mlwarden.serve.policy import GuardPolicy
from mlwarden.serve.requests import Reply, handle_predict, settle
from mlwarden.serve.state import StateBackend, make_state

log = logging.getLogger("mlwarden.serve")


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """How the service runs (the policy says what it checks).

    Attributes:
        history_dir: where the monitor's history goes (for ``mlwarden monitor report``); ``None``: not kept.
        forensics_dir: where playbooks write forensics bundles.
        signer: Ed25519 private key signing forensics bundles (``None``: the forensics step fails, audited).
        dynamic: also run the sandboxed dynamic analysis when loading a version.
        poll_s: how often the registry is asked whether the served version or alias changed.
        tick_s: the background thread's period (drift tests run when due, at most this often).
        standby: keep the rollback target loaded.
        redis_url: keep per-client state (rate buckets, extraction statistics) in this Redis, shared by every
            worker using it (``mlwarden serve --redis``; overrides the policy's ``state.redis_url``).
        monitor: where the background work runs: ``"thread"`` (in this process) or ``"process"`` (a monitor
            process of its own; see the module docstring).
        log_level: the monitor process's log level.
        monitor_buffer: items (observations, batched audit events, records) the request process holds for the
            monitor process; when it is full they are dropped and counted, and allowed answers get 503 (unaudited
            answers never leave).
        monitor_conn: with ``monitor="process"``, attach to a monitor process shared by several request processes
            over this pipe (``mlwarden serve --workers N``: see :func:`monitor_host_config`).
    """

    history_dir: Path | None = None
    forensics_dir: Path | None = None
    signer: Any = None
    dynamic: bool = False
    poll_s: float = 5.0
    tick_s: float = 0.25
    standby: bool = True
    redis_url: str | None = None
    monitor: Literal["thread", "process"] = "thread"
    log_level: str = "WARNING"
    monitor_buffer: int = 50_000
    monitor_conn: Any = None


@dataclass
class _Halt:
    reason: str
    since: float = field(default_factory=time.time)


class GuardService:
    """See the module docstring.

    Args:
        registry: the open registry.
        actor: the service's own principal (a token with read, quarantine and rollback permissions).
        model: ``NAME@ALIAS`` (follows the alias; rollback possible) or ``NAME:VERSION``.
        policy: the guard policy.
        options: runtime options.
    """

    def __init__(
        self,
        registry: Registry,
        actor: Principal,
        model: str,
        policy: GuardPolicy,
        options: ServiceOptions | None = None,
    ) -> None:
        self.registry = registry
        self.actor = actor
        self.ref = parse_ref(model)
        self.policy = policy
        self.options = options or ServiceOptions()
        self.metrics = ServiceMetrics()
        self.tokens = TokenCache(registry, policy.limits.token_cache_s, keep_warm=policy.limits.token_keep_warm_s)
        self.state: StateBackend = make_state(
            policy.state,
            policy.limits.rate_per_s,
            policy.limits.burst,
            max_clients=policy.limits.max_clients,
            redis_url=self.options.redis_url,
        )
        self.records: deque[dict[str, Any]] | ForwardedRecords = deque(maxlen=policy.limits.records_kept)
        self._current = _bound(prepare(registry, actor, model, policy, dynamic=self.options.dynamic))
        self._standby: Deployment | None = None
        self._standby_checked = 0.0
        self._halt: _Halt | None = None
        self._swap_lock = threading.Lock()
        self._alerts: queue.Queue[Alert] = queue.Queue(maxsize=10_000)
        self.link: MonitorLink | None = None
        self.auditor: DecisionAuditor | MonitorLink
        self.monitor: Monitor | MonitorLink
        self.runner: PlaybookRunner | None = None
        if self.options.monitor == "process":
            self.link = self._start_monitor_process()
            try:
                self.link.wait_ready()  # never serve before the process that audits the decisions runs
            except MonitorUnavailable as exc:
                self.link.close(timeout=5)
                self.state.close()
                raise ServeError(str(exc)) from None
            self.auditor = self.monitor = self.link
            self.records = ForwardedRecords(self.link, policy.limits.records_kept)
            self._announce(self._current)
        else:
            self.auditor = DecisionAuditor(
                registry.audit(), on_failure=lambda n: self.metrics.audit_dropped.labels(self.name).inc(n)
            )
            history = History(self.options.history_dir) if self.options.history_dir else None
            self.monitor = Monitor(
                policy.monitor,
                self._current.baseline.baseline if self._current.baseline else None,
                model=self.name,
                confidence_reference=self._confidence_reference(self._current),
                history=history,
                registry=self.metrics.registry,
            )
            self.runner = PlaybookRunner(
                policy.playbooks,
                self,
                audit=self._audit_now,
                signer=self.options.signer,
                forensics_dir=self.options.forensics_dir or Path("forensics"),
            )
        self._show(self._current)
        self._stop = threading.Event()
        self._last_poll = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="mlwarden-guard", daemon=True)
        self._thread.start()

    # -- what is served -------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The served model's name."""
        return self.ref.model

    @property
    def current(self) -> Deployment:
        """The deployment answering requests now."""
        return self._current

    @property
    def halted(self) -> str | None:
        """Why the service refuses to serve (the registry quarantined or retired the version), or ``None``."""
        return self._halt.reason if self._halt else None

    def _start_monitor_process(self) -> MonitorLink:
        config = monitor_host_config(self.registry, self.actor, str(self.ref), self.policy, self.options)
        return MonitorLink(
            config,
            model=self.name,
            registry=self.metrics.registry,
            max_pending=self.options.monitor_buffer,
            conn=self.options.monitor_conn,
        )

    def _announce(self, deployment: Deployment) -> None:
        """Start the monitor's windows over for ``deployment`` (its baseline; in the monitor process, its identity)."""
        base = deployment.baseline
        baseline = base.baseline if base else None
        reference = self._confidence_reference(deployment)
        if isinstance(self.monitor, MonitorLink):
            info = {
                "ref": deployment.info.ref,
                "digest": deployment.info.digest,
                "signature_bundle": deployment.signature_bundle,
            }
            self.monitor.serving(info, baseline, reference)
        else:
            self.monitor.reset(baseline, reference)

    def extra_metrics(self) -> bytes:
        """The monitor process's Prometheus series (empty in ``thread`` mode: they are in this registry)."""
        return self.link.metrics_text() if self.link is not None else b""

    def _show(self, deployment: Deployment) -> None:
        self.metrics.serving.clear()
        self.metrics.serving.labels(self.name, str(deployment.info.version), deployment.info.digest).set(1)

    @staticmethod
    def _confidence_reference(deployment: Deployment) -> tuple[float, float] | None:
        base = deployment.baseline
        if base is None or base.confidence_mean is None or base.confidence_std is None:
            return None
        return (base.confidence_mean, base.confidence_std)

    def _swap(self, deployment: Deployment, reason: str) -> dict[str, Any]:
        with self._swap_lock:
            before = self._current
            started = time.perf_counter()
            self._current = deployment  # one reference assignment: in-flight requests finish on `before`
            swap_ms = (time.perf_counter() - started) * 1000
            self._halt = None
            if self._standby is not None and self._standby.info.ref == deployment.info.ref:
                self._standby = None
            self._standby_checked = 0.0
        self._announce(deployment)
        self.metrics.swaps.labels(self.name, reason).inc()
        self._show(deployment)
        log.warning("now serving %s (was %s): %s", deployment.info.ref, before.info.ref, reason)
        return {"from": before.info.ref, "to": deployment.info.ref, "swap_ms": round(swap_ms, 3)}

    # -- requests -------------------------------------------------------------------------------------------------

    def predict(self, principal: Principal, name: str, payload: Mapping[str, Any]) -> Reply:
        """Answer one predict request, its audit written (the caller authenticated ``principal``, parsed ``payload``).

        The HTTP app calls :func:`handle_predict` and :func:`settle` separately, so the audit write runs off the
        event loop.
        """
        return settle(self, handle_predict(self, principal, name, payload))

    def audit(self, event: AuditEvent, *, now: bool) -> None:
        """Audit a decision (``now``: before the response; else batched)."""
        self.auditor.record(event, now=now)

    def _audit_now(self, event: AuditEvent) -> None:
        try:
            self.auditor.record(event, now=True)
        except MlwardenError as exc:
            self.metrics.audit_dropped.labels(self.name).inc()
            log.error("could not audit %s: %s", event.action, exc)

    def alert(self, alert: Alert) -> None:
        """Queue an alert raised on the request path (e.g. extraction) for the monitor and the playbooks."""
        if self.link is not None:
            self.link.alert(alert)
            return
        try:
            self._alerts.put_nowait(alert)
        except queue.Full:
            log.error("alert queue full; dropped %s", alert.rule)

    # -- ServingControl (what playbooks call) -----------------------------------------------------------------

    @property
    def model_ref(self) -> str:
        """``NAME:VERSION`` of the version being served."""
        return self._current.info.ref

    def quarantine(self, reason: str) -> Mapping[str, Any]:
        """Quarantine the served version in the registry (a rollback step then switches away from it)."""
        info = self.registry.quarantine(self.actor, self._current.info.ref, reason)
        return {"version": info.ref, "state": info.state.value}

    def rollback(self) -> Mapping[str, Any]:
        """Move the alias back in the registry and serve its new target, warm if the standby was loaded."""
        if self.ref.alias is None:
            raise ServeError(f"serving {self.ref.model} by version number: a rollback needs NAME@ALIAS")
        target = self.registry.rollback(self.actor, self.name, self.ref.alias)
        standby = self._standby
        warm = standby is not None and standby.info.ref == target.ref
        deployment = standby if warm and standby is not None else self._prepare(target.ref)
        result = self._swap(deployment, "rollback")
        return {**result, "warm_standby": warm}

    def forensic_material(self, window: int) -> ForensicMaterial:
        """What a forensics bundle holds: the served version, its signature, recent requests, alerts, state."""
        if not isinstance(self.monitor, Monitor) or not isinstance(self.records, deque):
            raise ServeError("forensics bundles are written by the monitor process")
        current = self._current
        records = list(self.records)[-window:] if window > 0 else []
        return ForensicMaterial(
            model_ref=current.info.ref,
            model_digest=current.info.digest,
            signature_bundle=current.signature_bundle,
            policy=self.policy.summary(),
            records=records,
            alerts=[a.to_dict() for a in self.monitor.recent_alerts(100)],
            monitor=self.monitor.snapshot(),
        )

    # -- background -----------------------------------------------------------------------------------------------

    def _prepare(self, ref: str) -> Deployment:
        return _bound(prepare(self.registry, self.actor, ref, self.policy, dynamic=self.options.dynamic))

    def _loop(self) -> None:
        while not self._stop.wait(self.options.tick_s):
            try:
                self.tick()
            except Exception:  # the loop must survive anything; the failure is logged with its traceback
                log.exception("guard background tick failed")

    def tick(self) -> None:
        """One round of background work (the thread calls it every ``tick_s``; tests may call it directly)."""
        if self.link is not None:
            self._tick_process_mode()
            return
        if not isinstance(self.monitor, Monitor) or self.runner is None:
            raise RuntimeError("internal invariant broken: thread mode without its monitor")
        alert_round(self.monitor, self._alerts, self._respond)
        if time.monotonic() - self._last_poll >= self.options.poll_s:
            self._last_poll = time.monotonic()
            self.poll_registry()
        if self.options.standby and self._standby is None and self.ref.alias is not None:
            self._warm_standby()

    def _tick_process_mode(self) -> None:
        """The monitor process does alerts and drift; here: follow the registry (at once when it asks), standby."""
        asked = self.link is not None and self.link.take_poll()
        held = self.link is not None and self.link.held()  # a playbook is half-way: do not read the registry yet
        if asked or (not held and time.monotonic() - self._last_poll >= self.options.poll_s):
            self._last_poll = time.monotonic()
            self.poll_registry()
        if self.options.standby and self._standby is None and self.ref.alias is not None:
            self._warm_standby()

    def _respond(self, alert: Alert) -> None:
        log.warning("alert %s (%s): %s", alert.rule, alert.severity, alert.message)
        if self.runner is None:
            raise RuntimeError("internal invariant broken: no playbook runner in thread mode")
        for step in self.runner.handle(alert):
            self.metrics.playbook_steps.labels(self.name, step.action, str(step.ok).lower()).inc()

    def _warm_standby(self) -> None:
        if time.monotonic() - self._standby_checked < max(self.options.poll_s, 1.0):
            return
        self._standby_checked = time.monotonic()
        if not (self.ref.alias is not None):
            raise RuntimeError("internal invariant broken: self.ref.alias is not None")
        try:
            target = self.registry.rollback_target(self.actor, self.name, self.ref.alias)
            if target.ref != self._current.info.ref:
                self._standby = self._prepare(target.ref)
                log.info("standby ready: %s", target.ref)
        except MlwardenError as exc:  # no earlier approved version, or it does not verify: no standby
            log.info("no standby for %s@%s: %s", self.name, self.ref.alias, exc)

    def poll_registry(self) -> None:
        """Follow the registry: swap when the alias moved; stop serving a quarantined or retired version."""
        try:
            info = self.registry.resolve(self.actor, self.ref)
        except MlwardenError as exc:
            log.error("cannot check the registry (still serving %s): %s", self._current.info.ref, exc)
            return
        if info.ref != self._current.info.ref and info.state in (State.APPROVED, State.DEPLOYED):
            standby = self._standby
            try:
                warm = standby is not None and standby.info.ref == info.ref
                self._swap(standby if warm and standby is not None else self._prepare(info.ref), "registry")
            except MlwardenError as exc:
                log.error("the alias now points at %s but it cannot be served: %s", info.ref, exc)
            return
        if info.ref == self._current.info.ref and info.state not in (State.APPROVED, State.DEPLOYED):
            if self._halt is None:
                self._halt = _Halt(f"{info.ref} is {info.state.value} in the registry")
                log.error("stopped serving: %s", self._halt.reason)
        elif self._halt is not None and info.state in (State.APPROVED, State.DEPLOYED):
            log.warning("serving again: %s is %s", info.ref, info.state.value)
            self._halt = None

    def close(self) -> None:
        """Stop the background thread and write the pending audit events."""
        self._stop.set()
        self._thread.join(10)
        self.tokens.close()
        self.auditor.close()  # in process mode: the link, which stops the monitor process after its last writes
        self.state.close()


def monitor_host_config(
    registry: Registry, actor: Principal, model: str, policy: GuardPolicy, options: ServiceOptions
) -> HostConfig:
    """What a monitor process for this service needs (the registry it opens, the principal it acts as, ...)."""
    return HostConfig(
        db_url=registry.database.url,
        home=str(registry.home),
        gates=registry.gates,
        actor=actor,
        model=model,
        policy=policy,
        history_dir=str(options.history_dir) if options.history_dir else None,
        forensics_dir=str(options.forensics_dir or Path("forensics")),
        signer_pem=signer_pem(options.signer),
        tick_s=options.tick_s,
        log_level=options.log_level,
    )


def _bound(deployment: Deployment) -> Deployment:
    """Refuse a baseline that does not name exactly the served digest (an empty one included): fail closed.

    The registry hands out only the baseline the approval froze (``VersionInfo.latest``) and refuses unbound
    evidence at attach time; this catches what an older registry accepted.
    """
    baseline, info = deployment.baseline, deployment.info
    if baseline is not None and baseline.model_digest != info.digest:
        raise ServeError(
            f"the baseline of {info.ref} names model digest {baseline.model_digest or '(none)'}, not {info.digest}: "
            "not served; capture it again and approve a new version"
        )
    return deployment

"""Monitoring of the LLM proxy's traffic with the guard's machinery, off the request path.

The request path only builds a small :class:`Record` per request and puts it on a bounded queue without
waiting (:meth:`ProxyMonitor.record`); a full queue drops the record and counts it
(``mlwarden_proxy_monitor_dropped_total{reason="queue_full"}``), so monitoring can never stall a request. A
background thread empties the queue ten times a second (one wake per round, not per request: see
:attr:`ProxyMonitor.drain_every_s`): per **route** (endpoint and model, e.g. ``chat/completions:gpt-4o``) it
keeps one :class:`~mlwarden.monitor.runtime.Monitor` — the guard's windows, drift tests, control charts and
alert rules — fed with the metrics of :data:`~mlwarden.monitor.alerts.PROXY_METRICS`:

- ``block_rate``: 1 when the prompt screen blocked the request, else 0 (every record);
- ``refusal_rate``: 1 when a completion was a refusal (the upstream's ``refusal`` or a stock "I can't"), else 0;
- ``upstream_error_rate``: 1 when the upstream failed (unreachable, 5xx, timeout, a broken stream), else 0
  (requests that reached the upstream);
- ``screen_score`` and ``prompt_chars`` (every record), ``upstream_latency_ms`` (time to the upstream's headers).

The drift tests compare the served requests' ``prompt_chars``, ``screen_score`` and ``upstream_latency_ms``
with a reference: by default the route's first ``warmup`` served requests (a **warm-up window**), or a baseline
file given as ``proxy.monitor.baseline`` (then the same reference for every route). Every ``evaluate_every_s``
the consumer applies the alert rules of routes with at least ``min_requests`` records; an alert's evidence names
its route and the clients behind its bad records (so that a playbook can cut off the one that dominates), and it
goes to the playbook runner, still on the consumer's thread.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlwarden.core.errors import UsageError
from mlwarden.monitor.alerts import PROXY_METRICS, Alert
from mlwarden.monitor.baseline import Baseline, BaselineConfig
from mlwarden.monitor.runtime import Monitor
from mlwarden.serve.proxy.metrics import ProxyMetrics
from mlwarden.serve.proxy.settings import ProxyMonitorSettings

log = logging.getLogger("mlwarden.proxy")

#: Per-request features the drift tests compare with the reference.
FEATURES = ("prompt_chars", "screen_score", "upstream_latency_ms")
_BAD = {"block_rate": "blocked", "refusal_rate": "refused", "upstream_error_rate": "error"}


@dataclass(frozen=True, slots=True)
class Record:
    """What the monitor learns of one request (no text of the prompt or the answer).

    Attributes:
        refused: whether a completion was a refusal (``None``: no completion, e.g. blocked or failed).
        upstream_s: time to the upstream's response headers (``None``: the upstream was not called).
    """

    endpoint: str
    model: str
    client: str
    prompt_chars: int
    screen_score: float
    blocked: bool
    refused: bool | None
    error: bool
    upstream_s: float | None
    at: float

    @property
    def route(self) -> str:
        """``<endpoint>:<model>``."""
        return f"{self.endpoint}:{self.model}"


class _Route:
    def __init__(self, name: str, monitor: Monitor, window: int, warm: bool) -> None:
        self.name, self.monitor = name, monitor
        self.recent: deque[Record] = deque(maxlen=window)
        self.warm: list[list[float]] | None = [] if warm else None
        self.records = 0
        self.unevaluated = 0


def load_reference(path: str) -> Baseline:
    """A baseline file for the proxy's drift tests.

    Raises:
        UsageError: unreadable, malformed, or with numeric features the proxy does not measure.
    """
    try:
        baseline = Baseline.from_json(Path(path).read_bytes())
    except OSError as exc:
        raise UsageError(f"proxy.monitor.baseline {path}: cannot read it ({exc.strerror or exc})") from None
    unknown = set(baseline.numeric_names) - set(FEATURES)
    if unknown or not baseline.numeric_names:
        raise UsageError(f"proxy.monitor.baseline {path}: numeric features must be among {', '.join(FEATURES)}")
    return baseline


class ProxyMonitor:
    """See the module docstring.

    Args:
        settings: the ``proxy.monitor`` section.
        metrics: the proxy's Prometheus series (drops and alerts are counted there).
        on_alert: called with every alert, on the consumer thread (the playbook runner).
    """

    def __init__(
        self,
        settings: ProxyMonitorSettings,
        metrics: ProxyMetrics,
        on_alert: Callable[[Alert], object],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.metrics, self._on_alert, self._clock = settings, metrics, on_alert, clock
        self.reference = load_reference(settings.baseline) if settings.baseline else None
        self.queue: queue.Queue[Record] = queue.Queue(maxsize=settings.queue)
        self._routes: dict[str, _Route] = {}
        self._alerts: deque[Alert] = deque(maxlen=200)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlwarden-proxy-monitor", daemon=True)
        self._thread.start()

    # -- the request path ---------------------------------------------------------------------------------------

    def record(self, rec: Record) -> None:
        """Queue ``rec`` for the consumer, never waiting: a full queue drops it and counts the drop."""
        try:
            self.queue.put_nowait(rec)
        except queue.Full:
            self.metrics.monitor_dropped.labels("queue_full").inc()

    # -- the consumer -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the consumer (records still queued are not processed)."""
        self._stop.set()
        self._thread.join(timeout=10)

    #: Seconds between the consumer's rounds. Each round takes every queued record at once: the consumer wakes
    #: ten times a second, not once per request, so it takes the interpreter lock from the event loop ten times
    #: a second (each wake of a thread in this process can cost the loop up to the switch interval).
    drain_every_s = 0.1

    def _loop(self) -> None:
        every = self.settings.evaluate_every_s
        last = time.monotonic()
        while not self._stop.wait(min(every, self.drain_every_s)):
            try:
                self._drain()
                if time.monotonic() - last >= every:
                    last = time.monotonic()
                    self.evaluate()
            except Exception:
                log.exception("proxy monitor: a record or evaluation failed")

    def _drain(self) -> None:
        """Observe every record queued now (at most one queue's worth: a busy proxy cannot keep it here)."""
        for _ in range(self.settings.queue):
            try:
                rec = self.queue.get_nowait()
            except queue.Empty:
                return
            try:
                self._observe(rec)
            except Exception:
                log.exception("proxy monitor: a record failed")

    def _route(self, rec: Record) -> _Route | None:
        route = self._routes.get(rec.route)
        if route is None:
            if len(self._routes) >= self.settings.max_routes:
                self.metrics.monitor_dropped.labels("max_routes").inc()
                return None
            monitor = Monitor(self.settings, self.reference, model=rec.route, metrics=PROXY_METRICS, clock=self._clock)
            route = _Route(rec.route, monitor, self.settings.window, self.reference is None)
            with self._lock:
                self._routes[rec.route] = route
        return route

    def _observe(self, rec: Record) -> None:
        route = self._route(rec)
        if route is None:
            return
        called = rec.upstream_s is not None or rec.error
        latency = None if rec.upstream_s is None else rec.upstream_s * 1000.0
        values = {
            "block_rate": 1.0 if rec.blocked else 0.0,
            "refusal_rate": None if rec.refused is None else float(rec.refused),
            "upstream_error_rate": float(rec.error) if called else None,
            "screen_score": rec.screen_score,
            "prompt_chars": float(rec.prompt_chars),
            "upstream_latency_ms": latency,
        }
        rows = None
        if latency is not None and not rec.error and not rec.blocked:
            row = {
                "prompt_chars": float(rec.prompt_chars),
                "screen_score": rec.screen_score,
                "upstream_latency_ms": latency,
            }
            baseline = route.monitor.baseline
            if baseline is not None:
                rows = np.array([[row[n] for n in baseline.numeric_names]])
            elif route.warm is not None:
                route.warm.append([row[n] for n in FEATURES])
                if len(route.warm) >= self.settings.warmup:
                    config = BaselineConfig(min_reference=min(50, self.settings.warmup))
                    route.monitor.set_baseline(
                        Baseline.from_reference(np.array(route.warm), feature_names=FEATURES, config=config)
                    )
                    route.warm = None
        route.monitor.observe_values(values, rows)
        with self._lock:
            route.recent.append(rec)
        route.records += 1
        route.unevaluated += 1

    def evaluate(self) -> list[Alert]:
        """Apply the alert rules of every route with enough new records; hand each alert on. The alerts raised."""
        raised: list[Alert] = []
        for route in list(self._routes.values()):
            if route.records < self.settings.min_requests or not route.unevaluated:
                continue
            route.unevaluated = 0
            for alert in route.monitor.evaluate():
                endpoint, _, model = route.name.partition(":")
                evidence = {
                    **alert.evidence,
                    "route": route.name,
                    "endpoint": endpoint,
                    "model": model,
                    "clients": self._clients(route, alert.metric),
                }
                alert = dataclasses.replace(alert, message=f"{route.name}: {alert.message}", evidence=evidence)
                self.metrics.monitor_alerts.labels(route.name, alert.rule, alert.severity).inc()
                with self._lock:
                    self._alerts.append(alert)
                raised.append(alert)
                log.warning("proxy alert %s (%s): %s", alert.rule, alert.severity, alert.message)
                self._on_alert(alert)
        return raised

    def _clients(self, route: _Route, metric: str) -> list[dict[str, Any]]:
        """The clients behind the records an alert on ``metric`` counts, most first (at most 5)."""
        flag = _BAD.get(metric)
        with self._lock:
            records = [r for r in route.recent if flag is None or getattr(r, flag)]
        counts = Counter(r.client for r in records)
        total = max(1, len(records))
        return [{"client": c, "records": n, "share": round(n / total, 4)} for c, n in counts.most_common(5)]

    # -- reading ------------------------------------------------------------------------------------------------

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest records of every route (no texts), oldest first."""
        with self._lock:
            records = sorted((r for route in self._routes.values() for r in route.recent), key=lambda r: r.at)
        return [dataclasses.asdict(r) | {"route": r.route} for r in records[-limit:]] if limit else []

    def recent_alerts(self, limit: int = 50) -> list[Alert]:
        """The newest alerts, oldest first."""
        with self._lock:
            return list(self._alerts)[-limit:]

    def snapshot(self) -> dict[str, Any]:
        """Per route: the monitor's state (rates, charts, drift) and whether its reference is still warming up."""
        with self._lock:
            routes = list(self._routes.values())
        return {
            "queued": self.queue.qsize(),
            "routes": {
                r.name: r.monitor.snapshot() | {"warming_up": r.warm is not None, "warm_rows": len(r.warm or ())}
                for r in routes
            },
        }

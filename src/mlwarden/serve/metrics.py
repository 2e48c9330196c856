"""The guard service's Prometheus metrics (``/metrics``), in a registry of its own per service.

A registry per service (not prometheus_client's global one) keeps two services in one process — the tests
run several — from sharing counters. The monitor adds its ``mlwarden_monitor_*`` series to the same registry.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Latency buckets in seconds: fine below 10 ms, where a guard's added latency lives.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Counters and histograms of one guard service."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mlwarden_guard_requests", "Predict requests by decision", ["model", "version", "decision"], registry=r
        )
        self.rejections = Counter(
            "mlwarden_guard_rejections",
            "Requests refused before the model ran (auth, scope, size, rate, schema)",
            ["model", "reason"],
            registry=r,
        )
        self.checks = Counter("mlwarden_guard_checks", "Check outcomes", ["model", "check", "outcome"], registry=r)
        self.latency = Histogram(
            "mlwarden_guard_request_seconds",
            "Time in the service per predict request (checks, model, filtering)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "mlwarden_guard_model_seconds",
            "Time in the model per request",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.serving = Gauge(
            "mlwarden_guard_serving_info",
            "The version being served (value 1)",
            ["model", "version", "digest"],
            registry=r,
        )
        self.swaps = Counter("mlwarden_guard_swaps", "Served version switches", ["model", "reason"], registry=r)
        self.playbook_steps = Counter(
            "mlwarden_guard_playbook_steps", "Playbook steps run", ["model", "action", "ok"], registry=r
        )
        self.audit_dropped = Counter(
            "mlwarden_guard_audit_failures", "Audit events that could not be written", ["model"], registry=r
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: the request path counts into the same few series every time.

        ``labels()`` costs about two microseconds per call (label validation, a lock); a dictionary lookup a
        tenth of that. The label values are bounded (model, version, decision, check, outcome), and so is this.
        Not for :attr:`serving`, whose series are cleared on a swap.
        """
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

"""The LLM proxy's Prometheus series (``/metrics``): traffic, decisions, screen scores, upstream health, tokens.

The refusal rate is ``mlwarden_proxy_refusals / mlwarden_proxy_completions``: a completion counts as a refusal
when the upstream sets ``message.refusal`` or the answer opens with a stock refusal ("I'm sorry, but I can't").
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from mlwarden.serve.metrics import LATENCY_BUCKETS

_CHARS = (64, 256, 1024, 4096, 16_384, 65_536, 262_144)
_SCORES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_UPSTREAM = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ProxyMetrics:
    """Counters and histograms of one proxy (a registry of its own, like the guard's)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlwarden_proxy_requests", "Requests by endpoint and decision", ["endpoint", "decision"], registry=r
        )
        self.rejections = Counter("mlwarden_proxy_rejections", "Requests refused by the proxy", ["reason"], registry=r)
        self.prompt_chars = Histogram(
            "mlwarden_proxy_prompt_chars", "Characters screened per request", buckets=_CHARS, registry=r
        )
        self.screen_score = Histogram(
            "mlwarden_proxy_screen_score", "Highest screen score per request", ["screen"], buckets=_SCORES, registry=r
        )
        self.upstream_seconds = Histogram(
            "mlwarden_proxy_upstream_seconds",
            "Upstream time to response headers",
            ["endpoint"],
            buckets=_UPSTREAM,
            registry=r,
        )
        self.overhead_seconds = Histogram(
            "mlwarden_proxy_overhead_seconds",
            "Time in the proxy before the upstream call",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "mlwarden_proxy_upstream_errors", "Upstream failures by kind", ["code"], registry=r
        )
        self.completions = Counter("mlwarden_proxy_completions", "Completions (choices) returned", registry=r)
        self.refusals = Counter("mlwarden_proxy_refusals", "Completions that are refusals", registry=r)
        self.tokens = Counter("mlwarden_proxy_tokens", "Tokens used", ["kind", "estimated"], registry=r)
        self.masked = Counter(
            "mlwarden_proxy_masked", "PII and secrets masked in completions", ["detector"], registry=r
        )
        self.leaks = Counter("mlwarden_proxy_prompt_leaks", "Completions reproducing the system message", registry=r)
        self.monitor_dropped = Counter(
            "mlwarden_proxy_monitor_dropped",
            "Monitor records dropped (queue_full: the consumer is behind; max_routes: too many routes)",
            ["reason"],
            registry=r,
        )
        self.monitor_alerts = Counter(
            "mlwarden_proxy_monitor_alerts", "Alerts raised on the traffic", ["route", "rule", "severity"], registry=r
        )
        self.playbook_actions = Counter(
            "mlwarden_proxy_playbook_actions", "Playbook steps run on proxy alerts", ["action", "ok"], registry=r
        )
        self.holds = Counter(
            "mlwarden_proxy_holds",
            "Holds put (cut-offs, quarantines, switches) and lifted",
            ["kind", "event"],
            registry=r,
        )
        self.state_errors = Counter(
            "mlwarden_proxy_state_errors", "Shared-state failures after the answer (budget not charged)", registry=r
        )
        self.audit_dropped = Counter(
            "mlwarden_proxy_audit_failures", "Audit events that could not be written", registry=r
        )

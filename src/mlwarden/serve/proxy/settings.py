"""The ``proxy:`` section of a guard policy: what the LLM proxy screens, masks, budgets and retries.

Validated strictly like the rest of the policy (unknown keys and out-of-range values are refused with the
field's path). Every field has a safe default: block flagged prompts, mask PII and secrets in completions,
flag system-prompt leakage, no budgets (unlimited) until a limit is set.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlwarden.monitor.alerts import AlertRule
from mlwarden.monitor.runtime import MonitorConfig
from mlwarden.serve.proxy.playbooks import ProxyPlaybook


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProxyScreenSettings(_Section):
    """Prompt-injection / jailbreak screening of the request's messages.

    Attributes:
        action: ``block`` refuses the request (400); ``flag`` forwards it and audits the flag; ``strip`` drops the
            flagged messages and forwards the rest (a request left without any user message is refused).
        screen: a registered screen (``heuristic``) or ``module:factory`` (see ``guard/prompt_screen.py``).
        options: keyword options of that screen's factory.
        model: path of a local ONNX classifier used as a second screen (scanned, then loaded; never downloaded).
        model_threshold: probability at or above which the classifier flags a text.
        roles: message roles screened (the operator's own ``system`` messages are not).
    """

    action: Literal["off", "flag", "block", "strip"] = "block"
    screen: str = "heuristic"
    options: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    model_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    roles: tuple[str, ...] = ("user", "tool", "function")

    @field_validator("model")
    @classmethod
    def _local(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            raise ValueError("screen.model must be a local file path (models are never downloaded at run time)")
        return value


class Price(_Section):
    """Price of one model in currency units per 1,000 tokens (prompt and completion)."""

    prompt: float = Field(ge=0.0)
    completion: float = Field(default=0.0, ge=0.0)


class BudgetSettings(_Section):
    """Per-client token and cost budgets over a fixed window (a client is the registry user).

    Attributes:
        tokens: tokens (prompt + completion) a client may use per window (``None``: unlimited).
        cost: currency units a client may spend per window (``None``: unlimited); needs ``prices``.
        window_s: the window's length (it restarts when it ends; default one day).
        prices: model name -> :class:`Price`; ``"*"`` is the price of models not listed.
        max_clients: clients whose use is kept (least recently seen evicted).
    """

    tokens: int | None = Field(default=None, ge=1)
    cost: float | None = Field(default=None, gt=0.0)
    window_s: float = Field(default=86_400.0, gt=0.0)
    prices: dict[str, Price] = Field(default_factory=dict)
    max_clients: int = Field(default=100_000, ge=1)

    @model_validator(mode="after")
    def _cost_needs_prices(self) -> BudgetSettings:
        if self.cost is not None and not self.prices:
            raise ValueError("a cost budget needs a price table (budget.prices)")
        return self


class UpstreamSettings(_Section):
    """How the upstream is called.

    Attributes:
        connect_timeout_s / read_timeout_s: httpx timeouts (a read timeout is between two bytes, not the whole answer).
        total_timeout_s: most time for a non-streamed answer (504 beyond it).
        retries: attempts after the first for retry-safe failures (connect errors, 5xx before any byte was streamed).
        retry_budget: retries allowed as a fraction of requests (plus ``retry_min``), so retries cannot multiply an
            outage's load.
        retry_min: retries always allowed per budget window.
        max_connections: connections to the upstream at most.
    """

    connect_timeout_s: float = Field(default=5.0, gt=0.0, le=300.0)
    read_timeout_s: float = Field(default=60.0, gt=0.0, le=3600.0)
    total_timeout_s: float = Field(default=300.0, gt=0.0, le=3600.0)
    retries: int = Field(default=2, ge=0, le=10)
    retry_budget: float = Field(default=0.2, ge=0.0, le=1.0)
    retry_min: int = Field(default=10, ge=0)
    max_connections: int = Field(default=512, ge=1, le=100_000)


#: The proxy's alert rules unless the policy gives its own (``proxy.monitor.alerts``).
PROXY_RULES = (
    AlertRule(name="proxy-blocks", on="rate:block_rate", above=0.3, severity="warning"),
    AlertRule(name="upstream-errors", on="rate:upstream_error_rate", above=0.2, severity="critical"),
    AlertRule(name="refusal-shift", on="chart:refusal_rate:cusum", severity="warning"),
    AlertRule(name="upstream-latency-shift", on="chart:upstream_latency_ms:ewma", severity="info"),
    AlertRule(name="prompt-drift", on="drift", consecutive=2, severity="warning", cooldown_s=600),
)


class ProxyMonitorSettings(MonitorConfig):
    """Monitoring of the proxy's traffic per route: the guard's ``monitor`` keys plus the proxy's own.

    The windows, drift tests (on prompt characters, screen score and upstream latency), control charts and
    alert rules are the guard's (:class:`~mlwarden.monitor.runtime.MonitorConfig`; rules name the metrics of
    :data:`~mlwarden.monitor.alerts.PROXY_METRICS`). See ``docs/llm-proxy.md``.

    Attributes:
        enabled: monitor at all.
        queue: records held for the background consumer; a full queue drops (and counts) new records, never
            blocking a request.
        evaluate_every_s: how often the consumer applies the alert rules (drift tests follow ``check_every`` and
            ``min_interval_s``).
        min_requests: a route's alerts wait until it has this many records (a rate over 3 requests is noise).
        max_routes: routes (endpoint and model) monitored; records of further routes are dropped and counted.
        warmup: served requests of a route that form its drift reference, when no ``baseline`` file is given.
        baseline: a baseline JSON file (``mlwarden.baseline/1``, numeric features among ``prompt_chars``,
            ``screen_score``, ``upstream_latency_ms``) used as the reference of every route instead of a warm-up.
    """

    alerts: tuple[AlertRule, ...] = PROXY_RULES
    enabled: bool = True
    queue: int = Field(default=10_000, ge=1, le=1_000_000)
    evaluate_every_s: float = Field(default=1.0, gt=0.0, le=3600.0)
    min_requests: int = Field(default=20, ge=1)
    max_routes: int = Field(default=100, ge=1, le=100_000)
    warmup: int = Field(default=500, ge=10, le=1_000_000)
    baseline: str | None = None


class ProxySettings(_Section):
    """The ``proxy:`` section (see the module docstring and ``docs/llm-proxy.md``).

    Attributes:
        screen: prompt screening.
        budget: per-client budgets.
        upstream: timeouts and retries.
        monitor: monitoring of the traffic (:class:`ProxyMonitorSettings`).
        playbooks: what to do on the monitor's alerts (:mod:`mlwarden.serve.proxy.playbooks`).
        leak_action: what a completion reproducing the system message does: ``flag`` audits it, ``mask`` also
            replaces the reproduced span, ``block`` withholds a non-streamed answer (a streamed one is masked).
        leak_min_chars: shortest reproduced span of the system message that counts (after case and whitespace
            folding).
        stream_tail_chars: characters held back between streamed chunks so a value split across chunks is masked
            whole: at least the longest PII/secret span to be caught, and at least ``leak_min_chars``.
        max_prompt_chars: longest text screened per request (longer: 413).
    """

    screen: ProxyScreenSettings = Field(default_factory=ProxyScreenSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    monitor: ProxyMonitorSettings = Field(default_factory=ProxyMonitorSettings)
    playbooks: tuple[ProxyPlaybook, ...] = ()
    leak_action: Literal["off", "flag", "mask", "block"] = "flag"
    leak_min_chars: int = Field(default=40, ge=8, le=10_000)
    stream_tail_chars: int = Field(default=128, ge=32, le=65_536)
    max_prompt_chars: int = Field(default=200_000, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _tail_covers_leak(self) -> ProxySettings:
        # The first leak_min_chars characters of a leak are only known to be one when the last arrives.
        if self.leak_action == "mask" and self.stream_tail_chars < self.leak_min_chars:
            raise ValueError("stream_tail_chars must be >= leak_min_chars when leak_action is mask")
        return self

"""The ``proxy:`` section of a guard policy: what the LLM proxy screens, masks, budgets and retries.

Validated strictly like the rest of the policy (unknown keys and out-of-range values are refused with the
field's path). Every field has a safe default: block flagged prompts, mask PII and secrets in completions,
flag system-prompt leakage, no budgets (unlimited) until a limit is set.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


class ProxySettings(_Section):
    """The ``proxy:`` section (see the module docstring and ``docs/llm-proxy.md``).

    Attributes:
        screen: prompt screening.
        budget: per-client budgets.
        upstream: timeouts and retries.
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

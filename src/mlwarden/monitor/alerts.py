"""Alerts and the rules that raise them.

An :class:`AlertRule` names a condition over the monitor's state — the drift test says drifted, a control chart
left its limits, a rate over the window passed a threshold — with a severity and a cooldown. An :class:`Alert`
is one firing, with the evidence: what was measured, against which threshold, and the details behind it. The
guard raises alerts of its own kind (``guard``, e.g. rule ``extraction``) through the same path, so playbooks
react to all of them alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: Mapping[str, int] = {"info": 0, "warning": 1, "critical": 2}
#: Per-request metrics the monitor keeps (charts and rates).
METRICS = ("confidence", "latency_ms", "error_rate", "flagged_rate")
#: Per-request metrics of the LLM proxy's traffic, per route (:mod:`mlwarden.serve.proxy.monitor`).
PROXY_METRICS = (
    "refusal_rate",
    "block_rate",
    "screen_score",
    "prompt_chars",
    "upstream_latency_ms",
    "upstream_error_rate",
)
CHARTS = ("cusum", "ewma")
_ON = re.compile(r"^(drift|chart:(?P<cm>[a-z_]+):(?P<chart>[a-z]+)|rate:(?P<rm>[a-z_]+))$")


@dataclass(frozen=True, slots=True)
class Alert:
    """One firing of a rule (or a guard alert), with its evidence.

    Attributes:
        rule: the rule's name (``extraction`` etc. for guard alerts).
        kind: ``drift``, ``chart``, ``rate`` or ``guard``.
        severity: ``info``, ``warning`` or ``critical``.
        metric: what was measured (a metric name, ``drift`` or e.g. ``prada_w``).
        value: the measured value.
        threshold: what it was compared with.
        message: one line for people.
        at: unix time.
        evidence: JSON-able details (drifted features and p-values, chart statistic and limits, client...).
    """

    rule: str
    kind: str
    severity: str
    metric: str
    value: float
    threshold: float
    message: str
    at: float
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "rule": self.rule,
            "kind": self.kind,
            "severity": self.severity,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "at": self.at,
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Alert:
        """Inverse of :meth:`to_dict`."""
        return cls(
            str(doc["rule"]),
            str(doc["kind"]),
            str(doc["severity"]),
            str(doc["metric"]),
            float(doc["value"]),
            float(doc["threshold"]),
            str(doc["message"]),
            float(doc["at"]),
            dict(doc.get("evidence") or {}),
        )


class AlertRule(BaseModel):
    """When to raise an alert.

    Attributes:
        name: the alert's name (what playbooks match on).
        on: ``drift``; ``chart:<metric>:<cusum|ewma>``; or ``rate:<metric>`` with ``above``.
        above: threshold of a rate rule (mean of the metric over the window).
        min_features: a drift rule fires when at least this many features (or the joint MMD test) drifted.
        consecutive: ... and the last this many drift evaluations all drifted (a transient burst does not fire).
        severity: ``info``, ``warning`` or ``critical``.
        cooldown_s: the same rule does not fire again within this time.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    on: str
    above: float | None = None
    min_features: int = Field(default=1, ge=1)
    consecutive: int = Field(default=1, ge=1, le=100)
    severity: Severity = "warning"
    cooldown_s: float = Field(default=300.0, ge=0.0)

    @field_validator("on")
    @classmethod
    def _known(cls, value: str) -> str:
        match = _ON.match(value)
        if not match:
            raise ValueError("must be 'drift', 'chart:<metric>:<cusum|ewma>' or 'rate:<metric>'")
        metric = match.group("cm") or match.group("rm")
        if metric is not None and metric not in METRICS + PROXY_METRICS:
            raise ValueError(f"unknown metric {metric!r} (known: {', '.join(METRICS + PROXY_METRICS)})")
        if match.group("chart") is not None and match.group("chart") not in CHARTS:
            raise ValueError(f"unknown chart {match.group('chart')!r} (known: cusum, ewma)")
        return value

    @model_validator(mode="after")
    def _rate_needs_threshold(self) -> AlertRule:
        if self.on.startswith("rate:") and self.above is None:
            raise ValueError(f"rule {self.name}: a rate rule needs 'above'")
        return self

    @property
    def kind(self) -> str:
        """``drift``, ``chart`` or ``rate``."""
        return self.on.split(":", 1)[0]


DEFAULT_RULES = (
    AlertRule(name="input-drift", on="drift", consecutive=2, severity="critical", cooldown_s=600),
    AlertRule(name="confidence-shift", on="chart:confidence:cusum", severity="warning"),
    AlertRule(name="error-rate", on="rate:error_rate", above=0.05, severity="warning"),
    AlertRule(name="latency-shift", on="chart:latency_ms:ewma", severity="info"),
)

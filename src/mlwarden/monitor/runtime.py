"""The live monitor of a served model: windows, drift tests, control charts, alert rules, metrics, history.

:meth:`Monitor.observe` is called on every request and only appends (O(rows), a lock, no test): the inputs to
a sliding window, the per-row confidence, the latency, whether it failed or was flagged, each to its control
charts (CUSUM and EWMA, whose alarms are noted). :meth:`Monitor.evaluate` — on the service's background thread
when :meth:`Monitor.due` — runs the drift tests on the window against the approval baseline, applies the alert
rules (with cooldowns), updates the Prometheus gauges and writes the history the HTML report is drawn from.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mlwarden.core.errors import UsageError
from mlwarden.monitor.alerts import DEFAULT_RULES, METRICS, Alert, AlertRule
from mlwarden.monitor.baseline import Baseline, bin_index
from mlwarden.monitor.drift import DriftConfig, DriftDetector, DriftReport
from mlwarden.monitor.history import History
from mlwarden.monitor.spc import ChartPoint, Cusum, CusumConfig, Ewma, EwmaConfig
from mlwarden.monitor.windows import ScalarWindow, VectorWindow


class DriftSettings(BaseModel):
    """Drift tests run on the input window (see :class:`~mlwarden.monitor.drift.DriftConfig`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # MMD (a permutation test, ~0.1 s per evaluation) is opt-in: it runs on the service's background thread but
    # holds the interpreter meanwhile, which showed in the p99 latency under load.
    tests: tuple[Literal["ks", "psi", "chi2", "mmd"], ...] = Field(default=("ks", "psi", "chi2"), min_length=1)
    alpha: float = Field(default=0.001, gt=0.0, lt=1.0)
    correction: Literal["bonferroni", "bh", "none"] = "bonferroni"
    psi_threshold: float = Field(default=0.25, gt=0.0)
    mmd_permutations: int = Field(default=200, ge=19, le=10_000)

    def config(self) -> DriftConfig:
        """The detector's configuration."""
        return DriftConfig(
            alpha=self.alpha,
            correction=self.correction,
            tests=self.tests,
            psi_threshold=self.psi_threshold,
            psi_moderate=min(0.1, self.psi_threshold),
            mmd_permutations=self.mmd_permutations,
        )


class ChartSettings(BaseModel):
    """Control charts on every metric, fed with the means of ``subgroup`` consecutive observations.

    Subgroup means are the textbook remedy for a per-request stream: they are near-normal whatever the metric's
    own distribution (latency is heavy-tailed, errors are 0/1), and one point per ``subgroup`` requests keeps the
    false-alarm rate per request low. With the defaults (k 0.5, h 8; lambda 0.2, L 3.5) the in-control average
    run length is thousands of subgroups. Means and sigmas are learned from the first ``warmup`` subgroups of live
    traffic; ``confidence_from_baseline`` takes the confidence's from the approval baseline instead (stricter: a
    model already off at start alarms at once; but a small reference set underestimates a heavy-tailed
    confidence's spread — measured: sigma 0.020 on 600 reference rows against 0.031 live — and alarms falsely).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    subgroup: int = Field(default=50, ge=1, le=100_000)
    cusum_k: float = Field(default=0.5, ge=0.0)
    cusum_h: float = Field(default=8.0, gt=0.0)
    ewma_lambda: float = Field(default=0.2, gt=0.0, le=1.0)
    ewma_L: float = Field(default=3.5, gt=0.0)  # noqa: N815 - the standard symbol
    warmup: int = Field(default=20, ge=2)
    confidence_from_baseline: bool = False


class MonitorConfig(BaseModel):
    """What the monitor keeps and tests (see the module docstring).

    Attributes:
        window: input rows (and per-metric values) kept for drift tests and rates.
        min_rows: no drift test on fewer rows.
        check_every: new rows between two drift evaluations.
        min_interval_s: and at least this much time (at 500 requests/s, 200 rows would mean 2.5 tests a second).
        history_every_s: how often chart states are written to the history.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(default=1000, ge=10, le=1_000_000)
    min_rows: int = Field(default=200, ge=10)
    check_every: int = Field(default=200, ge=1)
    min_interval_s: float = Field(default=5.0, ge=0.0)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    charts: ChartSettings = Field(default_factory=ChartSettings)
    alerts: tuple[AlertRule, ...] = DEFAULT_RULES
    history_every_s: float = Field(default=10.0, gt=0.0)


def _prom(registry: Any, model: str) -> dict[str, Any] | None:
    if registry is None:
        return None
    from prometheus_client import Counter, Gauge

    return {
        "p": Gauge(
            "mlwarden_monitor_drift_p_value", "Drift test p-value", ["model", "feature", "test"], registry=registry
        ),
        "stat": Gauge(
            "mlwarden_monitor_drift_statistic", "Drift test statistic", ["model", "feature", "test"], registry=registry
        ),
        "drifted": Gauge(
            "mlwarden_monitor_drift_detected", "1 when the last drift evaluation drifted", ["model"], registry=registry
        ),
        "chart": Gauge(
            "mlwarden_monitor_chart_statistic",
            "Control chart statistic",
            ["model", "metric", "chart"],
            registry=registry,
        ),
        "alerts": Counter("mlwarden_monitor_alerts", "Alerts raised", ["model", "rule", "severity"], registry=registry),
        "rows": Gauge("mlwarden_monitor_window_rows", "Rows in the drift window", ["model"], registry=registry),
    }


class Monitor:
    """See the module docstring. Thread-safe."""

    def __init__(
        self,
        config: MonitorConfig,
        baseline: Baseline | None,
        *,
        model: str,
        confidence_reference: tuple[float, float] | None = None,
        history: History | None = None,
        registry: Any = None,
        clock: Callable[[], float] = time.time,
        metrics: Sequence[str] = METRICS,
    ) -> None:
        self.config = config
        self.model = model
        self.metrics = tuple(metrics)
        unknown = [r.on for r in config.alerts if r.kind != "drift" and r.on.split(":")[1] not in self.metrics]
        if unknown:
            raise UsageError(f"alert rules on metrics this monitor does not keep: {', '.join(unknown)}")
        self.history = history
        self._clock = clock
        self._lock = threading.Lock()
        self._metrics = _prom(registry, model)
        self._alerts: deque[Alert] = deque(maxlen=1000)
        self._fired: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.reset(baseline, confidence_reference)

    def reset(self, baseline: Baseline | None, confidence_reference: tuple[float, float] | None = None) -> None:
        """Start over for a new version: its baseline, empty windows, fresh charts (alerts and cooldowns stay)."""
        cfg = self.config
        with self._lock:
            self.baseline = baseline
            self._detector = (
                DriftDetector(baseline, cfg.drift.config()) if baseline and baseline.numeric_names else None
            )
            width = len(baseline.numeric_names) if baseline else 0
            self._inputs = VectorWindow(width, cfg.window) if width else None
            self._values = {m: ScalarWindow(cfg.window) for m in self.metrics}
            self._charts: dict[tuple[str, str], Cusum | Ewma] = {}
            for metric in self.metrics:
                known = metric == "confidence" and confidence_reference and cfg.charts.confidence_from_baseline
                mean, sigma = confidence_reference if known and confidence_reference else (None, None)
                if sigma is not None and sigma <= 0:
                    mean, sigma = None, None
                c = cfg.charts
                if sigma is not None:
                    sigma = sigma / math.sqrt(c.subgroup)  # the charts see subgroup means
                self._charts[(metric, "cusum")] = Cusum(
                    CusumConfig(k=c.cusum_k, h=c.cusum_h, mean=mean, sigma=sigma, warmup=c.warmup, min_sigma=1e-3)
                )
                self._charts[(metric, "ewma")] = Ewma(
                    EwmaConfig(lam=c.ewma_lambda, L=c.ewma_L, mean=mean, sigma=sigma, warmup=c.warmup, min_sigma=1e-3)
                )
            self._last: dict[tuple[str, str], ChartPoint] = {}
            self._pending: dict[str, list[float]] = {m: [0.0, 0] for m in self.metrics}  # running sum and count
            self._alarms: dict[tuple[str, str], ChartPoint] = {}
            self._new_rows = 0
            self._requests = 0
            self._last_report: DriftReport | None = None
            self._last_history = 0.0
            self._last_drift = -math.inf
            self._streak = 0

    # -- the hot path -----------------------------------------------------------------------------------------------

    def observe(
        self,
        features: np.ndarray | None,
        confidence: Sequence[float] | None,
        latency_s: float,
        error: bool,
        flagged: bool = False,
    ) -> None:
        """Record one request (see the module docstring); never runs a test."""
        with self._lock:
            self._requests += 1
            if features is not None and self._inputs is not None and features.shape[1] == self._inputs.n_features:
                self._inputs.extend(features)
                self._new_rows += len(features)
            self._update("latency_ms", latency_s * 1000.0)
            self._update("error_rate", 1.0 if error else 0.0)
            self._update("flagged_rate", 1.0 if flagged else 0.0)
            for value in confidence or ():
                if math.isfinite(value):
                    self._update("confidence", float(value))

    def observe_values(self, values: Mapping[str, float | None], features: np.ndarray | None = None) -> None:
        """Record one event of a monitor built with its own ``metrics`` (the LLM proxy's); never runs a test.

        ``values`` maps metric names to this event's value (``None`` or a missing name: not measured this time);
        ``features`` (rows by the baseline's numeric features) go to the drift window as in :meth:`observe`.
        """
        with self._lock:
            self._requests += 1
            if features is not None and self._inputs is not None and features.shape[1] == self._inputs.n_features:
                self._inputs.extend(features)
                self._new_rows += len(features)
            for metric, value in values.items():
                if value is not None and metric in self._values and math.isfinite(value):
                    self._update(metric, float(value))

    def set_baseline(self, baseline: Baseline) -> None:
        """Adopt a reference for the drift tests (e.g. one learned from a warm-up) without restarting the charts."""
        with self._lock:
            self.baseline = baseline
            self._detector = DriftDetector(baseline, self.config.drift.config()) if baseline.numeric_names else None
            width = len(baseline.numeric_names)
            self._inputs = VectorWindow(width, self.config.window) if width else None
            self._new_rows = 0

    def _update(self, metric: str, value: float) -> None:
        self._values[metric].append(value)
        pending = self._pending[metric]
        pending[0] += value
        pending[1] += 1
        if pending[1] < self.config.charts.subgroup:
            return
        mean = pending[0] / pending[1]
        pending[0], pending[1] = 0.0, 0
        for chart in ("cusum", "ewma"):
            point = self._charts[(metric, chart)].update(mean)
            self._last[(metric, chart)] = point
            if point.alarm:
                self._alarms[(metric, chart)] = point

    # -- the background thread -------------------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether :meth:`evaluate` has work: enough new rows, a chart alarm, or history to write."""
        now = self._clock()
        return (
            (self._new_rows >= self.config.check_every and now - self._last_drift >= self.config.min_interval_s)
            or bool(self._alarms)
            or (self.history is not None and now - self._last_history >= self.config.history_every_s)
        )

    def evaluate(self) -> list[Alert]:
        """Run the drift tests (when due), apply the alert rules, update metrics and history; the new alerts."""
        now = self._clock()
        with self._lock:
            rows = None
            if (
                self._inputs is not None
                and self._new_rows >= self.config.check_every
                and len(self._inputs) >= self.config.min_rows
                and now - self._last_drift >= self.config.min_interval_s
            ):
                rows = self._inputs.values()
                self._new_rows = 0
                self._last_drift = now
            alarms, self._alarms = self._alarms, {}
            rates = {m: self._values[m].mean() for m in self.metrics}
            charts = dict(self._last)
        report = self._detector.check(rows) if rows is not None and self._detector is not None else None
        if report is not None:
            self._streak = self._streak + 1 if report.drifted else 0
        fired: list[Alert] = []
        for rule in self.config.alerts:
            alert = self._apply(rule, report, alarms, rates, now)
            if alert is not None and self._admit(alert, rule.cooldown_s):
                fired.append(alert)
        self._record(report, rows, charts, now)
        return fired

    def _apply(
        self,
        rule: AlertRule,
        report: DriftReport | None,
        alarms: dict[tuple[str, str], ChartPoint],
        rates: dict[str, float | None],
        now: float,
    ) -> Alert | None:
        if rule.kind == "drift":
            if report is None or not report.drifted or self._streak < rule.consecutive:
                return None
            drifted = report.drifted_results
            features = sorted({r.feature for r in drifted if r.feature is not None})
            joint = any(r.feature is None for r in drifted)
            if len(features) < rule.min_features and not joint:
                return None
            worst = min((r.p_value for r in drifted if r.p_value is not None), default=0.0)
            evidence = {
                "features": features,
                "joint_mmd": joint,
                "consecutive": self._streak,
                "rows": report.n_window,
                "results": [
                    {
                        "test": r.test,
                        "feature": r.feature,
                        "statistic": round(r.statistic, 6),
                        "p_value": r.p_value,
                        "threshold": r.threshold,
                    }
                    for r in drifted[:20]
                ],
            }
            message = f"input drift on {len(features)} feature(s){' and jointly (MMD)' if joint else ''}: " + ", ".join(
                features[:5]
            )
            return Alert(
                rule.name, "drift", rule.severity, "drift", worst, self.config.drift.alpha, message, now, evidence
            )
        if rule.kind == "chart":
            _, metric, chart = rule.on.split(":")
            point = alarms.get((metric, chart))
            if point is None:
                return None
            evidence = {
                "statistic": point.statistic,
                "upper": point.upper,
                "lower": point.lower,
                "index": point.index,
                "direction": point.direction,
            }
            message = f"{metric} {chart.upper()} out of control ({point.direction or 'shift'}) at point {point.index}"
            limit = point.upper if point.statistic > 0 else point.lower
            return Alert(rule.name, "chart", rule.severity, metric, point.statistic, limit, message, now, evidence)
        metric = rule.on.split(":", 1)[1]
        value = rates.get(metric)
        if not (rule.above is not None):
            raise RuntimeError("internal invariant broken: rule.above is not None")
        if value is None or value <= rule.above:
            return None
        message = f"{metric} {value:.3f} over the last {len(self._values[metric])} requests (limit {rule.above})"
        return Alert(rule.name, "rate", rule.severity, metric, value, rule.above, message, now, {})

    def _admit(self, alert: Alert, cooldown_s: float) -> bool:
        with self._lock:
            last = self._fired.get(alert.rule)
            if last is not None and alert.at - last < cooldown_s:
                return False
            self._fired[alert.rule] = alert.at
            self._alerts.append(alert)
            self._counts[alert.severity] = self._counts.get(alert.severity, 0) + 1
        if self._metrics is not None:
            self._metrics["alerts"].labels(self.model, alert.rule, alert.severity).inc()
        if self.history is not None:
            self.history.append({"t": alert.at, "type": "alert", **alert.to_dict()})
        return True

    def raise_alert(self, alert: Alert, cooldown_s: float = 300.0) -> Alert | None:
        """Admit an alert raised elsewhere (the guard's); ``None`` when its rule is cooling down."""
        return alert if self._admit(alert, cooldown_s) else None

    def _record(
        self, report: DriftReport | None, rows: np.ndarray | None, charts: dict[tuple[str, str], ChartPoint], now: float
    ) -> None:
        m = self._metrics
        if m is not None:
            m["rows"].labels(self.model).set(len(self._inputs) if self._inputs is not None else 0)
            for (metric, chart), point in charts.items():
                m["chart"].labels(self.model, metric, chart).set(point.statistic)
        if report is not None:
            with self._lock:
                self._last_report = report
            if m is not None:
                m["drifted"].labels(self.model).set(1 if report.drifted else 0)
                for r in report.results:
                    m["stat"].labels(self.model, r.feature or "*", r.test).set(r.statistic)
                    if r.p_value is not None:
                        m["p"].labels(self.model, r.feature or "*", r.test).set(r.p_value)
        if self.history is None:
            return
        if report is not None and rows is not None:
            self.history.append(
                {
                    "t": now,
                    "type": "drift",
                    "rows": report.n_window,
                    "drifted": report.drifted,
                    "alpha": self.config.drift.alpha,
                    "results": [
                        {
                            "test": r.test,
                            "feature": r.feature,
                            "statistic": r.statistic,
                            "p_value": r.p_value,
                            "threshold": r.threshold,
                            "drifted": r.drifted,
                        }
                        for r in report.results
                    ],
                }
            )
            self.history.append({"t": now, "type": "window", "features": self._histograms(rows)})
        if now - self._last_history >= self.config.history_every_s:
            self._last_history = now
            for (metric, chart), point in charts.items():
                self.history.append(
                    {
                        "t": now,
                        "type": "chart",
                        "metric": metric,
                        "chart": chart,
                        "value": point.value,
                        "statistic": point.statistic,
                        "upper": None if math.isnan(point.upper) else point.upper,
                        "lower": None if math.isnan(point.lower) else point.lower,
                        "alarm": point.alarm,
                        "warmup": point.warmup,
                        "mean": self._values[metric].mean(),
                    }
                )

    def _histograms(self, rows: np.ndarray) -> list[dict[str, Any]]:
        if not (self.baseline is not None):
            raise RuntimeError("internal invariant broken: self.baseline is not None")
        out = []
        for j, name in enumerate(self.baseline.numeric_names):
            profile = self.baseline.feature(name)
            counts = np.bincount(bin_index(rows[:, j], profile.edges), minlength=len(profile.fractions))
            out.append(
                {
                    "feature": name,
                    "edges": list(profile.edges),
                    "baseline": list(profile.fractions),
                    "window": (counts / max(1, len(rows))).tolist(),
                }
            )
        return out

    # -- reading ------------------------------------------------------------------------------------------------------

    def recent_alerts(self, limit: int = 50) -> list[Alert]:
        """The newest alerts, oldest first."""
        with self._lock:
            return list(self._alerts)[-limit:]

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: window sizes, the last drift report, chart states, alert counts."""
        with self._lock:
            report = self._last_report
            return {
                "model": self.model,
                "requests": self._requests,
                "window_rows": len(self._inputs) if self._inputs is not None else 0,
                "rates": {m: self._values[m].mean() for m in self.metrics},
                "drift": None
                if report is None
                else {
                    "drifted": report.drifted,
                    "rows": report.n_window,
                    "drifted_features": sorted({r.feature or "*" for r in report.drifted_results}),
                },
                "charts": {
                    f"{m}:{c}": {"statistic": p.statistic, "alarm": p.alarm, "warmup": p.warmup}
                    for (m, c), p in self._last.items()
                },
                "alerts": dict(self._counts),
            }

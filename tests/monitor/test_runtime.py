"""The live monitor: drift alerts (false-alarm rate and detection delay measured), charts, cooldowns, threads,
Prometheus and history."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from mlwarden.monitor.alerts import Alert, AlertRule
from mlwarden.monitor.baseline import Baseline
from mlwarden.monitor.history import History, read_history
from mlwarden.monitor.runtime import Monitor, MonitorConfig

D = 6


def _rows(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)) + shift


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    return Baseline.from_reference(_rows(2000, 0), feature_names=[f"f{i}" for i in range(D)])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _monitor(baseline: Baseline, **config: object) -> tuple[Monitor, Clock]:
    clock = Clock()
    settings = {"window": 400, "min_rows": 200, "check_every": 100, "min_interval_s": 0, **config}
    return Monitor(MonitorConfig.model_validate(settings), baseline, model="m", clock=clock), clock


def _feed(monitor: Monitor, clock: Clock, rows: np.ndarray) -> list[Alert]:
    fired = []
    for row in rows:
        clock.now += 0.01
        monitor.observe(row[None], [0.9], 0.002, False)
        if monitor.due():
            fired += monitor.evaluate()
    return fired


def test_in_distribution_traffic_raises_no_drift_alert(baseline: Baseline) -> None:
    """Measured: 0 drift alerts over 8,000 in-distribution rows (77 evaluations at alpha 0.001, 2 in a row)."""
    monitor, clock = _monitor(baseline)
    fired = _feed(monitor, clock, _rows(8_000, 1))
    assert [a.rule for a in fired if a.kind == "drift"] == []


def test_a_half_sigma_shift_fires_within_a_few_hundred_rows(baseline: Baseline) -> None:
    """Measured: a 0.5 sigma shift of every feature fires at the second evaluation after the shift fills the
    window (about 400 rows in)."""
    monitor, clock = _monitor(baseline)
    _feed(monitor, clock, _rows(1000, 2))
    delay = None
    for i, row in enumerate(_rows(2000, 3, shift=0.5)):
        if any(a.rule == "input-drift" for a in _feed(monitor, clock, row[None])):
            delay = i + 1
            break
    assert delay is not None
    assert delay <= 600
    (alert,) = [a for a in monitor.recent_alerts() if a.rule == "input-drift"]
    assert alert.severity == "critical"
    assert alert.evidence["consecutive"] >= 2
    assert set(alert.evidence["features"]) <= {f"f{i}" for i in range(D)}


def test_a_confidence_drop_trips_the_cusum_rule_and_cooldown_holds_repeats(baseline: Baseline) -> None:
    clock = Clock()
    config = MonitorConfig.model_validate(
        {
            "window": 400,
            "min_rows": 200,
            "check_every": 10_000,
            "charts": {"subgroup": 10},
            "alerts": [{"name": "conf", "on": "chart:confidence:cusum", "cooldown_s": 60}],
        }
    )
    monitor = Monitor(config, baseline, model="m", confidence_reference=(0.9, 0.05), clock=clock)
    rng = np.random.default_rng(0)
    fired: list[Alert] = []
    for value in rng.normal(0.9, 0.05, 5000):  # 500 subgroups in control
        monitor.observe(None, [float(value)], 0.001, False)
        fired += monitor.evaluate() if monitor.due() else []
    assert fired == []
    for value in rng.normal(0.85, 0.05, 300):  # a one-sigma drop of the confidence
        clock.now += 0.1
        monitor.observe(None, [float(value)], 0.001, False)
        fired += monitor.evaluate() if monitor.due() else []
    assert len(fired) == 1  # the alarms after the first fall within the cooldown
    assert fired[0].evidence["direction"] == "down"
    clock.now += 61
    for value in rng.normal(0.8, 0.05, 300):
        monitor.observe(None, [float(value)], 0.001, False)
        fired += monitor.evaluate() if monitor.due() else []
    assert len(fired) == 2


def test_a_rate_rule_and_guard_alerts(baseline: Baseline) -> None:
    clock = Clock()
    rule = AlertRule(name="errors", on="rate:error_rate", above=0.1, severity="warning")
    monitor = Monitor(MonitorConfig(alerts=(rule,)), baseline, model="m", clock=clock)
    for i in range(100):
        monitor.observe(None, None, 0.001, error=i % 5 == 0)
    (alert,) = monitor.evaluate()
    assert alert.rule == "errors"
    assert alert.value == pytest.approx(0.2)
    guard = Alert("extraction", "guard", "critical", "prada_w", 0.5, 0.92, "client x", clock.now)
    assert monitor.raise_alert(guard) is guard
    assert monitor.raise_alert(guard) is None  # cooling down
    assert [a.rule for a in monitor.recent_alerts()] == ["errors", "extraction"]


def test_observe_is_thread_safe(baseline: Baseline) -> None:
    monitor, _ = _monitor(baseline, window=100_000, check_every=1_000_000)
    rows = _rows(500, 4)

    def work() -> None:
        for row in rows:
            monitor.observe(row[None], [0.5], 0.001, False)

    threads = [threading.Thread(target=work) for _ in range(4)]
    evaluator = threading.Thread(target=lambda: [monitor.evaluate() for _ in range(50)])
    for t in [*threads, evaluator]:
        t.start()
    for t in [*threads, evaluator]:
        t.join()
    snapshot = monitor.snapshot()
    assert snapshot["requests"] == 2000
    assert snapshot["window_rows"] == 2000


def test_metrics_and_history(baseline: Baseline, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    clock = Clock()
    config = MonitorConfig(window=300, min_rows=200, check_every=100, min_interval_s=0, history_every_s=1)
    monitor = Monitor(config, baseline, model="fraud", history=History(tmp_path), registry=registry, clock=clock)
    _feed(monitor, clock, _rows(300, 5, shift=2.0))
    text = generate_latest(registry).decode()
    assert 'mlwarden_monitor_drift_detected{model="fraud"} 1.0' in text
    assert 'mlwarden_monitor_drift_p_value{feature="f0",model="fraud",test="ks"}' in text
    assert 'mlwarden_monitor_alerts_total{model="fraud",rule="input-drift",severity="critical"} 1.0' in text
    kinds = {r["type"] for r in read_history(tmp_path).records}
    assert kinds == {"drift", "window", "chart", "alert"}


def test_reset_starts_over_for_a_new_version(baseline: Baseline) -> None:
    monitor, clock = _monitor(baseline)
    _feed(monitor, clock, _rows(150, 6))
    monitor.reset(baseline)
    assert monitor.snapshot()["window_rows"] == 0
    monitor.reset(None)  # a text model: charts only
    monitor.observe(None, [0.5], 0.001, False)
    assert monitor.snapshot()["window_rows"] == 0


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "x", "on": "chart:speed:cusum"}, "unknown metric"),
        ({"name": "x", "on": "chart:latency_ms:shewhart"}, "unknown chart"),
        ({"name": "x", "on": "rate:error_rate"}, "needs 'above'"),
        ({"name": "x", "on": "weather"}, "must be 'drift'"),
        ({"name": "bad name!", "on": "drift"}, "pattern"),
        ({"name": "x", "on": "drift", "severity": "panic"}, "severity"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(rule: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError, match=message):
        AlertRule.model_validate(rule)

"""CUSUM and EWMA charts: simulated average run lengths against the published tables, and their mechanics.

Measured by simulation with the seeds below (known mean 0 and sigma 1, 1,000 runs each):
- CUSUM k=0.5, h=5: in-control ARL 491 (Montgomery table 9.3: 465); 1-sigma shift ARL 10.5 (table: 10.4).
- EWMA lambda=0.2, L=2.962, exact limits: in-control ARL 490 (table, asymptotic limits: 500); 1-sigma shift
  ARL 9.5 (table: 10.2; the exact limits' narrow start detects a shift from the start sooner).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from mlwarden.core.errors import UsageError
from mlwarden.monitor.spc import ChartPoint, Cusum, CusumConfig, Ewma, EwmaConfig

Chart = Cusum | Ewma


def average_run_length(make: Callable[[], Chart], shift: float, runs: int, seed: int, cap: int = 20_000) -> float:
    """Mean number of points until the first alarm, from a fresh chart each run."""
    rng = np.random.default_rng(seed)
    lengths = []
    for _ in range(runs):
        chart, n, alarmed = make(), 0, False
        while not alarmed and n < cap:
            for x in rng.normal(shift, 1.0, size=256):
                n += 1
                if chart.update(float(x)).alarm:
                    alarmed = True
                    break
        lengths.append(n)
    return float(np.mean(lengths))


def known_cusum() -> Cusum:
    return Cusum(CusumConfig(mean=0.0, sigma=1.0))


def known_ewma() -> Ewma:
    return Ewma(EwmaConfig(mean=0.0, sigma=1.0))


def test_cusum_in_control_arl_is_near_the_table_value() -> None:
    """1,000 in-control runs: ARL 491 vs 465 tabulated (standard error about 16); asserted within 15%."""
    assert average_run_length(known_cusum, 0.0, 1000, seed=1) == pytest.approx(465, rel=0.15)


def test_cusum_detects_a_one_sigma_shift_quickly() -> None:
    """1,000 runs with a 1-sigma shift: ARL 10.5 vs 10.4 tabulated; asserted 8..13."""
    assert 8.0 <= average_run_length(known_cusum, 1.0, 1000, seed=2) <= 13.0


def test_ewma_in_control_arl_is_near_the_table_value() -> None:
    """1,000 in-control runs: ARL 490 vs 500 tabulated for asymptotic limits; asserted within 15%."""
    assert average_run_length(known_ewma, 0.0, 1000, seed=3) == pytest.approx(500, rel=0.15)


def test_ewma_detects_a_one_sigma_shift_quickly() -> None:
    """1,000 runs with a 1-sigma shift: ARL 9.5 vs 10.2 tabulated; asserted 8..12."""
    assert 8.0 <= average_run_length(known_ewma, 1.0, 1000, seed=4) <= 12.0


def test_cusum_follows_the_tabular_recursion() -> None:
    chart = Cusum(CusumConfig(mean=10.0, sigma=2.0, k=0.5, h=4.0))  # K = 1, H = 8
    points = [chart.update(x) for x in [13.0, 14.0, 12.0, 5.0, 4.0]]
    # C+ : 13-11=2, 2+14-11=5, 5+12-11=6, max(0, 6+5-11)=0, 0 ; C- : 0, 0, 0, 9-5=4, 4+9-4=9 > 8 (reported, then reset)
    assert [p.statistic for p in points] == [2.0, 5.0, 6.0, -4.0, -9.0]
    assert [p.alarm for p in points] == [False, False, False, False, True]
    assert points[-1].direction == "down"
    assert points[-1].upper == 8.0
    assert points[-1].lower == -8.0
    assert chart.alarms == 1
    assert chart.upper_sum == chart.lower_sum == 0.0


def test_reset_after_alarm_is_configurable() -> None:
    def alarms(reset: bool) -> list[bool]:
        chart = Cusum(CusumConfig(mean=0.0, sigma=1.0, reset_on_alarm=reset))
        return [chart.update(3.0).alarm for _ in range(6)]  # C+ grows by 2.5 per point, H = 5

    assert alarms(True) == [False, False, True, False, False, True]
    assert alarms(False) == [False, False, True, True, True, True]


def test_ewma_uses_exact_time_varying_limits() -> None:
    lam, width_l, sigma = 0.2, 3.0, 2.0
    chart = Ewma(EwmaConfig(lam=lam, L=width_l, mean=1.0, sigma=sigma))
    points = [chart.update(1.0) for _ in range(200)]
    for i, p in enumerate(points, start=1):
        width = width_l * sigma * math.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * i)))
        assert p.upper == pytest.approx(1.0 + width)
        assert p.lower == pytest.approx(1.0 - width)
    assert points[0].upper - 1.0 == pytest.approx(width_l * sigma * lam)  # first limit: L sigma lambda
    assert points[-1].upper - 1.0 == pytest.approx(width_l * sigma * math.sqrt(lam / (2 - lam)))
    shifted = Ewma(EwmaConfig(lam=0.5, L=3.0, mean=0.0, sigma=1.0))
    zs = [shifted.update(x).statistic for x in (2.0, 2.0)]
    assert zs == [1.0, 1.5]


def test_ewma_reset_restarts_the_statistic_and_the_limits() -> None:
    chart = Ewma(EwmaConfig(lam=0.5, L=1.0, mean=0.0, sigma=1.0))
    first = chart.update(5.0)
    assert first.alarm
    assert first.direction == "up"
    after = chart.update(0.0)
    assert after.statistic == 0.0
    assert after.upper == pytest.approx(first.upper)


def test_warmup_estimates_the_in_control_process_without_alarming() -> None:
    """Latency-like stream N(50, 4): the 200-point warm-up estimates mean and sigma within 10%, then a shift
    of 1 sigma is caught by both charts within 60 points."""
    rng = np.random.default_rng(5)
    cusum = Cusum(CusumConfig(warmup=200))
    ewma = Ewma(EwmaConfig(warmup=200))
    warm = rng.normal(50.0, 4.0, size=200)
    pts: list[ChartPoint] = [c.update(x) for x in warm for c in (cusum, ewma)]
    assert all(p.warmup and not p.alarm and math.isnan(p.upper) for p in pts)
    for chart in (cusum, ewma):
        assert chart.ready
        assert chart.mean == pytest.approx(50.0, rel=0.1)
        assert chart.sigma == pytest.approx(4.0, rel=0.1)
    shifted = rng.normal(54.0, 4.0, size=60)
    for chart in (cusum, ewma):
        hits = [chart.update(x) for x in shifted]
        assert any(p.alarm and p.direction == "up" for p in hits)
        assert hits[0].index == 201
        assert not hits[0].warmup


def test_error_rate_chart_with_a_constant_warmup_does_not_divide_by_zero() -> None:
    chart = Cusum(CusumConfig(warmup=10, min_sigma=0.05))
    for _ in range(10):
        chart.update(0.0)
    assert chart.sigma == 0.05
    assert [chart.update(0.0).alarm for _ in range(50)] == [False] * 50
    assert any(chart.update(1.0).alarm for _ in range(3))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: CusumConfig(k=-1.0), "k must"),
        (lambda: CusumConfig(h=0.0), "h must"),
        (lambda: CusumConfig(h=math.inf), "h must"),
        (lambda: CusumConfig(sigma=0.0), "sigma"),
        (lambda: CusumConfig(mean=math.nan, sigma=1.0), "mean"),
        (lambda: CusumConfig(warmup=1), "warmup"),
        (lambda: EwmaConfig(lam=0.0), "lambda"),
        (lambda: EwmaConfig(lam=1.5), "lambda"),
        (lambda: EwmaConfig(L=-3.0), "L must"),
        (lambda: EwmaConfig(min_sigma=0.0), "min_sigma"),
    ],
)
def test_bad_chart_config_raises_a_clear_error(factory, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=message):
        factory()


def test_non_finite_observations_are_refused() -> None:
    chart = known_ewma()
    with pytest.raises(UsageError, match="finite"):
        chart.update(math.nan)
    assert chart.index == 0

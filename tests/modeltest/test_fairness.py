"""Fairness against models trained with and without a planted group effect, checked against Fairlearn itself."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    equalized_odds_difference,
    selection_rate,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from mlwarden.estimators import subject_from_object
from mlwarden.modeltest.fairness import _weighted_differences, group_names, run
from mlwarden.modeltest.model import ModelTestError, ModelTestOptions, TestContext

from .digits import split

SEEDS = [0, 1, 2]
#: A group shift of ``LEAK`` in the score deciding the label (whose other parts have standard deviation ≈ 1.2).
LEAK = 0.6


def _context(leak: float, seed: int, **options: object) -> TestContext:
    """2000 training and 4000 test rows; group "b" has its label's score raised by ``leak``, group "a" lowered."""
    rng = np.random.default_rng(seed)
    n = 6000
    g = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 4))
    score = x[:, 0] + 0.5 * x[:, 1] + (2.0 * g - 1.0) * leak + rng.normal(scale=0.5, size=n)
    features = np.c_[x, g].astype(np.float32)  # the model sees the group
    y = (score > 0).astype(int)
    model = LogisticRegression().fit(features[:2000], y[:2000])
    subject = subject_from_object(model, features[:5])
    groups = np.where(g[2000:] == 1, "b", "a")
    opts = ModelTestOptions(seed=seed, max_rows=4000, **options)  # type: ignore[arg-type]
    return TestContext(subject, features[2000:], subject.encode(y[2000:]), opts, s_test=groups)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_label_decided_partly_by_the_group_shows_a_parity_gap(seed: int) -> None:
    metrics = run(_context(LEAK, seed)).metrics
    assert metrics["demographic_parity_difference"] > 0.2
    low, high = metrics["demographic_parity_difference_ci95"]
    assert 0.2 < low <= metrics["demographic_parity_difference"] <= high
    by_group = metrics["by_group"]
    assert by_group["b"]["selection_rate"] > by_group["a"]["selection_rate"] + 0.2
    assert by_group["a"]["count"] + by_group["b"]["count"] == 4000


@pytest.mark.parametrize("seed", SEEDS)
def test_without_the_leak_the_gap_is_small(seed: int) -> None:
    metrics = run(_context(0.0, seed)).metrics
    assert metrics["demographic_parity_difference"] < 0.1
    assert metrics["equalized_odds_difference"] < 0.1
    assert metrics["demographic_parity_difference_ci95"][1] < 0.1


def test_the_numbers_are_fairlearns_own() -> None:
    ctx = _context(LEAK, 4)
    result = run(ctx)
    y_pred = ctx.subject.predict(ctx.x_test)
    s = ctx.s_test
    metrics = result.metrics
    assert metrics["demographic_parity_difference"] == demographic_parity_difference(
        ctx.y_test, y_pred, sensitive_features=s
    )
    assert metrics["equalized_odds_difference"] == equalized_odds_difference(ctx.y_test, y_pred, sensitive_features=s)
    frame = MetricFrame(
        metrics={"accuracy": accuracy_score, "selection_rate": selection_rate, "count": count},
        y_true=ctx.y_test,
        y_pred=y_pred,
        sensitive_features=s,
    )
    for group in ("a", "b"):
        assert metrics["by_group"][group] == {
            "accuracy": frame.by_group.loc[group, "accuracy"],
            "selection_rate": frame.by_group.loc[group, "selection_rate"],
            "count": frame.by_group.loc[group, "count"],
        }
    assert result.rows == {"test": 4000, "groups": 2}
    assert result.parameters["bootstrap"] == 1000
    assert result.parameters["positive_classes"] == [1]


def test_positive_class_zero_swaps_the_selection_rates() -> None:
    ctx = _context(LEAK, 0, overrides={"fairness": {"positive_class": 0}})
    metrics = run(ctx).metrics
    y_pred = ctx.subject.predict(ctx.x_test)
    expected = demographic_parity_difference(ctx.y_test == 0, y_pred == 0, sensitive_features=ctx.s_test)
    assert metrics["demographic_parity_difference"] == expected
    share_b = float(np.mean(y_pred[ctx.s_test == "b"] == 0))
    assert metrics["by_group"]["b"]["selection_rate"] == pytest.approx(share_b)


def test_multiclass_is_one_vs_rest_and_reports_the_largest_gap() -> None:
    x_train, y_train, x_test, y_test = split()
    model = LogisticRegression(max_iter=500).fit(x_train, y_train)
    subject = subject_from_object(model, x_test[:5])
    groups = np.where(y_test < 5, "low", "high")  # groups that differ in their digits: large gaps by design
    ctx = TestContext(subject, x_test, subject.encode(y_test), ModelTestOptions(seed=0), s_test=groups)
    metrics = run(ctx).metrics
    y_pred = subject.predict(x_test)
    per_class = [demographic_parity_difference(y_test == k, y_pred == k, sensitive_features=groups) for k in range(10)]
    per_class_eo = [equalized_odds_difference(y_test == k, y_pred == k, sensitive_features=groups) for k in range(10)]
    assert metrics["demographic_parity_difference"] == max(per_class)
    assert metrics["equalized_odds_difference"] == max(per_class_eo)
    assert metrics["per_class"]["3"]["demographic_parity_difference"] == per_class[3]
    worst = metrics["selection_rate_class"]

    def rate_of_worst(t: np.ndarray, p: np.ndarray) -> float:
        return float(selection_rate(t, p, pos_label=worst))

    frame = MetricFrame(metrics=rate_of_worst, y_true=y_test, y_pred=y_pred, sensitive_features=groups)
    assert metrics["by_group"]["low"]["selection_rate"] == frame.by_group["low"]


def test_the_bootstrap_statistic_at_unit_weights_is_fairlearns() -> None:
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 2, 300).astype(bool), rng.integers(0, 2, 300).astype(bool)
    groups = rng.choice(["x", "y", "z"], 300)
    member = np.eye(3)[np.unique(groups, return_inverse=True)[1]]
    dp, eo = _weighted_differences(np.ones((1, 300)), member, y_true, y_pred)
    assert dp[0] == pytest.approx(demographic_parity_difference(y_true, y_pred, sensitive_features=groups))
    assert eo[0] == pytest.approx(equalized_odds_difference(y_true, y_pred, sensitive_features=groups))


def test_missing_sensitive_values_form_their_own_group() -> None:
    names = group_names(np.array([1.0, float("nan"), None, "f", 2], dtype=object))
    assert names.tolist() == ["1", "<missing>", "<missing>", "f", "2"]


def test_fairness_refuses_what_it_cannot_measure() -> None:
    ctx = _context(0.0, 0)
    ctx.s_test = None
    with pytest.raises(ModelTestError, match="--sensitive"):
        run(ctx)
    ctx.s_test = np.full(4000, "a")
    with pytest.raises(ModelTestError, match="single value"):
        run(ctx)
    ctx = _context(0.0, 0, overrides={"fairness": {"positive_class": 2}})
    with pytest.raises(ModelTestError, match="positive_class"):
        run(ctx)


@pytest.mark.parametrize(("classes", "positives"), [(2, [1]), (4, [0, 1, 2, 3])])
def test_cell_count_bootstrap_matches_the_row_bootstrap(classes: int, positives: list[int]) -> None:
    # The multinomial draw of (group, true, predicted) counts is the row bootstrap's distribution: with
    # 4000 resamples each, the percentile intervals agree to within Monte Carlo noise (~0.005 here).
    from mlwarden.modeltest.fairness import _multinomial_cis, _row_cis

    rng = np.random.default_rng(5)
    n = 1500
    codes = rng.integers(0, 3, n)
    y_true = rng.integers(0, classes, n)
    flip = rng.random(n) < 0.2 + 0.1 * codes  # error rates differ by group
    y_pred = np.where(flip, rng.integers(0, classes, n), y_true)
    cells = _multinomial_cis(codes, 3, classes, y_true, y_pred, positives, 4000, 1)
    rows = _row_cis(codes, 3, y_true, y_pred, positives, 4000, 2)
    for a, b in zip(cells, rows, strict=True):
        assert a == pytest.approx(b, abs=0.012)
    assert cells[0][1] - cells[0][0] > 0.03  # a real interval, not a point

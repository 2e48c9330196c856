"""Fairness with Fairlearn: positive rates and error rates of the model compared between sensitive groups.

On the test rows (at most ``max_rows``, a seeded sample) the model's predicted classes are compared per group of
``ctx.s_test`` with Fairlearn: ``MetricFrame`` gives accuracy, selection rate and count per group;
``demographic_parity_difference`` (largest minus smallest selection rate) and ``equalized_odds_difference``
(the larger of the between-group differences in true-positive and false-positive rates) give the gaps.

Binary models: the positive outcome is class index ``positive_class`` (default 1). Multi-class models: each
class is taken one-vs-rest as the positive outcome and the largest difference over the classes is reported
(``per_class`` holds every class's; ``positive_class`` set to an index restricts it to that class).

The 95 % intervals of the two differences come from ``bootstrap`` resamples of the rows (seeded; each resample
recomputes the same statistic, the maximum over classes included; groups absent from a resample are left out of
it, as Fairlearn does for groups absent from the data). The point values are Fairlearn's own.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from mlwarden.modeltest.model import ModelTestError, TestContext, TestResult

DEFAULTS: dict[str, Any] = {"positive_class": None, "bootstrap": 1000}
MISSING = "<missing>"


def run(ctx: TestContext) -> TestResult:
    """Demographic parity and equalized odds differences (bootstrap 95 % CIs) and per-group rates."""
    started = time.perf_counter()
    params = ctx.options.params("fairness", DEFAULTS)
    seed = ctx.options.seed
    if ctx.s_test is None:
        raise ModelTestError("fairness: needs the sensitive attribute (--sensitive)")
    resamples = params["bootstrap"]
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ModelTestError(f"fairness: bootstrap must be a whole number ≥ 100, got {resamples!r}")
    n_classes = int(ctx.subject.n_classes)
    positives = _positive_classes(params["positive_class"], n_classes)
    index = np.random.default_rng(seed).permutation(len(ctx.x_test))[: ctx.options.max_rows]
    groups = group_names(np.asarray(ctx.s_test, dtype=object)[index])
    if len(set(groups.tolist())) < 2:
        raise ModelTestError("fairness: the sensitive attribute has a single value in the test data")
    y_true = np.asarray(ctx.y_test)[index]
    y_pred = ctx.subject.predict(np.asarray(ctx.x_test)[index])
    per_class = {int(k): _differences(y_true == k, y_pred == k, groups) for k in positives}
    worst_dp = max(per_class, key=lambda k: per_class[k][0])
    dp_ci, eo_ci = bootstrap_cis(y_true, y_pred, groups, positives, resamples, seed)
    metrics = {
        "demographic_parity_difference": per_class[worst_dp][0],
        "demographic_parity_difference_ci95": dp_ci,
        "equalized_odds_difference": max(v[1] for v in per_class.values()),
        "equalized_odds_difference_ci95": eo_ci,
        "by_group": by_group(y_true, y_pred, groups, worst_dp),
        "selection_rate_class": worst_dp,
        "per_class": {
            str(k): {"demographic_parity_difference": dp, "equalized_odds_difference": eo}
            for k, (dp, eo) in per_class.items()
        },
    }
    parameters = {
        **params,
        "positive_classes": positives,
        "multiclass": "one-vs-rest, maximum over classes" if n_classes > 2 else None,
        "ci": "bootstrap over rows, percentile",
    }
    rows = {"test": len(index), "groups": len(set(groups.tolist()))}
    return TestResult("fairness", parameters, seed, rows, time.perf_counter() - started, metrics)


def _positive_classes(given: Any, n_classes: int) -> list[int]:
    if given is None:
        return [1] if n_classes == 2 else list(range(n_classes))
    if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given < n_classes:
        raise ModelTestError(f"fairness: positive_class must be a class index 0…{n_classes - 1}, got {given!r}")
    return [given]


def group_names(values: np.ndarray) -> np.ndarray:
    """The sensitive values as group names (text; missing values form the group ``<missing>``)."""
    out = []
    for v in values.tolist():
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        out.append(MISSING if missing else _name(v))
    return np.asarray(out, dtype=object)


def _name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _differences(true_pos: np.ndarray, pred_pos: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Fairlearn's demographic parity and equalized odds differences for one positive outcome."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    t, p = true_pos.astype(int), pred_pos.astype(int)
    dp = float(demographic_parity_difference(t, p, sensitive_features=groups))
    eo = float(equalized_odds_difference(t, p, sensitive_features=groups))
    return dp, eo


def by_group(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, positive: int) -> dict[str, dict[str, Any]]:
    """Fairlearn ``MetricFrame``: accuracy, selection rate of class ``positive`` and count per group."""
    from fairlearn.metrics import MetricFrame, count, selection_rate
    from sklearn.metrics import accuracy_score

    def positive_rate(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(selection_rate(y_true, y_pred, pos_label=positive))

    frame = MetricFrame(
        metrics={"accuracy": accuracy_score, "selection_rate": positive_rate, "count": count},
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    table = frame.by_group
    return {
        str(g): {
            "accuracy": float(table.loc[g, "accuracy"]),
            "selection_rate": float(table.loc[g, "selection_rate"]),
            "count": int(table.loc[g, "count"]),
        }
        for g in table.index
    }


def bootstrap_cis(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, positives: list[int], resamples: int, seed: int
) -> tuple[list[float], list[float]]:
    """Percentile 95 % intervals of both differences over ``resamples`` row resamples (seeded).

    Drawn as multinomial cell counts (:func:`_multinomial_cis`) unless groups × classes² is large; then as a weight
    per row (how often it was drawn), so every group's counts are weighted sums: one
    matrix product of the weights with six indicator columns per group (rows, predicted positive, true positive,
    true and predicted positive, true negative, true negative and predicted positive). The counts are sums of
    small integers, exact in float64, so the result does not depend on how the products are blocked.
    """
    names, codes = np.unique(groups.astype(str), return_inverse=True)
    k_classes = int(max(y_true.max(initial=0), y_pred.max(initial=0), *positives)) + 1
    if len(names) * k_classes * k_classes <= 100_000:
        return _multinomial_cis(codes, len(names), k_classes, y_true, y_pred, positives, resamples, seed)
    return _row_cis(codes, len(names), y_true, y_pred, positives, resamples, seed)


def _row_cis(
    codes: np.ndarray, n_groups: int, y_true: np.ndarray, y_pred: np.ndarray, positives: list[int], resamples: int,
    seed: int,
) -> tuple[list[float], list[float]]:  # fmt: skip
    """The bootstrap as row weights: each resample's counts are one product with the indicator columns."""
    names = range(n_groups)
    rng = np.random.default_rng(seed)
    member = np.eye(len(names))[codes]  # rows × groups
    n, g = len(y_true), len(names)
    columns = {k: _indicators(member, y_true == k, y_pred == k) for k in positives}
    dp = np.full(resamples, -np.inf)
    eo = np.full(resamples, -np.inf)
    chunk = max(1, 4_000_000 // n)
    block = 100  # resamples per product: the weights of a block stay in cache
    for start in range(0, resamples, chunk):
        drawn = rng.integers(0, n, (min(chunk, resamples - start), n))
        for i in range(0, len(drawn), block):
            part = drawn[i : i + block]
            b = len(part)
            weights = np.bincount((part + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n)
            weights = weights.reshape(b, n).astype(np.float64)  # times each row was drawn
            rows = slice(start + i, start + i + b)
            for k in positives:
                d, e = _gaps(weights @ columns[k], g)
                dp[rows] = np.maximum(dp[rows], d)
                eo[rows] = np.maximum(eo[rows], e)
    return _percentiles(dp), _percentiles(eo)


def _multinomial_cis(
    codes: np.ndarray, g: int, k: int, y_true: np.ndarray, y_pred: np.ndarray, positives: list[int], resamples: int,
    seed: int,
) -> tuple[list[float], list[float]]:  # fmt: skip
    """The row bootstrap drawn as cell counts.

    Every statistic depends on the rows only through the counts of (group, true class, predicted class), and
    resampling n rows with replacement draws those counts from a multinomial(n, observed shares): the same
    distribution, without materialising n × resamples row indices.
    """
    cells = np.bincount((codes * k + y_true) * k + y_pred, minlength=g * k * k)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(y_true), cells / cells.sum(), size=resamples).reshape(resamples, g, k, k)
    draws = draws.astype(np.float64)
    total = draws.sum(axis=(2, 3))
    dp = np.full(resamples, -np.inf)
    eo = np.full(resamples, -np.inf)
    for c in positives:
        predicted = draws[:, :, :, c].sum(axis=2)
        true_pos = draws[:, :, c, :].sum(axis=2)
        hits = draws[:, :, c, c]
        tpr_gap = _spread(true_pos, hits)
        fpr_gap = _spread(total - true_pos, predicted - hits)
        dp = np.maximum(dp, _spread(total, predicted))
        eo = np.maximum(eo, np.maximum(tpr_gap, fpr_gap))
    return _percentiles(dp), _percentiles(eo)


def _indicators(member: np.ndarray, true_pos: np.ndarray, pred_pos: np.ndarray) -> np.ndarray:
    """Rows × (6 · groups): membership, and membership × (predicted, true, both, true negative, false positive)."""
    t, p = true_pos[:, None], pred_pos[:, None]
    return np.hstack([member, member * p, member * t, member * (t & p), member * ~t, member * (~t & p)])


def _gaps(counts: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Per resample, from its weighted counts: the selection-rate gap, and the larger of the TPR and FPR gaps."""
    dp = _spread(counts[:, 0:g], counts[:, g : 2 * g])
    tpr = _spread(counts[:, 2 * g : 3 * g], counts[:, 3 * g : 4 * g])
    return dp, np.maximum(tpr, _spread(counts[:, 4 * g : 5 * g], counts[:, 5 * g :]))


def _weighted_differences(
    weights: np.ndarray, member: np.ndarray, true_pos: np.ndarray, pred_pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per resample (a row of ``weights``): max − min over groups of the selection rate, and of TPR / FPR."""
    return _gaps(weights @ _indicators(member, true_pos, pred_pos), member.shape[1])


def _spread(total: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Per resample: max − min over groups of ``hits / total`` (groups absent from a resample are ignored)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(total > 0, hits / np.where(total > 0, total, 1.0), np.nan)
    return np.nan_to_num(np.nanmax(rate, axis=1) - np.nanmin(rate, axis=1), nan=0.0)


def _percentiles(values: np.ndarray) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]

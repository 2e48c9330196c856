"""Label errors and label-flip poisoning by confident learning; outliers by isolation forest.

A quick model is trained by k-fold cross-validation so that every row gets a predicted class distribution from
a model that never saw it (``cross_val_predict``); cleanlab's ``find_label_issues`` then flags the rows whose given
label the out-of-fold probabilities contradict, using per-class thresholds (Northcutt et al., "Confident
learning", JAIR 2021). A flip attack shows up as issues concentrated on one (given → suggested) pair, so those
pairs are counted. Tabular data uses histogram gradient boosting, free text TF-IDF with logistic regression.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlwarden.datacheck.features import design
from mlwarden.datacheck.model import CheckResult, ColumnInfo, Rate


def quick_model(features: Sequence[ColumnInfo], seed: int) -> tuple[Any, str]:
    """The cross-validated model: TF-IDF + logistic regression with text, gradient boosting without."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    transformer, sparse = design(features)
    if sparse:
        return make_pipeline(transformer, LogisticRegression(max_iter=1000, C=4.0)), "tfidf+logistic_regression"
    booster = HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=seed)
    return make_pipeline(transformer, booster), "hist_gradient_boosting"


def out_of_fold_probabilities(
    frame: pd.DataFrame, labels: np.ndarray, features: Sequence[ColumnInfo], seed: int, folds: int
) -> tuple[np.ndarray, str]:
    """Out-of-fold predicted probabilities (rows × classes, classes in ``np.unique`` order)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    model, name = quick_model(features, seed)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One OpenMP/BLAS thread, folds one after the other: on a busy 2-core machine spinning OpenMP threads made a
    # 1 s fit take 40 s, and parallel folds were slower too (86 s against 59 s for 100,000 rows at load 11).
    with threadpool_limits(limits=1):
        probabilities = cross_val_predict(
            model, frame[[c.name for c in features]], labels, cv=cv, method="predict_proba"
        )
    return np.asarray(probabilities, dtype=np.float64), name


def label_issues(
    frame: pd.DataFrame,
    features: Sequence[ColumnInfo],
    label: str,
    *,
    sensitive: str | None,
    seed: int,
    folds: int,
    population: int,
    max_listed: int = 100,
) -> CheckResult:
    """Run confident learning over the sampled rows ``frame`` (index: row numbers)."""
    from cleanlab.filter import find_label_issues

    started = time.perf_counter()
    parameters: dict[str, Any] = {"folds": folds, "filter_by": "prune_by_noise_rate", "sampled_rows": len(frame)}
    parameters["population_rows"] = population
    given = frame[label].astype(str)
    counts = given.value_counts()
    rare = sorted(counts[counts < folds].index)
    parameters["excluded_classes"] = rare
    usable = frame[~given.isin(rare)]
    names, codes = np.unique(usable[label].astype(str).to_numpy(), return_inverse=True)
    if len(names) < 2 or not features:
        reason = "fewer than two classes with enough rows" if len(names) < 2 else "no feature columns"
        return CheckResult("label_issues", parameters, seed, len(usable), time.perf_counter() - started,
                           status="skipped", reason=reason)  # fmt: skip
    probabilities, model_name = out_of_fold_probabilities(usable, codes, features, seed, folds)
    parameters["model"] = model_name
    ranked = find_label_issues(
        labels=codes,
        pred_probs=probabilities,
        filter_by="prune_by_noise_rate",
        return_indices_ranked_by="self_confidence",
        n_jobs=1,
    )
    ranked = np.asarray(ranked, dtype=np.int64)
    suggested = probabilities.argmax(axis=1)
    rows = usable.index.to_numpy()
    n = len(usable)
    pairs = Counter((str(names[codes[i]]), str(names[suggested[i]])) for i in ranked)
    per_class = {
        str(name): Rate(int(np.sum(codes[ranked] == k)), int(np.sum(codes == k))).to_dict()
        for k, name in enumerate(names)
    }
    metrics: dict[str, Any] = {
        "issues": Rate(len(ranked), n).to_dict(),
        "out_of_fold_accuracy": float(np.mean(suggested == codes)),
        "by_given_label": per_class,
        "flip_pairs": [{"given": g, "suggested": s, "count": c} for (g, s), c in pairs.most_common(10)],
    }
    if sensitive:
        flagged = np.zeros(n, dtype=bool)
        flagged[ranked] = True
        groups = usable[sensitive].astype(str).to_numpy()
        metrics["by_sensitive_group"] = {
            str(g): Rate(int(flagged[groups == g].sum()), int(np.sum(groups == g))).to_dict() for g in np.unique(groups)
        }
    samples = tuple(
        {
            "row": int(rows[i]),
            "given": str(names[codes[i]]),
            "suggested": str(names[suggested[i]]),
            "given_label_probability": round(float(probabilities[i, codes[i]]), 4),
        }
        for i in ranked[:max_listed]
    )
    metrics["flagged_rows"] = sorted(int(rows[i]) for i in ranked)
    return CheckResult("label_issues", parameters, seed, n, time.perf_counter() - started, metrics, samples)


def outliers(
    frame: pd.DataFrame, features: Sequence[ColumnInfo], *, seed: int, population: int, max_listed: int = 20
) -> CheckResult:
    """IsolationForest (``contamination="auto"``: the original paper's 0.5 score threshold) on dense features."""
    from sklearn.ensemble import IsolationForest

    started = time.perf_counter()
    dense = [c for c in features if c.kind in ("numeric", "categorical")]
    parameters: dict[str, Any] = {"n_estimators": 100, "contamination": "auto", "sampled_rows": len(frame)}
    parameters["population_rows"] = population
    if not dense or frame.empty:
        return CheckResult("outliers", parameters, seed, len(frame), time.perf_counter() - started,
                           status="skipped", reason="no numeric or categorical columns")  # fmt: skip
    transformer, _ = design(dense)
    matrix = np.asarray(transformer.fit_transform(frame[[c.name for c in dense]]), dtype=np.float64)
    medians = np.nanmedian(np.where(np.isfinite(matrix), matrix, np.nan), axis=0)
    matrix = np.where(np.isfinite(matrix), matrix, np.nan_to_num(medians)[None, :])
    from threadpoolctl import threadpool_limits

    forest = IsolationForest(n_estimators=100, contamination="auto", random_state=seed)
    with threadpool_limits(limits=1):
        flags = forest.fit_predict(matrix) == -1
        scores = -forest.score_samples(matrix)  # higher: more anomalous, in (0, 1]
    order = np.argsort(-scores)
    rows = frame.index.to_numpy()
    metrics = {
        "outliers": Rate(int(flags.sum()), len(frame)).to_dict(),
        "score_quantiles": {q: float(np.quantile(scores, float(q))) for q in ("0.5", "0.9", "0.99", "1.0")},
        "threshold": 0.5,
    }
    samples = tuple({"row": int(rows[i]), "score": round(float(scores[i]), 4)} for i in order[:max_listed])
    return CheckResult("outliers", parameters, seed, len(frame), time.perf_counter() - started, metrics, samples)

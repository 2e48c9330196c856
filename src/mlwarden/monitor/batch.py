"""Batch drift: compare a reference dataset with a current one, offline, with the guard's drift tests.

``mlwarden monitor drift REFERENCE CURRENT`` reads two tables (CSV, Parquet, JSON Lines or NPY, with pyarrow:
columns are typed once, numbers stay float64 arrays) and runs, per feature, the tests of
:mod:`mlwarden.monitor.drift` — two-sample KS and PSI for numeric columns, chi-squared for categorical ones —
plus one MMD over all numeric columns jointly, with the multiple-testing correction across features.

Differences from the online guard, which compares a window with a stored baseline:

* the whole reference is used (``BaselineConfig.sample_size`` = its row count), not a 2,000-row sample, so KS
  compares the two full samples; MMD still subsamples (``mmd_max_samples``), which its p-value accounts for;
* missing values are allowed: each numeric feature is tested on its non-missing values, and the missing share is
  a categorical feature of its own (``<col>.missing``, chi-squared) when either side has missing values.

The verdict: ``drifted`` when any test flags; ``share_drifted`` is the share of features with at least one
flagging test (the number Evidently calls "share of drifted columns").
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlwarden.core.errors import UsageError
from mlwarden.monitor.baseline import Baseline, BaselineConfig, FeatureProfile, bin_index
from mlwarden.monitor.drift import (
    DriftConfig,
    DriftDetector,
    DriftResult,
    corrected_thresholds,
    ks_two_sample,
    population_stability_index,
)
from mlwarden.monitor.tables import MISSING, Table

#: PSI bins per numeric feature (reference deciles, as the guard's baselines).
BINS = BaselineConfig().n_bins


@dataclass(frozen=True, slots=True)
class BatchDriftReport:
    """Every test's result for one reference/current pair, with what was compared and how."""

    reference: Table
    current: Table
    results: tuple[DriftResult, ...]
    config: DriftConfig
    missing: dict[str, tuple[float, float]]
    seconds: float

    @property
    def drifted(self) -> bool:
        """Whether any test flagged drift."""
        return any(r.drifted for r in self.results)

    @property
    def features(self) -> list[str]:
        """Every feature tested (numeric, categorical and missing-share features), in table order."""
        return list(dict.fromkeys(r.feature for r in self.results if r.feature is not None))

    @property
    def drifted_features(self) -> list[str]:
        """Features with at least one flagging test."""
        return [f for f in self.features if any(r.drifted for r in self.results if r.feature == f)]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (see ``docs/guard.md``, batch drift)."""
        features = self.features
        return {
            "schema": "https://mlwarden.dev/drift/v1",
            "reference": {"path": self.reference.path, "rows": self.reference.rows},
            "current": {"path": self.current.path, "rows": self.current.rows},
            "config": {
                "alpha": self.config.alpha,
                "correction": self.config.correction,
                "tests": list(self.config.tests),
                "psi_threshold": self.config.psi_threshold,
                "mmd_max_samples": self.config.mmd_max_samples,
                "mmd_permutations": self.config.mmd_permutations,
                "seed": self.config.seed,
            },
            "drifted": self.drifted,
            "share_drifted": len(self.drifted_features) / len(features) if features else 0.0,
            "drifted_features": self.drifted_features,
            "missing": {k: {"reference": a, "current": b} for k, (a, b) in self.missing.items()},
            "results": [
                {
                    "test": r.test,
                    "feature": r.feature,
                    "statistic": _num(r.statistic),
                    "p_value": None if r.p_value is None else _num(r.p_value),
                    "threshold": r.threshold,
                    "drifted": r.drifted,
                    "detail": r.detail,
                }
                for r in self.results
            ],  # fmt: skip
            "seconds": round(self.seconds, 4),
        }


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def compare(reference: Table, current: Table, config: DriftConfig | None = None) -> BatchDriftReport:
    """Run the drift tests of ``config`` between two tables with the same columns.

    Raises:
        UsageError: the tables' columns differ, or a side has too few values to test.
    """
    config = config or DriftConfig()
    started = time.perf_counter()
    _same_columns(reference, current)
    raw = DriftConfig(**{**_fields(config), "correction": "none"})  # p-values raw; corrected below, across all
    results: list[DriftResult] = []
    missing: dict[str, tuple[float, float]] = {}
    # Categorical features as value counts (counted from dictionary codes, not strings): the chi-squared tests need
    # nothing else.
    chi2 = "chi2" in config.tests
    ref_counts = {n: reference.value_counts(n) for n in reference.categorical} if chi2 else {}
    cur_counts = {n: current.value_counts(n) for n in reference.categorical} if chi2 else {}
    numeric_cfg = DriftConfig(**{**_fields(raw), "tests": tuple(t for t in raw.tests if t in ("ks", "psi")) or ("ks",)})
    jobs: list[tuple[str, NDArray[np.float64], NDArray[np.float64]]] = []
    for name, ref in reference.numeric.items():
        cur = current.numeric[name]
        ref_ok, cur_ok = np.isfinite(ref), np.isfinite(cur)
        ref_all, cur_all = bool(ref_ok.all()), bool(cur_ok.all())
        if not (ref_all and cur_all):
            missing[name] = (1 - float(ref_ok.mean()), 1 - float(cur_ok.mean()))
            ref_counts[f"{name}.missing"] = _presence(ref_ok)
            cur_counts[f"{name}.missing"] = _presence(cur_ok)
        jobs.append((name, ref if ref_all else ref[ref_ok], cur if cur_all else cur[cur_ok]))  # no copy if complete
    if set(raw.tests) & {"ks", "psi"}:
        # numpy's sort and searchsorted release the GIL: features run in parallel threads.
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1) or 1) as pool:
            for part in pool.map(lambda job: _one_numeric(job[0], job[1], job[2], numeric_cfg), jobs):
                results += part
    if ref_counts and chi2:
        base_cfg = _baseline_config(reference.rows)
        if reference.rows < base_cfg.min_reference:
            raise UsageError(f"reference data has {reference.rows} rows; at least {base_cfg.min_reference} are needed")
        profiles = tuple(_categorical_profile(k, v, reference.rows, base_cfg) for k, v in ref_counts.items())
        base = Baseline(profiles, reference.rows, (), (), base_cfg)
        chi = DriftConfig(**{**_fields(raw), "tests": ("chi2",), "min_window": 2})
        window = {k: (list(v), list(v.values())) for k, v in cur_counts.items()}
        results += DriftDetector(base, chi).check_counts(window).results
    if "mmd" in config.tests and reference.numeric:
        results += _mmd(reference, current, raw)
    results = _correct(results, config)
    return BatchDriftReport(reference, current, tuple(results), config, missing, time.perf_counter() - started)


def _presence(finite: NDArray[np.bool_]) -> dict[str, int]:
    """The ``<col>.missing`` feature's counts: rows with a value (``present``) and without (:data:`MISSING`)."""
    present = int(np.count_nonzero(finite))
    return {k: c for k, c in (("present", present), (MISSING, finite.size - present)) if c}


def _categorical_profile(name: str, counts: dict[str, int], rows: int, cfg: BaselineConfig) -> FeatureProfile:
    """The baseline profile :meth:`Baseline.from_reference` builds for a column with these value counts.

    Values truncated to ``max_value_len``, the ``max_categories`` most frequent kept (ties by value), the rest
    counted as "other" (``tests/monitor/test_batch_drift.py`` checks it equals ``from_reference``'s profile).
    """
    merged: dict[str, int] = {}
    for value, count in counts.items():
        key = value[: cfg.max_value_len]
        merged[key] = merged.get(key, 0) + count
    ranked = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = tuple((k, int(c)) for k, c in ranked[: cfg.max_categories])
    other = sum(c for _, c in ranked[cfg.max_categories :])
    return FeatureProfile(name=name, kind="categorical", n=rows, categories=kept, other_count=int(other))


def _fields(config: DriftConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


def _baseline_config(rows: int) -> BaselineConfig:
    return BaselineConfig(sample_size=max(10, min(rows, 1_000_000)), min_reference=2, max_categories=1000)


def _same_columns(reference: Table, current: Table) -> None:
    for kind in ("numeric", "categorical"):
        a, b = set(getattr(reference, kind)), set(getattr(current, kind))
        if a != b:
            raise UsageError(
                f"the tables' {kind} columns differ: only in the reference {sorted(a - b)}, "
                f"only in the current data {sorted(b - a)}"
            )
    if not reference.numeric and not reference.categorical:
        raise UsageError("the tables have no columns")


def _one_numeric(name: str, ref: NDArray[np.float64], cur: NDArray[np.float64], cfg: DriftConfig) -> list[DriftResult]:
    """KS and PSI of one feature on its non-missing values (p-values raw: :func:`_correct` applies the correction)."""
    if ref.size < 2 or cur.size < 2:
        return [DriftResult(t, name, float("nan"), 1.0, cfg.alpha, False, "fewer than 2 values on a side: not tested")
                for t in cfg.tests]  # fmt: skip
    ref, cur = np.sort(ref), np.sort(cur)
    out: list[DriftResult] = []
    if "ks" in cfg.tests:
        d, p = ks_two_sample(ref, cur)
        detail = f"two-sample KS, {ref.size} reference vs {cur.size} current values; none"
        out.append(DriftResult("ks", name, d, p, cfg.alpha, p <= cfg.alpha, detail))
    if "psi" in cfg.tests:
        # The baseline's bins: interior quantile edges of the reference, ties merged (monitor.baseline).
        edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, BINS + 1)[1:-1]))
        expected = np.bincount(bin_index(ref, edges), minlength=edges.size + 1) / ref.size
        actual = np.bincount(bin_index(cur, edges), minlength=edges.size + 1) / cur.size
        psi, worst, floored = population_stability_index(expected, actual, cfg.psi_epsilon)
        level = "significant" if psi >= cfg.psi_threshold else "moderate" if psi >= cfg.psi_moderate else "stable"
        detail = (
            f"{level} shift over {edges.size + 1} reference-quantile bins (epsilon {cfg.psi_epsilon}); largest "
            f"contribution from bin {worst}: reference {expected[worst]:.4f}, current {floored[worst]:.4f}"
        )
        out.append(DriftResult("psi", name, psi, None, cfg.psi_threshold, psi >= cfg.psi_threshold, detail))
    return out


def _mmd(reference: Table, current: Table, cfg: DriftConfig) -> list[DriftResult]:
    names = list(reference.numeric)
    ref, cur = _complete_rows(reference, names), _complete_rows(current, names)
    n_ref, n_cur = len(ref[names[0]]), len(cur[names[0]])
    if n_ref < 2 or n_cur < 2:
        return []
    rng = np.random.default_rng(cfg.seed)  # MMD subsamples anyway: build its baseline from that many rows only
    if n_ref > cfg.mmd_max_samples:
        keep = np.sort(rng.choice(n_ref, cfg.mmd_max_samples, replace=False))
        ref = {n: v[keep] for n, v in ref.items()}
    base = Baseline.from_reference(ref, feature_names=names, config=_baseline_config(len(ref[names[0]])))
    detector = DriftDetector(base, DriftConfig(**{**_fields(cfg), "tests": ("mmd",), "min_window": 2}))
    return list(detector.check(cur).results)


def _complete_rows(table: Table, names: list[str]) -> dict[str, NDArray[np.float64]]:
    """The numeric columns on the rows where every one is finite (the columns themselves when all are)."""
    finite = np.logical_and.reduce([np.isfinite(table.numeric[n]) for n in names])
    if finite.all():
        return {n: table.numeric[n] for n in names}
    return {n: table.numeric[n][finite] for n in names}


def _correct(results: list[DriftResult], config: DriftConfig) -> list[DriftResult]:
    """Apply the configured correction across features, per test family (KS; chi-squared)."""
    out = list(results)
    for family in ("ks", "chi2"):
        idx = [i for i, r in enumerate(out) if r.test == family and r.p_value is not None]
        if not idx:
            continue
        p = np.array([out[i].p_value for i in idx], dtype=np.float64)
        cut = corrected_thresholds(p, config.alpha, config.correction)
        for j, i in enumerate(idx):
            r = out[i]
            detail = (
                f"{r.detail.rsplit('; ', 1)[0]}; {config.correction} over {len(idx)} feature(s) at alpha {config.alpha}"
            )
            out[i] = DriftResult(r.test, r.feature, r.statistic, r.p_value, float(cut[j]), bool(p[j] <= cut[j]), detail)
    return out

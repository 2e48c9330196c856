"""Drift tests: whether the current window of inputs still looks like the baseline captured at approval.

Four complementary tests, each returning a frozen :class:`DriftResult` with its statistic, threshold,
decision and why:

* **Two-sample Kolmogorov-Smirnov** per numeric feature (``scipy.stats.ks_2samp``) between the baseline's
  reference sample and the window. With many features, the per-feature p-values are corrected for multiple
  testing: Bonferroni (family-wise error <= alpha) or Benjamini-Hochberg (Benjamini and Hochberg, JRSS B 1995;
  false discovery rate <= alpha, more power with many features).
* **Population Stability Index** per numeric feature over the baseline's quantile bins:
  ``PSI = sum_i (a_i - e_i) ln(a_i / e_i)`` with ``e`` the reference and ``a`` the window fractions (Yurdakul,
  "Statistical properties of population stability index", 2018). The conventional reading is < 0.1 stable,
  0.1-0.25 moderate shift, > 0.25 significant shift; only the last is flagged. An empty bin would make the
  logarithm infinite, so both fractions are floored at ``psi_epsilon`` (default 1e-4, i.e. an empty bin counts
  as 0.01% of the data) - the usual practice; the floor bounds the contribution of a bin.
* **Chi-squared** per categorical feature: a two-sample test of homogeneity on the 2 x K table of reference
  and window counts (Pearson; no Yates correction). Window values the baseline never saw are pooled
  explicitly into one ``<unseen>`` column (into ``<other>`` when the baseline itself pooled rare categories,
  as the two cannot then be told apart), and reported by count with examples; columns whose expected count is
  below ``chi2_min_expected`` are merged into ``<rare>`` so the chi-squared approximation holds (Cochran, 1954).
  Corrected across categorical features like KS.
* **Maximum Mean Discrepancy** over all numeric features jointly (Gretton et al., "A Kernel Two-Sample
  Test", JMLR 2012): unbiased MMD^2 with a Gaussian RBF kernel on baseline-standardised features, bandwidth
  by the median heuristic, and a permutation-test p-value. Both samples are capped at ``mmd_max_samples``
  (seeded subsampling), so one check costs O(mmd_max_samples^2 * mmd_permutations) at worst.

Each family controls its own error rate at ``alpha``; :attr:`DriftReport.drifted` is true when any test
flags, so with every family enabled the report's false-positive rate is at most the sum over families.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from mlwarden.core.errors import UsageError
from mlwarden.monitor.baseline import Baseline, FeatureProfile, bin_index
from mlwarden.monitor.pvalues import chi2_homogeneity, ks_sf
from mlwarden.monitor.windows import Clock, FeatureWindow

Test = Literal["ks", "psi", "chi2", "mmd"]
Correction = Literal["bonferroni", "bh", "none"]
_TESTS: frozenset[str] = frozenset({"ks", "psi", "chi2", "mmd"})
UNSEEN, OTHER, RARE = "<unseen>", "<other>", "<rare>"


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """Settings of :class:`DriftDetector` (validated on construction).

    Attributes:
        alpha: significance level of KS, chi-squared and MMD (per family, after correction).
        correction: multiple-testing correction across features for KS and chi-squared.
        tests: which tests run.
        psi_moderate: PSI reported as a moderate shift (not flagged) from this value.
        psi_threshold: PSI flagged as drift from this value.
        psi_epsilon: floor of bin fractions in PSI (see the module docstring).
        chi2_min_expected: columns with a smaller expected count are merged.
        min_window: fewer rows than this and no test runs (the report says so).
        mmd_max_samples: cap on each MMD sample (reference and window).
        mmd_permutations: permutations of the MMD test (p-value resolution ``1 / (n + 1)``).
        seed: seed of MMD subsampling and permutations (the same inputs always give the same report).
    """

    alpha: float = 0.05
    correction: Correction = "bonferroni"
    tests: tuple[Test, ...] = ("ks", "psi", "chi2", "mmd")
    psi_moderate: float = 0.1
    psi_threshold: float = 0.25
    psi_epsilon: float = 1e-4
    chi2_min_expected: float = 5.0
    min_window: int = 30
    mmd_max_samples: int = 500
    mmd_permutations: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise UsageError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.correction not in ("bonferroni", "bh", "none"):
            raise UsageError(f"correction must be 'bonferroni', 'bh' or 'none', got {self.correction!r}")
        bad = set(self.tests) - _TESTS
        if bad or not self.tests:
            raise UsageError(f"tests must be a non-empty subset of {sorted(_TESTS)}, got {list(self.tests)}")
        if not 0.0 < self.psi_moderate <= self.psi_threshold:
            raise UsageError(f"need 0 < psi_moderate <= psi_threshold, got {self.psi_moderate}, {self.psi_threshold}")
        if not 0.0 < self.psi_epsilon < 0.01:
            raise UsageError(f"psi_epsilon must be in (0, 0.01), got {self.psi_epsilon}")
        if self.chi2_min_expected < 0:
            raise UsageError(f"chi2_min_expected must be >= 0, got {self.chi2_min_expected}")
        if self.min_window < 2:
            raise UsageError(f"min_window must be at least 2, got {self.min_window}")
        if not 10 <= self.mmd_max_samples <= 5000:
            raise UsageError(f"mmd_max_samples must be in 10..5000, got {self.mmd_max_samples}")
        if not 19 <= self.mmd_permutations <= 10_000:
            raise UsageError(f"mmd_permutations must be in 19..10000, got {self.mmd_permutations}")


@dataclass(frozen=True, slots=True)
class DriftResult:
    """One test on one feature (or, for MMD, on all numeric features: ``feature is None``).

    Attributes:
        test: ``ks``, ``psi``, ``chi2`` or ``mmd``.
        feature: the feature tested, or None for a joint test.
        statistic: KS D, PSI, chi-squared, or unbiased MMD^2.
        p_value: the raw (uncorrected) p-value; None for PSI, which is not a hypothesis test.
        threshold: what the decision compared against: the corrected p-value cut-off, or the PSI threshold.
        drifted: the decision.
        detail: the why, in words (sizes, correction, bins, unseen categories, bandwidth).
    """

    test: str
    feature: str | None
    statistic: float
    p_value: float | None
    threshold: float
    drifted: bool
    detail: str


@dataclass(frozen=True, slots=True)
class DriftReport:
    """All results of one check of a window against a baseline."""

    results: tuple[DriftResult, ...]
    n_window: int
    drifted: bool
    insufficient: bool = False

    @property
    def drifted_results(self) -> tuple[DriftResult, ...]:
        """The results that flagged drift."""
        return tuple(r for r in self.results if r.drifted)

    def by_test(self, test: str) -> tuple[DriftResult, ...]:
        """The results of one test."""
        return tuple(r for r in self.results if r.test == test)


def corrected_thresholds(p_values: NDArray[np.float64], alpha: float, method: Correction) -> NDArray[np.float64]:
    """Per-test p-value cut-offs after a multiple-testing correction (reject when ``p <= cut-off``).

    Bonferroni: ``alpha / m``. Benjamini-Hochberg: the step-up cut-off ``k* alpha / m`` with ``k*`` the largest
    rank whose sorted p-value is ``<= k alpha / m`` (``alpha / m`` when there is none, which rejects nothing).
    """
    m = p_values.size
    if m == 0 or method == "none":
        return np.full(m, alpha)
    if method == "bonferroni":
        return np.full(m, alpha / m)
    ranked = np.sort(p_values)
    passing = np.nonzero(ranked <= alpha * np.arange(1, m + 1) / m)[0]
    k = int(passing[-1]) + 1 if passing.size else 1
    return np.full(m, k * alpha / m)


class DriftDetector:
    """Compare windows of live inputs with a :class:`~mlwarden.monitor.baseline.Baseline`.

    Args:
        baseline: the profile captured from reference data.
        config: test settings; the defaults run all four tests at alpha 0.05 with Bonferroni.
    """

    def __init__(self, baseline: Baseline, config: DriftConfig | None = None) -> None:
        self.baseline = baseline
        self.config = config or DriftConfig()
        if "ks" in self.config.tests:  # KS on a window uses scipy.stats: imported now, not during a check
            from scipy import stats  # noqa: F401

    def window(self, capacity: int, *, max_age_s: float | None = None, clock: Clock | None = None) -> FeatureWindow:
        """A :class:`FeatureWindow` with this baseline's features, ready to be filled and checked."""
        return FeatureWindow(
            self.baseline.numeric_names,
            self.baseline.categorical_names,
            capacity=capacity,
            max_age_s=max_age_s,
            clock=clock,
            max_value_len=self.baseline.config.max_value_len,
        )

    def check(self, window: FeatureWindow | Mapping[str, object] | NDArray[np.generic]) -> DriftReport:
        """Run the configured tests on a window.

        Args:
            window: a :class:`FeatureWindow`, ``{feature name: 1-D column}``, or a 2-D array whose columns
                follow the baseline's feature order.

        Raises:
            UsageError: when a baseline feature is missing, columns differ in length or numbers are not finite.
        """
        cols = self._columns(window)
        n = len(next(iter(cols.values())))
        cfg = self.config
        if n < cfg.min_window:
            return DriftReport((), n, drifted=False, insufficient=True)
        numeric = [f for f in self.baseline.features if f.kind == "numeric"]
        categorical = [f for f in self.baseline.features if f.kind == "categorical"]
        results: list[DriftResult] = []
        if "ks" in cfg.tests and numeric:
            results += self._ks(numeric, cols)
        if "psi" in cfg.tests:
            results += [self._psi(f, cols[f.name]) for f in numeric]
        if "chi2" in cfg.tests and categorical:
            results += self._chi2(categorical, cols)
        if "mmd" in cfg.tests and numeric:
            results.append(self._mmd(numeric, cols))
        return DriftReport(tuple(results), n, drifted=any(r.drifted for r in results))

    def _columns(self, window: FeatureWindow | Mapping[str, object] | NDArray[np.generic]) -> dict[str, NDArray]:
        names = [f.name for f in self.baseline.features]
        if isinstance(window, FeatureWindow):
            raw: Mapping[str, object] = window.columns()
        elif isinstance(window, Mapping):
            raw = window
        else:
            arr = np.asarray(window)
            if arr.ndim != 2 or arr.shape[1] != len(names):
                raise UsageError(f"window array must have shape (n, {len(names)}), got {arr.shape}")
            raw = {name: arr[:, i] for i, name in enumerate(names)}
        missing = [n for n in names if n not in raw]
        if missing:
            raise UsageError(f"window lacks baseline feature(s) {missing}")
        cols: dict[str, NDArray] = {}
        for f in self.baseline.features:
            if f.kind == "numeric":
                try:
                    col = np.asarray(raw[f.name], dtype=np.float64).ravel()
                except (TypeError, ValueError):
                    raise UsageError(f"window feature {f.name!r} is not numeric") from None
                if not np.all(np.isfinite(col)):
                    raise UsageError(f"window feature {f.name!r} has NaN or infinite values")
            else:
                limit = self.baseline.config.max_value_len
                given = np.ravel(np.asarray(raw[f.name]))
                if given.dtype.kind == "U":  # already strings: truncated by the dtype, no Python loop
                    col = given if given.dtype.itemsize // 4 <= limit else given.astype(f"<U{limit}")
                else:
                    col = np.asarray([(v if isinstance(v, str) else str(v))[:limit] for v in given])
            cols[f.name] = col
        if len({c.size for c in cols.values()}) != 1:
            raise UsageError("window columns have different lengths")
        return cols

    def _ks(self, feats: list[FeatureProfile], cols: dict[str, NDArray]) -> list[DriftResult]:
        from scipy import stats

        tests = [stats.ks_2samp(np.asarray(f.sample), cols[f.name]) for f in feats]
        p = np.array([float(t.pvalue) for t in tests])
        cut = corrected_thresholds(p, self.config.alpha, self.config.correction)
        return [
            DriftResult(
                "ks",
                f.name,
                float(t.statistic),
                float(p[i]),
                float(cut[i]),
                bool(p[i] <= cut[i]),
                f"two-sample KS, {len(f.sample)} reference vs {cols[f.name].size} window values; "
                f"{self.config.correction} over {len(feats)} feature(s) at alpha {self.config.alpha}",
            )
            for i, (f, t) in enumerate(zip(feats, tests, strict=True))
        ]

    def _psi(self, f: FeatureProfile, col: NDArray[np.float64]) -> DriftResult:
        cfg = self.config
        eps = cfg.psi_epsilon
        counts = np.bincount(bin_index(col, f.edges), minlength=len(f.fractions))
        psi, worst, actual = population_stability_index(np.asarray(f.fractions), counts / col.size, eps)
        level = "significant" if psi >= cfg.psi_threshold else "moderate" if psi >= cfg.psi_moderate else "stable"
        return DriftResult(
            "psi",
            f.name,
            psi,
            None,
            cfg.psi_threshold,
            psi >= cfg.psi_threshold,
            f"{level} shift over {len(f.fractions)} reference-quantile bins (epsilon {eps}); largest contribution "
            f"from bin {worst}: reference {f.fractions[worst]:.4f}, window {actual[worst]:.4f}",
        )

    def check_counts(self, counts: Mapping[str, tuple[Sequence[str], Sequence[int]]]) -> DriftReport:
        """The chi-squared tests of :meth:`check` from each categorical feature's distinct values and their counts.

        For callers that have counted already (batch drift counts dictionary codes, not strings): the same results
        as :meth:`check` on columns with these values, these many times. Values are truncated to the baseline's
        ``max_value_len`` as :meth:`check` does.

        Raises:
            UsageError: a categorical feature of the baseline is missing, or counts differ in total.
        """
        feats = [f for f in self.baseline.features if f.kind == "categorical"]
        missing = [f.name for f in feats if f.name not in counts]
        if missing:
            raise UsageError(f"counts lack baseline feature(s) {missing}")
        limit = self.baseline.config.max_value_len
        merged: dict[str, dict[str, int]] = {}
        for f in feats:
            values, numbers = counts[f.name]
            acc: dict[str, int] = {}
            for v, c in zip(values, numbers, strict=True):
                if c:
                    acc[v[:limit]] = acc.get(v[:limit], 0) + int(c)
            merged[f.name] = acc
        totals = {sum(acc.values()) for acc in merged.values()}
        if len(totals) > 1:
            raise UsageError("counts of the features differ in total")
        n = totals.pop() if totals else 0
        if n < self.config.min_window:
            return DriftReport((), n, drifted=False, insufficient=True)
        results: list[DriftResult] = []
        if "chi2" in self.config.tests and feats:
            results = self._chi2_results(feats, [self._chi2_counts(f, merged[f.name]) for f in feats])
        return DriftReport(tuple(results), n, drifted=any(r.drifted for r in results))

    def _chi2(self, feats: list[FeatureProfile], cols: dict[str, NDArray]) -> list[DriftResult]:
        raw = []
        for f in feats:
            values, counts = np.unique(cols[f.name], return_counts=True)
            raw.append(self._chi2_counts(f, dict(zip(values.tolist(), counts.tolist(), strict=True))))
        return self._chi2_results(feats, raw)

    def _chi2_results(self, feats: list[FeatureProfile], raw: list[tuple[float, float, str]]) -> list[DriftResult]:
        p = np.array([r[1] for r in raw])
        cut = corrected_thresholds(p, self.config.alpha, self.config.correction)
        return [
            DriftResult("chi2", f.name, stat, pv, float(cut[i]), bool(pv <= cut[i]), detail)
            for i, (f, (stat, pv, detail)) in enumerate(zip(feats, raw, strict=True))
        ]

    def _chi2_counts(self, f: FeatureProfile, window: Mapping[str, int]) -> tuple[float, float, str]:
        """``(statistic, p-value, detail)`` of one feature from the window's count of each distinct value."""
        known = dict(f.categories)
        pool = OTHER if f.other_count else UNSEEN
        labels = [k for k, _ in f.categories] + [pool]
        index = {k: i for i, k in enumerate(labels)}
        ref = np.array([c for _, c in f.categories] + [f.other_count], dtype=np.float64)
        cur = np.zeros(len(labels), dtype=np.float64)
        unseen: dict[str, int] = {}
        for v, c in sorted(window.items()):
            if v in known:
                cur[index[v]] += c
            else:
                cur[index[pool]] += c
                unseen[v] = c
        table = np.vstack([ref, cur])
        table = table[:, table.sum(axis=0) > 0]
        expected_min = table.sum(axis=1).min() * table.sum(axis=0) / table.sum()
        small = expected_min < self.config.chi2_min_expected
        if small.any() and (~small).any():
            table = np.column_stack([table[:, ~small], table[:, small].sum(axis=1)])
        elif small.all():
            table = table.sum(axis=1, keepdims=True)
        examples = ", ".join(repr(v[:40]) for v, _ in sorted(unseen.items(), key=lambda kv: -kv[1])[:5])
        seen = f"{sum(unseen.values())} value(s) not among the baseline's categories" + (
            f" (e.g. {examples}) pooled into {pool}" if unseen else ""
        )
        if table.shape[1] < 2:
            return 0.0, 1.0, f"fewer than two categories with enough data; {seen}"
        statistic, p_value, _ = chi2_homogeneity(table)
        detail = (
            f"chi-squared homogeneity, {int(table[0].sum())} reference vs {int(table[1].sum())} window values, "
            f"{table.shape[1]} columns ({int(small.sum())} rare merged into {RARE}); {seen}; "
            f"{self.config.correction} over categorical features at alpha {self.config.alpha}"
        )
        return statistic, p_value, detail

    def _mmd(self, feats: list[FeatureProfile], cols: dict[str, NDArray]) -> DriftResult:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        mu = np.array([f.mean for f in feats])
        sd = np.array([f.std if f.std > 0 else 1.0 for f in feats])
        # The subsamples are drawn first (reference, then window: the seeded sequence), so only the rows kept
        # are stacked and standardised.
        picks = []
        for n in (len(feats[0].sample), cols[feats[0].name].size):
            picks.append(rng.choice(n, cfg.mmd_max_samples, replace=False) if n > cfg.mmd_max_samples else None)
        x = (np.column_stack([_rows(np.asarray(f.sample), picks[0]) for f in feats]) - mu) / sd
        y = (np.column_stack([_rows(cols[f.name], picks[1]) for f in feats]) - mu) / sd
        stat, p, bandwidth = mmd_permutation_test(x, y, cfg.mmd_permutations, rng)
        return DriftResult(
            "mmd",
            None,
            stat,
            p,
            cfg.alpha,
            p <= cfg.alpha,
            f"unbiased MMD^2, RBF kernel (median-heuristic bandwidth {bandwidth:.4g} on standardised features), "
            f"{x.shape[0]} reference vs {y.shape[0]} window rows over {len(feats)} numeric feature(s), "
            f"{cfg.mmd_permutations} permutations",
        )


def _rows(column: NDArray[np.float64], picked: NDArray[np.intp] | None) -> NDArray[np.float64]:
    return column if picked is None else column[picked]


def population_stability_index(
    expected: NDArray[np.float64], actual: NDArray[np.float64], epsilon: float
) -> tuple[float, int, NDArray[np.float64]]:
    """PSI of two vectors of bin fractions, both floored at ``epsilon`` (see the module docstring).

    Returns:
        ``(psi, bin with the largest contribution, the floored actual fractions)``.
    """
    e = np.maximum(expected, epsilon)
    a = np.maximum(actual, epsilon)
    terms = (a - e) * np.log(a / e)
    return float(terms.sum()), int(np.argmax(terms)), a


def ks_two_sample(a_sorted: NDArray[np.float64], b_sorted: NDArray[np.float64]) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov ``(D, p)`` of two *sorted* samples, as ``scipy.stats.ks_2samp``.

    The same statistic and the same p-value as scipy's ``method="auto"``: exact (scipy itself) while the larger
    sample has at most 10,000 values, Smirnov's asymptotic distribution (``kstwo.sf(D, round(n m / (n + m)))``,
    :func:`~mlwarden.monitor.pvalues.ks_sf`) beyond. Taking sorted input lets a caller sort each column once for
    KS and PSI's quantiles. The two empirical CDFs are compared at every value of both samples: a sample's own CDF
    at its values is ``1..n / n`` unless values repeat, so each sample is looked up in the other only (in sorted
    order, which keeps the binary searches in cache).
    """
    n1, n2 = a_sorted.size, b_sorted.size
    if max(n1, n2) <= 10_000:
        from scipy import stats

        res = stats.ks_2samp(a_sorted, b_sorted)
        return float(res.statistic), float(res.pvalue)
    d = 0.0
    for values, other, own_n, other_n in ((a_sorted, b_sorted, n1, n2), (b_sorted, a_sorted, n2, n1)):
        diff = _right_counts(values) / own_n - np.searchsorted(other, values, side="right") / other_n
        d = max(d, float(diff.max()), float(-diff.min()))
    m, n = max(n1, n2), min(n1, n2)
    return d, float(np.clip(ks_sf(d, int(np.round(m * n / (m + n)))), 0.0, 1.0))


def _right_counts(sorted_values: NDArray[np.float64]) -> NDArray[np.int64]:
    """How many values of a sorted sample are ``<=`` each of its values: ``1..n`` unless values repeat."""
    if sorted_values.size > 1 and bool(np.any(sorted_values[1:] == sorted_values[:-1])):
        return np.searchsorted(sorted_values, sorted_values, side="right")
    return np.arange(1, sorted_values.size + 1)


def mmd_permutation_test(
    x: NDArray[np.float64], y: NDArray[np.float64], permutations: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Unbiased MMD^2 between samples ``x`` and ``y`` with a permutation p-value (Gretton et al., 2012).

    The Gaussian kernel ``exp(-|a - b|^2 / (2 s^2))`` uses the median pairwise distance of the pooled sample as
    ``s``. The kernel matrix is computed once; each permutation's statistic is then a few matrix-vector
    products, batched over all permutations. The p-value counts the observed statistic as one of the
    permutations, so it is never zero: ``(1 + #{perm >= observed}) / (1 + permutations)``.

    Returns:
        ``(mmd2, p_value, bandwidth)``.
    """
    n, m = x.shape[0], y.shape[0]
    z = np.vstack([x, y])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    off = d2[np.triu_indices(n + m, k=1)]
    med = float(np.median(off))
    if med <= 0.0:
        positive = off[off > 0]
        med = float(positive.mean()) if positive.size else 1.0
    bandwidth = float(np.sqrt(med))
    k = np.exp(-d2 / (2.0 * med))
    rows = k.sum(axis=1)
    total = float(rows.sum())
    labels = np.zeros((n + m, permutations + 1))
    labels[:n, 0] = 1.0
    for b in range(1, permutations + 1):
        labels[rng.permutation(n + m)[:n], b] = 1.0
    xx = np.einsum("ij,ij->j", labels, k @ labels)  # 1_X' K 1_X per column
    xy = rows @ labels - xx  # 1_X' K 1_Y
    yy = total - 2.0 * (rows @ labels) + xx  # 1_Y' K 1_Y
    diag = np.diag(k)  # ones for the RBF kernel; kept general
    dx = diag @ labels
    dy = float(diag.sum()) - dx
    mmd2 = (xx - dx) / (n * (n - 1)) + (yy - dy) / (m * (m - 1)) - 2.0 * xy / (n * m)
    observed = float(mmd2[0])
    p = float((1 + np.sum(mmd2[1:] >= observed)) / (1 + permutations))
    return observed, p, bandwidth

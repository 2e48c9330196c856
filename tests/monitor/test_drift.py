"""Drift tests against a baseline: measured false-positive rates, measured power, PSI by its definition.

Measured with the seeds below (window 500, reference 3000 rows, alpha 0.05, Bonferroni):
- KS: 5.5% of 200 same-distribution windows flagged (3 features); a 0.5-sigma mean shift of one feature is
  flagged in 100% of 200 windows.
- chi-squared: 5.0% of 200 same-distribution windows flagged (2 categorical features, one with rare categories).
- MMD: 6.0% of 100 same-distribution windows flagged; a 0.5-sigma shift flagged in 100% of 100 windows.
- PSI: never above the 0.1 "moderate" mark on 200 same-distribution windows (max 0.065).
The figures are asserted with a tolerance (each test's docstring says which).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlwarden.core.errors import UsageError
from mlwarden.monitor import Baseline, BaselineConfig, DriftConfig, DriftDetector
from mlwarden.monitor.drift import corrected_thresholds

ALPHA = 0.05
TOLERANCE = 0.035  # about two binomial standard errors at 200 repetitions
CATS_A = np.array(["red", "green", "blue", "black", "white"])
P_A = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
CATS_B = np.array([f"c{i}" for i in range(30)])
P_B = (1.0 / np.arange(1, 31)) / np.sum(1.0 / np.arange(1, 31))  # Zipf: many rare categories


def numeric(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    cov = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    x = rng.multivariate_normal([0.0, 5.0, -2.0], cov, size=n)
    x[:, 0] += shift
    return {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}


def categorical(rng: np.random.Generator, n: int, p_a: np.ndarray = P_A) -> dict[str, np.ndarray]:
    return {"colour": rng.choice(CATS_A, size=n, p=p_a), "shop": rng.choice(CATS_B, size=n, p=P_B)}


def flag_rate(tests: tuple[str, ...], reps: int, seed: int, shift: float = 0.0, cat: bool = False) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(reps):
        make = (lambda n: categorical(rng, n)) if cat else (lambda n, s=0.0: numeric(rng, n, s))
        ref = make(3000)
        det = DriftDetector(
            Baseline.from_reference(ref, categorical=("colour", "shop") if cat else ()),
            DriftConfig(alpha=ALPHA, tests=tests, seed=r),  # type: ignore[arg-type]
        )
        window = make(500) if cat else numeric(rng, 500, shift)
        hits += det.check(window).drifted
    return hits / reps


def test_ks_false_positive_rate_is_at_most_alpha() -> None:
    """200 fresh reference/window pairs from one distribution: 5.5% flagged (family-wise, 3 features)."""
    assert flag_rate(("ks",), 200, seed=1) <= ALPHA + TOLERANCE


def test_chi2_false_positive_rate_is_at_most_alpha() -> None:
    """200 pairs: 5.0% flagged across 2 categorical features (one Zipf with rare, merged columns)."""
    assert flag_rate(("chi2",), 200, seed=2, cat=True) <= ALPHA + TOLERANCE


def test_mmd_false_positive_rate_is_at_most_alpha() -> None:
    """100 pairs (permutation tests are slower): 6.0% flagged; tolerance 0.05 (2 standard errors at 100)."""
    assert flag_rate(("mmd",), 100, seed=3) <= ALPHA + 0.05


def test_ks_detects_a_half_sigma_mean_shift() -> None:
    """Shift of feature ``a`` by 0.5 sigma, window 500: flagged in 100% of 200 repetitions (asserted >= 95%)."""
    assert flag_rate(("ks",), 200, seed=4, shift=0.5) >= 0.95


def test_mmd_detects_a_half_sigma_mean_shift() -> None:
    """Same shift, joint MMD over 3 features: flagged in 100% of 100 repetitions (asserted >= 95%)."""
    assert flag_rate(("mmd",), 100, seed=5, shift=0.5) >= 0.95


def test_ks_names_the_feature_that_moved() -> None:
    rng = np.random.default_rng(6)
    det = DriftDetector(Baseline.from_reference(numeric(rng, 3000)), DriftConfig(tests=("ks",)))
    report = det.check(numeric(rng, 500, shift=1.0))
    assert [r.feature for r in report.drifted_results] == ["a"]
    ks_a = report.by_test("ks")[0]
    assert ks_a.p_value is not None
    assert ks_a.p_value < ks_a.threshold == pytest.approx(ALPHA / 3)
    assert "bonferroni over 3" in ks_a.detail


def test_chi2_detects_a_changed_mix_and_unseen_categories() -> None:
    rng = np.random.default_rng(7)
    det = DriftDetector(Baseline.from_reference(categorical(rng, 3000), categorical=("colour", "shop")))
    moved = det.check(categorical(rng, 500, p_a=np.array([0.2, 0.3, 0.15, 0.1, 0.25])))
    colour_moved = [r for r in moved.results if r.feature == "colour"][0]
    assert colour_moved.drifted
    assert colour_moved.p_value is not None
    assert colour_moved.p_value < 1e-10
    window = categorical(rng, 500)
    window["colour"] = window["colour"].astype(object)
    window["colour"][:50] = "ultraviolet"  # 10% of the window is a colour the baseline never saw
    report = det.check(window)
    colour = [r for r in report.by_test("chi2") if r.feature == "colour"][0]
    assert colour.drifted
    assert "50 value(s) not among the baseline's categories" in colour.detail
    assert "'ultraviolet'" in colour.detail
    assert "<unseen>" in colour.detail


def test_unseen_categories_pool_into_other_when_the_baseline_capped_categories() -> None:
    rng = np.random.default_rng(8)
    baseline = Baseline.from_reference(
        categorical(rng, 3000), categorical=("colour", "shop"), config=BaselineConfig(max_categories=10)
    )
    shop = baseline.feature("shop")
    assert len(shop.categories) == 10
    assert shop.other_count > 0
    report = DriftDetector(baseline, DriftConfig(tests=("chi2",))).check(categorical(rng, 500))
    detail = [r for r in report.results if r.feature == "shop"][0].detail
    assert "<other>" in detail
    assert not report.drifted


def psi_by_definition(ref: np.ndarray, cur: np.ndarray, n_bins: int, eps: float) -> float:
    """PSI written out independently: decile edges of the reference, counts by comparison, floored fractions."""
    edges = sorted(set(np.quantile(ref, [i / n_bins for i in range(1, n_bins)]).tolist()))
    total = 0.0
    for lo, hi in zip([-math.inf, *edges], [*edges, math.inf], strict=True):
        e = max(sum(1 for v in ref if lo < v <= hi) / len(ref), eps)
        a = max(sum(1 for v in cur if lo < v <= hi) / len(cur), eps)
        total += (a - e) * math.log(a / e)
    return total


def test_psi_matches_the_definition_on_known_cases() -> None:
    ref = np.arange(1000, dtype=np.float64) + 0.5
    det = DriftDetector(Baseline.from_reference({"x": ref}), DriftConfig(tests=("psi",)))
    # All of the window in the lower half: five deciles hold 20% each, five are empty (floored at 1e-4).
    lower = np.arange(500, dtype=np.float64) + 0.5  # exactly 100 values in each of the five lower deciles
    expected = 5 * 0.1 * math.log(2.0) + 5 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    result = det.check({"x": lower}).results[0]
    assert result.statistic == pytest.approx(expected, rel=1e-9)
    assert result.statistic == pytest.approx(psi_by_definition(ref, lower, 10, 1e-4), rel=1e-9)
    assert result.drifted
    assert result.p_value is None
    assert result.threshold == 0.25
    # Random cases, including a moderate shift that is reported but not flagged.
    rng = np.random.default_rng(9)
    for shift in (0.0, 0.3, 1.0):
        ref = rng.normal(size=2000)
        cur = rng.normal(shift, 1.0, size=500)
        r = DriftDetector(Baseline.from_reference({"x": ref}), DriftConfig(tests=("psi",))).check({"x": cur})
        assert r.results[0].statistic == pytest.approx(psi_by_definition(ref, cur, 10, 1e-4), rel=1e-9)
        assert r.results[0].drifted == (r.results[0].statistic >= 0.25)


def test_psi_stays_below_moderate_on_same_distribution_windows() -> None:
    """200 same-distribution windows of 500: the largest PSI was 0.065, never reaching the 0.1 mark."""
    rng = np.random.default_rng(10)
    worst = 0.0
    for _ in range(200):
        det = DriftDetector(Baseline.from_reference(numeric(rng, 3000)), DriftConfig(tests=("psi",)))
        worst = max(worst, *(r.statistic for r in det.check(numeric(rng, 500)).results))
    assert worst < 0.1


def test_corrections_on_known_p_values() -> None:
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.2])
    assert corrected_thresholds(p, 0.05, "bonferroni").tolist() == pytest.approx([0.01] * 5)
    # BH: sorted p vs k*0.05/5 = 0.01, 0.02, 0.03, 0.04, 0.05 -> largest passing rank is 2 -> cut-off 0.02.
    assert corrected_thresholds(p, 0.05, "bh").tolist() == pytest.approx([0.02] * 5)
    assert corrected_thresholds(np.array([0.3, 0.4]), 0.05, "bh").tolist() == pytest.approx([0.025] * 2)
    assert corrected_thresholds(p, 0.05, "none").tolist() == pytest.approx([0.05] * 5)


def test_baseline_json_round_trip_gives_the_same_decisions() -> None:
    rng = np.random.default_rng(11)
    ref = numeric(rng, 3000) | categorical(rng, 3000)
    baseline = Baseline.from_reference(ref, categorical=("colour", "shop"), config=BaselineConfig(sample_size=500))
    text = baseline.to_json()
    again = Baseline.from_json(text)
    assert again == baseline
    assert len(baseline.feature("a").sample) == 500
    window = numeric(rng, 400, shift=0.3) | categorical(rng, 400)
    assert DriftDetector(again).check(window) == DriftDetector(baseline).check(window)
    assert json.loads(text)["format"] == "mlwarden.baseline/1"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format="other/1"),
        lambda d: d["features"][0].update(edges=list(reversed(d["features"][0]["edges"]))),
        lambda d: d["features"][0].update(kind="image"),
        lambda d: d["features"][0].pop("sample"),
        lambda d: d["features"][0].update(sample=[]),
        lambda d: d["features"][0].update(mean="zero"),
        lambda d: d.update(mean=[]),
        lambda d: d["features"][3].update(categories=[["red", -1]]),
        lambda d: d["config"].update(n_bins=1),
    ],
)
def test_malformed_baseline_documents_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(12)
    doc = Baseline.from_reference(
        numeric(rng, 200) | {"colour": categorical(rng, 200)["colour"]}, categorical=("colour",)
    ).to_dict()
    mutate(doc)
    with pytest.raises(UsageError):
        Baseline.from_json(json.dumps(doc))


def test_json_refuses_garbage() -> None:
    with pytest.raises(UsageError, match="not valid JSON"):
        Baseline.from_json("{nope")
    with pytest.raises(UsageError, match="not a baseline"):
        Baseline.from_json("[1, 2]")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"correction": "holm"}, "correction"),
        ({"tests": ("ks", "wasserstein")}, "tests"),
        ({"tests": ()}, "tests"),
        ({"psi_moderate": 0.3, "psi_threshold": 0.2}, "psi_moderate"),
        ({"psi_epsilon": 0.0}, "psi_epsilon"),
        ({"min_window": 1}, "min_window"),
        ({"mmd_max_samples": 10**6}, "mmd_max_samples"),
        ({"mmd_permutations": 5}, "mmd_permutations"),
    ],
)
def test_bad_drift_config_raises_a_clear_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        DriftConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_bins": 1}, "n_bins"), ({"sample_size": 5}, "sample_size"), ({"max_categories": 0}, "max_categories")],
)
def test_bad_baseline_config_raises_a_clear_error(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        BaselineConfig(**kwargs)


def test_bad_reference_data_raises_a_clear_error() -> None:
    with pytest.raises(UsageError, match="at least 50"):
        Baseline.from_reference({"x": np.zeros(10)})
    with pytest.raises(UsageError, match="NaN"):
        Baseline.from_reference({"x": np.r_[np.zeros(100), np.nan]})
    with pytest.raises(UsageError, match="not numeric"):
        Baseline.from_reference({"x": ["a"] * 100})
    with pytest.raises(UsageError, match="different lengths"):
        Baseline.from_reference({"x": np.zeros(100), "y": np.zeros(99)})
    with pytest.raises(UsageError, match="not in the data"):
        Baseline.from_reference({"x": np.zeros(100)}, categorical=("y",))


def test_windows_are_checked_against_the_baseline_features() -> None:
    rng = np.random.default_rng(13)
    ref = numeric(rng, 1000) | {"colour": categorical(rng, 1000)["colour"]}
    det = DriftDetector(Baseline.from_reference(ref, categorical=("colour",)), DriftConfig(tests=("ks", "chi2")))
    with pytest.raises(UsageError, match="lacks"):
        det.check(numeric(rng, 100))
    bad = numeric(rng, 100) | {"colour": np.array(["red"] * 100)}
    bad["b"][3] = np.inf
    with pytest.raises(UsageError, match="infinite"):
        det.check(bad)
    small = det.check(numeric(rng, 10) | {"colour": np.array(["red"] * 10)})
    assert small.insufficient
    assert not small.drifted
    assert small.results == ()
    # A FeatureWindow made by the detector, filled row by row, gives the same report as the columns.
    window = det.window(capacity=300)
    cols = numeric(rng, 400) | {"colour": categorical(rng, 400)["colour"]}
    for i in range(400):
        window.append({k: v[i] for k, v in cols.items()})
    last = {k: v[-300:] for k, v in cols.items()}
    assert det.check(window) == det.check(last)
    # A 2-D array in baseline order works too.
    arr = np.column_stack([last["a"], last["b"], last["c"], last["colour"]]).astype(object)
    assert det.check(arr) == det.check(last)


def test_mahalanobis_distance_from_the_baseline() -> None:
    rng = np.random.default_rng(14)
    baseline = Baseline.from_reference(numeric(rng, 5000))
    d = baseline.mahalanobis([baseline.mean, [3.0, 5.0, -2.0]])
    assert d[0] == pytest.approx(0.0, abs=1e-9)
    # Along a with b at its mean: x' = (3, 0, 0) relative, Sigma_ab = 0.5 -> d^2 = 9 / (1 - 0.25) = 12.
    assert d[1] == pytest.approx(math.sqrt(12.0), rel=0.05)

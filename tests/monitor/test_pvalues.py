"""The drift tests' p-values without scipy equal scipy's own.

The documented guarantee (src/mlwarden/monitor/pvalues.py) is at most 1e-9 absolute; what is asserted here is
tighter: 1e-10 relative or 1e-13 absolute, whichever is larger (:func:`close`).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import special, stats

from mlwarden.monitor.drift import ks_two_sample
from mlwarden.monitor.pvalues import SMIRNOV_MAX_N, _pelz_good_cdf, chi2_homogeneity, chi2_sf, ks_sf, smirnov_sf


def close(expected: float) -> object:
    """Equal to scipy's value within 1e-10 relative or 1e-13 absolute (see the module docstring)."""
    return pytest.approx(expected, rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("n", [5, 140, 141, 1_000, 20_000, 50_000, 100_000, 100_001, 2_000_000])
def test_ks_sf_equals_kstwo_sf_over_the_whole_range(n: int) -> None:
    # From below 1/(2n) to 1: every branch (computed here or handed to scipy), p-values from 1 down to 0.
    for d in [*np.geomspace(0.3 / n, 0.999, 80), 1.0 / n, 0.5, 1.0]:
        expected = float(stats.kstwo.sf(d, n))
        assert ks_sf(float(d), n) == close(expected), (n, d)


def test_pelz_good_is_the_branch_taken_for_typical_large_samples() -> None:
    # n = 50,000 (two samples of 100,000), D = 0.004: Pelz-Good, a p-value near 0.4 (not a fallback, not 0 or 1).
    n, d = 50_000, 0.004
    assert n * d * d < 2.2
    assert n * d**1.5 > 1.4
    assert 0.2 < 1.0 - _pelz_good_cdf(n, d) < 0.6
    assert ks_sf(d, n) == close(float(stats.kstwo.sf(d, n)))


@pytest.mark.parametrize("ties", ["none", "reference", "current", "both"])
def test_ks_two_sample_large_equals_scipy_with_and_without_ties(ties: str) -> None:
    rng = np.random.default_rng(len(ties))
    a, b = rng.normal(0, 1, 30_000), rng.normal(0.02, 1, 25_000)
    if ties in ("reference", "both"):
        a = np.round(a, 2)
    if ties in ("current", "both"):
        b = np.round(b, 2)
    a, b = np.sort(a), np.sort(b)
    d, p = ks_two_sample(a, b)
    ref = stats.ks_2samp(a, b)
    assert d == float(ref.statistic)
    assert p == close(float(ref.pvalue))


@pytest.mark.parametrize("shape", [(2, 2), (2, 5), (3, 4), (2, 40)])
def test_chi2_homogeneity_equals_chi2_contingency(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[1])
    table = rng.integers(1, 500, size=shape).astype(np.float64)
    stat, p, dof = chi2_homogeneity(table)
    ref = stats.chi2_contingency(table, correction=False)
    assert dof == ref.dof
    assert stat == pytest.approx(float(ref.statistic), rel=1e-12)
    assert p == close(float(ref.pvalue))


@pytest.mark.parametrize("n", [141, 1_000, 1_013, 50_000, 200_000, SMIRNOV_MAX_N, SMIRNOV_MAX_N + 1])
def test_smirnov_sf_equals_scipy_special_smirnov(n: int) -> None:
    # From just above 1/n to just below 1 - 1/n: the Birnbaum-Tingey sum, its underflow to 0, the large-n formula.
    # (scipy's own sum takes ~1 s at n = 10^6: fewer points there.)
    for d in np.geomspace(1.0001 / n, 1.0 - 1.5 / n, 120 if n <= 50_000 else 6):
        assert smirnov_sf(n, float(d)) == close(float(special.smirnov(n, d))), (n, d)


def test_smirnov_sf_refuses_what_it_does_not_compute() -> None:
    with pytest.raises(ValueError, match="1 < n d < n - 1"):
        smirnov_sf(1000, 0.0005)


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 9, 10, 39, 100, 999, 5_000])
def test_chi2_sf_equals_chdtrc_from_the_bulk_to_the_far_tail(dof: int) -> None:
    # Both expansions (series below x/2 < dof/2 + 1, continued fraction above), p-values from ~1 down to ~1e-300.
    for x in [*np.geomspace(1e-4, 30.0 * dof + 1500.0, 200), float(dof), dof + 2.0]:
        expected = float(special.chdtrc(dof, x))
        assert chi2_sf(dof, float(x)) == close(expected), (dof, x)
    assert chi2_sf(dof, 0.0) == 1.0
    assert chi2_sf(dof, float("inf")) == 0.0


def test_chi2_sf_on_random_tables_gives_chi2_contingencys_verdicts() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        k = int(rng.integers(2, 30))
        table = rng.integers(1, 2_000, size=(2, k)).astype(np.float64)
        table[1] *= rng.uniform(0.9, 1.1, size=k)  # small shifts: p-values across the whole range
        table = np.round(table)
        _, p, _ = chi2_homogeneity(table)
        expected = float(stats.chi2_contingency(table, correction=False).pvalue)
        assert abs(p - expected) <= 1e-9
        for alpha in (0.05, 0.01, 0.0025, 0.001):
            assert (p <= alpha) == (expected <= alpha) or abs(expected - alpha) < 1e-9


def test_trivial_ks_statistics_need_no_scipy() -> None:
    # D = 0 (identical samples) and D = 1 (disjoint ones) are closed forms, not a reason to import scipy.stats.
    code = (
        "import sys\n"
        "from mlwarden.monitor.pvalues import ks_sf\n"
        "print(ks_sf(0.0, 50000), ks_sf(1.0, 50000), ks_sf(0.5 / 50000, 50000), 'scipy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["1.0", "0.0", "1.0", "False"]


def test_batch_drift_imports_neither_scipy_nor_pandas() -> None:
    # scipy.stats costs ~0.7 s of CPU to import, scipy.special ~0.25 s, pandas ~0.3 s: the batch path (tables of
    # more than 10,000 rows, read from CSV with missing values) needs none of them.
    code = (
        "import sys, numpy as np, pathlib, tempfile\n"
        "from mlwarden.monitor.batch import compare\n"
        "from mlwarden.monitor.tables import read_table\n"
        "rng = np.random.default_rng(0)\n"
        "folder = pathlib.Path(tempfile.mkdtemp())\n"
        "def t(name, shift):\n"
        "    a, b = rng.normal(shift, 1, 20000), rng.normal(0, 1, 20000)\n"
        "    c = rng.choice(np.array(['u', 'v', 'w']), 20000)\n"
        "    rows = enumerate(zip(a, b, c))\n"
        "    lines = ['a,b,c'] + [f'{x},{\"\" if i % 97 == 0 else y},{z}' for i, (x, y, z) in rows]\n"
        "    (folder / name).write_text('\\n'.join(lines) + '\\n')\n"
        "    return read_table(folder / name)\n"
        "report = compare(t('r.csv', 0.0), t('c.csv', 0.1))\n"
        "assert report.drifted and {r.test for r in report.results} == {'ks', 'psi', 'chi2', 'mmd'}\n"
        "assert 'b.missing' in report.features\n"
        "print(sorted(m for m in ('scipy', 'pandas', 'pyarrow.compute') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"

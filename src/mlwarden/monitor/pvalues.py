"""P-values of the KS and chi-squared drift tests with numpy alone (scipy only for ranges not covered here).

``import scipy.stats`` costs 0.7-1 s of CPU (it imports scipy.spatial, sparse, optimize, interpolate, ...) and even
``scipy.special`` ~0.25 s (numpy.f2py, numpy.testing and numpy.ma through scipy's array-API layer), more than the
tests themselves on two 100,000-row tables. ``mlwarden monitor drift`` is timed imports included, so the two
distributions it needs are evaluated here:

* :func:`ks_sf` is ``scipy.stats.kstwo.sf(d, n)``, the exact distribution of the two-sided one-sample KS statistic
  that ``ks_2samp`` uses for large samples, with scipy's method selection (Simard and L'Ecuyer, "Computing the
  Two-Sided Kolmogorov-Smirnov Distribution", J. Stat. Softw. 39(11), 2011): for ``n > 140``

  - ``n d^2 >= 2.2`` or ``d >= 0.5``: twice the one-sided Smirnov probability, :func:`smirnov_sf` — the
    Birnbaum-Tingey sum (Ann. Math. Statist. 22, 1951), evaluated term by term as binomial probabilities with
    Loader's saddle-point form ("Fast and Accurate Computation of Binomial Probabilities", 2000), which has no
    cancellation, so every term is accurate to ~1e-14 relative; for ``n > 10^6`` the approximation
    ``exp(-(6 n d + 1)^2 / (18 n))`` scipy uses there;
  - smaller ``n d^2``: the Pelz-Good asymptotic expansion ``K0(z) + K1(z)/sqrt(n) + K2(z)/n + K3(z)/n^1.5`` with
    ``z = d sqrt(n)`` (Pelz and Good, JRSS B 38, 1976, in the small-``z`` form of Simard and L'Ecuyer, section 3);
  - ``n d <= 1`` and ``n d >= n - 1``: the closed forms of Ruben and Gambino.

  Handed to scipy.stats itself, imported then: ``n <= 140`` and the Durbin-matrix range (``n <= 100,000`` and
  ``n d^1.5 <= 1.4`` with ``n d > 1``: p-values near 1, two almost identical large samples).
* :func:`chi2_sf` is ``scipy.special.chdtrc(dof, x)``, the regularized upper incomplete gamma function
  ``Q(dof/2, x/2)``: its power series below ``x/2 < dof/2 + 1``, its continued fraction (modified Lentz) above, both
  with the factor ``(x/2)^a e^(-x/2) / Gamma(a + 1)`` in Loader's form (no large logarithms that cancel).
  :func:`chi2_homogeneity` is ``scipy.stats.chi2_contingency(table, correction=False)`` on top of it.

Agreement with scipy (``tests/monitor/test_pvalues.py``, over grids and random samples): within 1e-10 relative or
1e-13 absolute, whichever is larger, for both. The guarantee documented and relied upon is the looser one, **at
most 1e-9 absolute**, which can change a verdict only for a p-value within 1e-9 of its threshold.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

_LOG_TINY = math.log(np.finfo(np.float64).tiny)
_MIN_LOG = -708.3964185322641  # log of the smallest normal double: cephes' MINLOG, where smirnov returns 0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_EPS = float(np.finfo(np.float64).eps)
#: Birnbaum-Tingey terms are evaluated this many at a time (bounded memory for n up to 10^6).
_BLOCK = 1 << 16
#: Above this n, scipy's smirnov uses an approximation instead of the sum: so does :func:`smirnov_sf`.
SMIRNOV_MAX_N = 1_000_000
#: Iterations of the incomplete-gamma series or continued fraction before scipy is asked instead.
_GAMMA_MAX_ITER = 100_000
# Stirling's error lgamma(k + 1) - (k + 1/2) log k + k - log sqrt(2 pi) for k = 0..15, from math.lgamma (k = 0 is
# lgamma(1) - log sqrt(2 pi) by convention); larger k use the series in _stirlerr.
_STIRLERR_SMALL = np.array(
    [-_HALF_LOG_2PI] + [math.lgamma(k + 1.0) - (k + 0.5) * math.log(k) + k - _HALF_LOG_2PI for k in range(1, 16)]
)


def ks_sf(d: float, n: int) -> float:
    """``P(D_n > d)`` for the two-sided one-sample KS statistic with ``n`` values (``scipy.stats.kstwo.sf``)."""
    if d >= 1.0:
        return 0.0
    if d <= 0.0:
        return 1.0
    t = n * d
    if t <= 1.0 and n > 140:  # Ruben-Gambino: P(D_n <= d) = n!/n^n (2t - 1)^n, below 1e-60 for n > 140
        if t <= 0.5:
            return 1.0
        cdf = math.exp(-n + 0.5 * math.log(n) + _HALF_LOG_2PI + _stirlerr(float(n)) + n * math.log(2.0 * t - 1.0))
        return float(np.clip(1.0 - cdf, 0.0, 1.0))
    if t >= n - 1 and n > 140:  # Ruben-Gambino
        return float(np.clip(2.0 * (1.0 - d) ** n, 0.0, 1.0))
    nd2 = t * d
    if n <= 140 or (nd2 < 2.2 and d < 0.5 and n <= 100_000 and n * d**1.5 <= 1.4):
        from scipy import stats  # outside the ranges computed here (rare for batch drift): scipy's own code

        return float(stats.kstwo.sf(d, n))
    if d < 0.5 and nd2 >= 370.0:
        return 0.0
    if d >= 0.5 or nd2 >= 2.2:
        return float(np.clip(2.0 * smirnov_sf(n, d), 0.0, 1.0))
    return float(np.clip(1.0 - _pelz_good_cdf(n, d), 0.0, 1.0))


def smirnov_sf(n: int, d: float) -> float:
    """``P(D+_n >= d)``, the one-sided KS statistic's survival function (``scipy.special.smirnov(n, d)``).

    For ``1 < n d < n - 1`` (the range :func:`ks_sf` uses it in): the Birnbaum-Tingey sum
    ``d sum_{v=0}^{floor(n(1-d))} C(n, v) (d + v/n)^(v-1) (1 - d - v/n)^(n-v)``. Each term is a binomial probability
    ``b(v; n, p_v) / p_v`` with ``p_v = d + v/n``, computed as ``exp(-stirling errors - deviances)`` (Loader, 2000):
    all terms are positive, so the sum is as accurate as its terms.

    Raises:
        ValueError: ``n d`` outside ``(1, n - 1)``.
    """
    t = n * d
    if not 1.0 < t < n - 1:
        raise ValueError(f"smirnov_sf computes 1 < n d < n - 1 only, got n={n}, d={d}")
    if -2.0 * t * d < _MIN_LOG:
        return 0.0
    if n > SMIRNOV_MAX_N:
        log_p = -((6.0 * t + 1.0) ** 2) / (18.0 * n)
        return math.exp(log_p) if log_p < -math.log(2.0) else 1.0 + math.expm1(log_p)
    total = math.exp(n * math.log1p(-d)) / d  # v = 0: (1 - d)^n / d
    last = math.ceil(n - t) - 1  # the largest v with 1 - d - v/n > 0
    base = _stirlerr(float(n)) + 0.5 * math.log(n / (2.0 * math.pi))  # binomial terms' common part
    for start in range(1, last + 1, _BLOCK):
        v = np.arange(start, min(start + _BLOCK, last + 1), dtype=np.float64)
        rest = n - v  # n - v >= 1
        np_rest = rest - t  # n (1 - p_v) > 0
        keep = np_rest > 0.0
        if not keep.all():
            v, rest, np_rest = v[keep], rest[keep], np_rest[keep]
        log_term = (
            base
            - _stirlerr_array(v)
            - _stirlerr_array(rest)
            - _bd0(v, v + t)
            - _bd0(rest, np_rest)
            - 0.5 * np.log(v * rest)
            - np.log((v + t) / n)  # / p_v
        )
        terms = np.exp(log_term)
        total += float(terms.sum())
        # Past the terms' mode, stop once the rest cannot count even if it stayed at the last term (scipy's rule).
        remaining = last - int(v[-1]) if v.size else 0
        if v.size > 1 and terms[-1] < terms[-2] and 4.0 * remaining * terms[-1] < _EPS * total:
            break
    return min(1.0, d * total)


def _stirlerr(k: float) -> float:
    """``lgamma(k + 1) - (k + 1/2) log k + k - log sqrt(2 pi)`` for ``k > 0`` (Stirling's series above 15)."""
    if k > 15.0:
        k2 = 1.0 / (k * k)
        return (1 / 12 - (1 / 360 - (1 / 1260 - (1 / 1680 - 1 / 1188 * k2) * k2) * k2) * k2) / k
    if k == int(k):
        return float(_STIRLERR_SMALL[int(k)])
    return math.lgamma(k + 1.0) - (k + 0.5) * math.log(k) + k - _HALF_LOG_2PI


def _stirlerr_array(k: NDArray[np.float64]) -> NDArray[np.float64]:
    """:func:`_stirlerr` of positive integers (as floats), element-wise."""
    k2 = 1.0 / (k * k)
    out = (1 / 12 - (1 / 360 - (1 / 1260 - (1 / 1680 - 1 / 1188 * k2) * k2) * k2) * k2) / k
    small = k <= 15.0
    if small.any():
        out[small] = _STIRLERR_SMALL[k[small].astype(np.intp)]
    return out


def _bd0(x: NDArray[np.float64], m: NDArray[np.float64]) -> NDArray[np.float64]:
    """Loader's deviance ``x log(x/m) + m - x`` (>= 0), by its series when ``x`` is near ``m`` (no cancellation)."""
    x, m = np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64)
    diff = x - m
    out = np.empty_like(diff)
    near = np.abs(diff) < 0.1 * (x + m)
    far = ~near
    out[far] = x[far] * np.log(x[far] / m[far]) + m[far] - x[far]
    if near.any():
        dn, xn = diff[near], x[near]
        v = dn / (x[near] + m[near])  # |v| < 0.1: ten terms of the series are below 1e-19 of the first
        v2 = v * v
        s = dn * v
        ej = 2.0 * xn * v
        for j in range(1, 11):
            ej = ej * v2
            s = s + ej / (2 * j + 1)
        out[near] = s
    return out


def _pelz_good_cdf(n: int, d: float) -> float:
    """The Pelz-Good approximation of ``P(D_n <= d)`` (small-``z`` form, theta-function sums over odd ``m``)."""
    z = math.sqrt(n) * d
    z2 = z * z
    if -(math.pi**2) / (8.0 * z2) < _LOG_TINY:
        return 0.0
    terms = max(1, math.ceil(16.0 * z / math.pi))  # every further term is below 1e-100 of the first
    m2 = (2.0 * np.arange(1, terms + 1) - 1.0) ** 2  # odd m, squared
    w = np.exp(-(math.pi**2) * m2 / (8.0 * z2))  # q^(m^2), q = exp(-pi^2 / (8 z^2))
    a = math.pi**2 * m2 / 4.0  # (pi m / 2)^2
    k0 = w.sum() / z
    k1 = ((a - z2) * w).sum() / (6.0 * z**4)
    k2 = ((6 * z**6 + 2 * z**4) + (2 * z**4 - 5 * z2) * a + (1 - 2 * z2) * a**2) * w
    k3 = (
        -30 * z**6 - 90 * z**8 + (135 * z**4 - 96 * z**6) * a + (212 * z**4 - 60 * z2) * a**2 + (5 - 30 * z2) * a**3
    ) * w
    k2_sum, k3_sum = k2.sum() / (72.0 * z**7), k3.sum() / (6480.0 * z**10)
    k = np.arange(1, terms + 1, dtype=np.float64)
    v = np.exp(-(math.pi**2) * k * k / (2.0 * z2))  # q'^(k^2), q' = exp(-pi^2 / (2 z^2)), all integers k
    k2_sum -= math.pi**2 / (36.0 * z**3) * float((k * k * v).sum())
    k3_sum += math.pi**2 / (216.0 * z**6) * float(((3.0 * z2 - math.pi**2 * k * k) * k * k * v).sum())
    root = math.sqrt(2.0 * math.pi)
    return root * (k0 + k1 / math.sqrt(n) + k2_sum / n + k3_sum / n**1.5)


def chi2_sf(dof: int, statistic: float) -> float:
    """``P(X > statistic)`` for a chi-squared variable with ``dof`` degrees of freedom (``scipy.special.chdtrc``).

    The regularized upper incomplete gamma function ``Q(a, x)`` with ``a = dof / 2``, ``x = statistic / 2``.
    """
    if dof <= 0:
        raise ValueError(f"dof must be positive, got {dof}")
    if not statistic > 0.0:  # also NaN: no evidence
        return 1.0 if statistic == statistic else float("nan")
    a, x = 0.5 * dof, 0.5 * statistic
    if math.isinf(x):
        return 0.0
    # x^a e^-x / Gamma(a + 1) = exp(-stirlerr(a) - bd0(a, x)) / sqrt(2 pi a)  (Loader's form of a Poisson density)
    lead = math.exp(-_stirlerr(a) - float(_bd0(np.array([a]), np.array([x]))[0])) / math.sqrt(2.0 * math.pi * a)
    if x < a + 1.0:  # P(a, x) = lead * sum_k x^k / ((a+1)...(a+k)), then Q = 1 - P (P is not close to 1 here)
        term = total = 1.0
        for k in range(1, _GAMMA_MAX_ITER):
            term *= x / (a + k)
            total += term
            if term < total * 1e-17:
                return min(1.0, max(0.0, 1.0 - lead * total))
        return _scipy_chdtrc(dof, statistic)
    if lead == 0.0:
        return 0.0
    # Q(a, x) = a * lead / (x + 1 - a - 1 (1 - a) / (x + 3 - a - 2 (2 - a) / (x + 5 - a - ...))), modified Lentz.
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    dd = 1.0 / b
    h = dd
    for i in range(1, _GAMMA_MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        dd = an * dd + b
        dd = tiny if abs(dd) < tiny else dd
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        dd = 1.0 / dd
        delta = dd * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            return min(1.0, max(0.0, a * lead * h))
    return _scipy_chdtrc(dof, statistic)


def _scipy_chdtrc(dof: int, statistic: float) -> float:
    """The value of scipy itself, for the (not observed) case where neither expansion converged in time."""
    import scipy.special

    return float(scipy.special.chdtrc(dof, statistic))


def chi2_homogeneity(table: NDArray[np.float64]) -> tuple[float, float, int]:
    """Pearson's chi-squared ``(statistic, p-value, dof)`` of a contingency table with no empty row or column.

    The same as ``scipy.stats.chi2_contingency(table, correction=False)`` (the p-value to 1e-9 absolute).
    """
    observed = np.asarray(table, dtype=np.float64)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    dof = int(expected.size - sum(expected.shape) + expected.ndim - 1)
    if dof == 0:
        return 0.0, 1.0, 0
    stat = float(((observed - expected) ** 2 / expected).sum())
    return stat, chi2_sf(dof, stat), dof

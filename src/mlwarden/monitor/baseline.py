"""The baseline profile captured from reference data at approval, against which live traffic is judged.

A :class:`Baseline` holds, per feature, what the drift tests of :mod:`mlwarden.monitor.drift` need and
nothing that grows with the reference set: for numeric features the quantile bin edges and reference bin
fractions (PSI), a bounded seeded subsample (two-sample KS, MMD), range and moments (input validation);
for categorical features the counts of the most frequent categories plus one "other" bucket (chi-squared).
It also keeps the mean vector and covariance of the numeric features for a Mahalanobis distance.

It is serialised to a small, versioned JSON document so that the registry can store it as an attachment of
the approved version (and sign it with the rest); :meth:`Baseline.from_json` validates everything it reads
and raises :class:`~mlwarden.core.errors.UsageError` on any malformed document.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mlwarden.core.errors import UsageError

FORMAT = "mlwarden.baseline/1"
Kind = Literal["numeric", "categorical"]


@dataclass(frozen=True, slots=True)
class BaselineConfig:
    """How a baseline is captured (validated on construction).

    Attributes:
        n_bins: PSI bins per numeric feature, at reference quantiles (10 = deciles, the usual choice).
        sample_size: reference values kept per numeric feature for KS and MMD (seeded subsample).
        max_categories: categories kept per categorical feature; rarer ones share one "other" bucket.
        max_value_len: categorical values are truncated to this many characters (as in the windows).
        min_reference: fewest reference rows accepted.
        seed: seed of the subsample, so the same data always gives the same baseline.
    """

    n_bins: int = 10
    sample_size: int = 2000
    max_categories: int = 100
    max_value_len: int = 256
    min_reference: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.n_bins <= 1000:
            raise UsageError(f"n_bins must be in 2..1000, got {self.n_bins}")
        if not 10 <= self.sample_size <= 1_000_000:
            raise UsageError(f"sample_size must be in 10..1000000, got {self.sample_size}")
        if not 1 <= self.max_categories <= 100_000:
            raise UsageError(f"max_categories must be in 1..100000, got {self.max_categories}")
        if self.max_value_len < 1:
            raise UsageError(f"max_value_len must be positive, got {self.max_value_len}")
        if self.min_reference < 2:
            raise UsageError(f"min_reference must be at least 2, got {self.min_reference}")


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    """What the baseline knows about one feature.

    Numeric features fill ``edges`` (interior quantile edges, strictly increasing), ``fractions`` (reference
    share of each of the ``len(edges) + 1`` bins), ``sample`` (the same seeded reference rows for every
    numeric feature, so samples stay aligned), ``mean``, ``std``, ``minimum`` and ``maximum``.
    Categorical features fill ``categories`` (``(value, count)``, most frequent first) and ``other_count``
    (reference rows whose category was beyond ``max_categories``).
    """

    name: str
    kind: Kind
    n: int
    edges: tuple[float, ...] = ()
    fractions: tuple[float, ...] = ()
    sample: tuple[float, ...] = ()
    mean: float = 0.0
    std: float = 0.0
    minimum: float = 0.0
    maximum: float = 0.0
    categories: tuple[tuple[str, int], ...] = ()
    other_count: int = 0


def bin_index(values: NDArray[np.float64], edges: Sequence[float] | NDArray[np.float64]) -> NDArray[np.intp]:
    """Bin of each value given interior edges: bin ``i`` is ``edges[i-1] < v <= edges[i]`` (open at both ends).

    The same function bins reference and live data, so both are cut identically.
    """
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left").astype(np.intp)


def _numeric_profile(
    name: str, col: NDArray[np.float64], cfg: BaselineConfig, rows: NDArray[np.intp]
) -> FeatureProfile:
    qs = np.quantile(col, np.linspace(0.0, 1.0, cfg.n_bins + 1)[1:-1])
    edges = np.unique(qs)  # ties (e.g. integer features) merge bins rather than leave empty ones
    counts = np.bincount(bin_index(col, edges), minlength=edges.size + 1)
    sample = col[rows]
    return FeatureProfile(
        name=name,
        kind="numeric",
        n=int(col.size),
        edges=tuple(float(e) for e in edges),
        fractions=tuple(float(c) / col.size for c in counts),
        sample=tuple(float(v) for v in sample),
        mean=float(col.mean()),
        std=float(col.std(ddof=1)),
        minimum=float(col.min()),
        maximum=float(col.max()),
    )


def _categorical_profile(name: str, col: Sequence[object] | NDArray[np.str_], cfg: BaselineConfig) -> FeatureProfile:
    if isinstance(col, np.ndarray) and col.dtype.kind == "U":  # fast path: counted in C, truncated by the dtype
        narrow = col if col.dtype.itemsize // 4 <= cfg.max_value_len else col.astype(f"<U{cfg.max_value_len}")
        values, counts = np.unique(narrow, return_counts=True)
        counter: Mapping[str, int] = dict(zip(values.tolist(), counts.tolist(), strict=True))
    else:
        counter = Counter((v if isinstance(v, str) else str(v))[: cfg.max_value_len] for v in col)
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = tuple((k, int(c)) for k, c in ranked[: cfg.max_categories])
    other = sum(c for _, c in ranked[cfg.max_categories :])
    return FeatureProfile(name=name, kind="categorical", n=len(col), categories=kept, other_count=int(other))


@dataclass(frozen=True, slots=True)
class Baseline:
    """A per-feature reference profile (see the module docstring); build it with :meth:`from_reference`.

    Attributes:
        features: one profile per feature, in the order of the reference data.
        n_reference: rows of reference data.
        mean: mean vector of the numeric features (in ``numeric_names`` order).
        cov: covariance matrix of the numeric features, row-major.
        config: the capture settings.
    """

    features: tuple[FeatureProfile, ...]
    n_reference: int
    mean: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    config: BaselineConfig

    @classmethod
    def from_reference(
        cls,
        data: Mapping[str, ArrayLike] | ArrayLike,
        *,
        feature_names: Sequence[str] | None = None,
        categorical: Sequence[str] = (),
        config: BaselineConfig | None = None,
    ) -> Baseline:
        """Profile reference data.

        Args:
            data: ``{feature name: 1-D column}``, or a 2-D array (rows are examples) with ``feature_names``
                (default ``x0, x1, ...``).
            feature_names: column names for a 2-D array.
            categorical: names of the categorical features; every other feature must be numeric and finite.
            config: capture settings.

        Raises:
            UsageError: on ragged, too small, non-finite or unknown-feature data.
        """
        cfg = config or BaselineConfig()
        columns = _columns(data, feature_names)
        unknown = set(categorical) - set(columns)
        if unknown:
            raise UsageError(f"categorical feature(s) not in the data: {sorted(unknown)}")
        lengths = {len(c) for c in columns.values()}
        if len(lengths) != 1:
            raise UsageError(f"reference columns have different lengths: {sorted(lengths)}")
        n = lengths.pop()
        if n < cfg.min_reference:
            raise UsageError(f"reference data has {n} rows; at least {cfg.min_reference} are needed")
        # One set of rows for every numeric feature, so the samples stay aligned (MMD compares whole rows).
        rows = (
            np.arange(n)
            if n <= cfg.sample_size
            else np.sort(np.random.default_rng(cfg.seed).choice(n, size=cfg.sample_size, replace=False))
        )
        profiles: list[FeatureProfile] = []
        numeric_cols: list[NDArray[np.float64]] = []
        for name, col in columns.items():
            if name in categorical:
                values = col if isinstance(col, np.ndarray) and col.dtype.kind == "U" else list(col)
                profiles.append(_categorical_profile(name, values, cfg))
                continue
            try:
                arr = np.asarray(col, dtype=np.float64)
            except (TypeError, ValueError):
                raise UsageError(f"feature {name!r} is not numeric; list it in categorical=") from None
            if not np.all(np.isfinite(arr)):
                raise UsageError(f"feature {name!r} has NaN or infinite reference values")
            profiles.append(_numeric_profile(name, arr, cfg, rows))
            numeric_cols.append(arr)
        if numeric_cols:
            mat = np.column_stack(numeric_cols)
            mean = tuple(float(v) for v in mat.mean(axis=0))
            cov_m = np.atleast_2d(np.cov(mat, rowvar=False))
            cov = tuple(tuple(float(v) for v in row) for row in cov_m)
        else:
            mean, cov = (), ()
        return cls(tuple(profiles), n, mean, cov, cfg)

    @property
    def numeric_names(self) -> tuple[str, ...]:
        """Names of the numeric features, in order."""
        return tuple(f.name for f in self.features if f.kind == "numeric")

    @property
    def categorical_names(self) -> tuple[str, ...]:
        """Names of the categorical features, in order."""
        return tuple(f.name for f in self.features if f.kind == "categorical")

    def feature(self, name: str) -> FeatureProfile:
        """The profile of one feature by name."""
        for f in self.features:
            if f.name == name:
                return f
        raise UsageError(f"no feature {name!r} in the baseline")

    def mahalanobis(self, x: ArrayLike, ridge: float = 1e-9) -> NDArray[np.float64]:
        """Mahalanobis distance (Mahalanobis, 1936) of numeric rows to the reference mean.

        The covariance gets a small ridge (relative to its trace) so that constant or collinear features do
        not make it singular.
        """
        rows = np.atleast_2d(np.asarray(x, dtype=np.float64))
        mu = np.asarray(self.mean)
        if rows.shape[1] != mu.size:
            raise UsageError(f"expected {mu.size} numeric features, got {rows.shape[1]}")
        cov = np.asarray(self.cov)
        cov = cov + np.eye(mu.size) * ridge * max(float(np.trace(cov)), 1.0)
        diff = rows - mu
        sol = np.linalg.solve(cov, diff.T).T
        return np.sqrt(np.maximum(np.einsum("ij,ij->i", diff, sol), 0.0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (format ``mlwarden.baseline/1``)."""
        c = self.config
        return {
            "format": FORMAT,
            "n_reference": self.n_reference,
            "config": {
                "n_bins": c.n_bins,
                "sample_size": c.sample_size,
                "max_categories": c.max_categories,
                "max_value_len": c.max_value_len,
                "min_reference": c.min_reference,
                "seed": c.seed,
            },
            "mean": list(self.mean),
            "cov": [list(r) for r in self.cov],
            "features": [_profile_dict(f) for f in self.features],
        }

    def to_json(self) -> str:
        """Serialise to compact JSON (floats round-trip exactly)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Baseline:
        """Rebuild a baseline from :meth:`to_dict` output, validating every field."""
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise UsageError(f"not a baseline document (expected format {FORMAT!r})")
        try:
            cfg = BaselineConfig(**{k: int(v) for k, v in dict(doc["config"]).items()})
            features = tuple(_profile_from(f) for f in doc["features"])
            mean = tuple(_finite(v) for v in doc["mean"])
            cov = tuple(tuple(_finite(v) for v in row) for row in doc["cov"])
            n_ref = int(doc["n_reference"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"malformed baseline document: {exc}") from None
        n_num = sum(f.kind == "numeric" for f in features)
        if len(mean) != n_num or len(cov) != n_num or any(len(r) != n_num for r in cov):
            raise UsageError("malformed baseline document: mean/cov do not match the numeric features")
        if len({f.name for f in features}) != len(features) or not features:
            raise UsageError("malformed baseline document: feature names missing or duplicated")
        return cls(features, n_ref, mean, cov, cfg)

    @classmethod
    def from_json(cls, text: str | bytes) -> Baseline:
        """Parse :meth:`to_json` output."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"baseline is not valid JSON: {exc}") from None
        return cls.from_dict(doc)


def _columns(data: Mapping[str, ArrayLike] | ArrayLike, names: Sequence[str] | None) -> dict[str, Any]:
    if isinstance(data, Mapping):
        if not data:
            raise UsageError("reference data has no features")
        return {str(k): np.asarray(v).ravel() if not isinstance(v, list) else v for k, v in data.items()}
    arr = np.asarray(data)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise UsageError(f"reference data must be 2-D (rows, features), got shape {arr.shape}")
    names = list(names) if names is not None else [f"x{i}" for i in range(arr.shape[1])]
    if len(names) != arr.shape[1] or len(set(names)) != len(names):
        raise UsageError(f"need {arr.shape[1]} distinct feature names, got {names}")
    return {n: arr[:, i] for i, n in enumerate(names)}


def _finite(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v!r}")
    return float(v)


def _profile_dict(f: FeatureProfile) -> dict[str, Any]:
    if f.kind == "categorical":
        return {"name": f.name, "kind": f.kind, "n": f.n, "categories": [list(c) for c in f.categories],
                "other_count": f.other_count}  # fmt: skip
    return {"name": f.name, "kind": f.kind, "n": f.n, "edges": list(f.edges), "fractions": list(f.fractions),
            "sample": list(f.sample), "mean": f.mean, "std": f.std, "minimum": f.minimum,
            "maximum": f.maximum}  # fmt: skip


def _profile_from(d: Mapping[str, Any]) -> FeatureProfile:
    name, kind, n = d["name"], d["kind"], int(d["n"])
    if not isinstance(name, str) or n < 1:
        raise ValueError(f"bad feature name or count: {name!r}, {n}")
    if kind == "categorical":
        cats = tuple((str(k), int(c)) for k, c in d["categories"])
        if any(c < 0 for _, c in cats) or int(d["other_count"]) < 0:
            raise ValueError(f"negative category count in {name!r}")
        return FeatureProfile(name=name, kind="categorical", n=n, categories=cats, other_count=int(d["other_count"]))
    if kind != "numeric":
        raise ValueError(f"unknown feature kind {kind!r}")
    edges = tuple(_finite(v) for v in d["edges"])
    fractions = tuple(_finite(v) for v in d["fractions"])
    sample = tuple(_finite(v) for v in d["sample"])
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or len(fractions) != len(edges) + 1:
        raise ValueError(f"bin edges of {name!r} are not increasing or do not match the fractions")
    if not sample:
        raise ValueError(f"empty reference sample for {name!r}")
    return FeatureProfile(
        name=name,
        kind="numeric",
        n=n,
        edges=edges,
        fractions=fractions,
        sample=sample,
        mean=_finite(d["mean"]),
        std=_finite(d["std"]),
        minimum=_finite(d["minimum"]),
        maximum=_finite(d["maximum"]),
    )

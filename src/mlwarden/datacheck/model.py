"""The values a data check produces: rates with confidence intervals, one result per check, the report.

Every check states what it measured and how (parameters, seed, rows, run time) and gives numbers, not verdicts:
deciding what rate is acceptable belongs to the registry's gates, which read these numbers. Values are frozen;
:meth:`DataCheckReport.to_dict` is the JSON documented in ``docs/data-checks.md`` (schema :data:`SCHEMA_ID`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlwarden.core.errors import UsageError

SCHEMA_ID = "https://mlwarden.dev/data-check/v1"
SCHEMA_VERSION = "1.0"
Z95 = 1.959963984540054


class DataCheckError(UsageError):
    """The data cannot be checked as asked: missing or corrupt file, unknown column, wrong argument."""


def wilson(count: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``count / total`` (95 % by default); ``(0, 1)`` when ``total`` is 0.

    Wilson rather than the normal approximation because the rates here are often 0 or tiny, where the
    normal interval collapses to a point.
    """
    if total <= 0:
        return (0.0, 1.0)
    p = count / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` of ``total`` rows, with its Wilson 95 % interval."""

    count: int
    total: int

    @property
    def rate(self) -> float:
        """``count / total`` (0 when nothing was counted)."""
        return self.count / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form: count, total, rate and ``ci95`` as ``[low, high]``."""
        low, high = wilson(self.count, self.total)
        return {"count": self.count, "total": self.total, "rate": self.rate, "ci95": [low, high]}


@dataclass(frozen=True, slots=True)
class CheckInfo:
    """A registered check: stable id (reports and gates use it), title and a one-line description."""

    id: str
    title: str
    description: str


CHECKS: dict[str, CheckInfo] = {}


def _check(id: str, title: str, description: str) -> None:
    CHECKS[id] = CheckInfo(id, title, description)


_check("class_balance", "Class balance", "Rows per class (and per sensitive group), with Wilson intervals")
_check("duplicates", "Duplicates", "Exact and near duplicate rows; duplicates whose labels conflict")
_check(
    "label_issues",
    "Label errors",
    "Confident learning (cleanlab) on out-of-fold probabilities of a quick cross-validated model",
)
_check("outliers", "Outliers", "IsolationForest anomaly scores on the numeric and one-hot features")
_check("pii", "Personal data", "The guard's validated PII and secret detectors over every text column")
_check(
    "backdoor",
    "Backdoor poisoning",
    "Spectral signatures and activation clustering (ART) on the model's activations, per class",
)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome.

    Attributes:
        id: the check's id (see :data:`CHECKS`).
        parameters: every setting that changes the numbers.
        seed: the random seed used (``None`` for deterministic checks).
        rows: rows the check looked at (after sampling).
        seconds: wall-clock time of the check.
        metrics: the numbers (rates as :meth:`Rate.to_dict`).
        samples: flagged rows (row numbers counted from 0 in file order), capped; counts in ``metrics`` are exact.
        status: ``ok``, ``skipped`` (not applicable, ``reason`` says why) or ``error`` (it could not run: fail closed,
            never reported as clean).
    """

    id: str
    parameters: Mapping[str, Any]
    seed: int | None
    rows: int
    seconds: float
    metrics: Mapping[str, Any] = field(default_factory=dict)
    samples: tuple[Mapping[str, Any], ...] = ()
    status: str = "ok"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (see ``docs/data-checks.md``)."""
        info = CHECKS[self.id]
        return {
            "id": self.id,
            "title": info.title,
            "status": self.status,
            "reason": self.reason,
            "parameters": dict(self.parameters),
            "seed": self.seed,
            "rows": self.rows,
            "seconds": round(self.seconds, 4),
            "metrics": dict(self.metrics),
            "samples": [dict(s) for s in self.samples],
        }


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """A column and how the checks treat it: ``numeric``, ``categorical``, ``text``, ``identifier`` or ``label``."""

    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """What was checked: the path, its format and digest (the one a dataset manifest records), its size."""

    path: str
    format: str
    sha256: str
    bytes: int
    rows: int
    columns: tuple[ColumnInfo, ...]
    label: str | None
    sensitive: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "path": self.path,
            "format": self.format,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "rows": self.rows,
            "columns": [{"name": c.name, "kind": c.kind} for c in self.columns],
            "label": self.label,
            "sensitive": self.sensitive,
        }


@dataclass(frozen=True, slots=True)
class DataCheckReport:
    """Every check's result over one dataset."""

    dataset: DatasetInfo
    checks: tuple[CheckResult, ...]
    seed: int
    seconds: float
    created_at: str
    tool_version: str

    def check(self, id: str) -> CheckResult:
        """The result of check ``id`` (KeyError when it did not run)."""
        for result in self.checks:
            if result.id == id:
                return result
        raise KeyError(id)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (schema :data:`SCHEMA_ID`, version :data:`SCHEMA_VERSION`)."""
        return {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "mlwarden", "version": self.tool_version},
            "created_at": self.created_at,
            "seed": self.seed,
            "seconds": round(self.seconds, 4),
            "dataset": self.dataset.to_dict(),
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON (NaN never appears: non-finite numbers become ``null``)."""
        return json.dumps(json_safe(self.to_dict()), indent=2, sort_keys=False)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN), through dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value

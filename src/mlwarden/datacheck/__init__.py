"""Data checks before approval: label errors and flips, duplicates, outliers, class balance, personal data, backdoors.

``check_dataset(path, CheckOptions(label=...))`` streams a CSV, Parquet, JSON Lines, NPY/NPZ file or an image
folder once and returns a :class:`DataCheckReport` of numbers (rates with Wilson intervals, parameters, seeds,
sizes, run times); ``render`` turns it into text, JSON or HTML and ``manifest_summary`` into the ``pii_scan``
field of a signed dataset manifest. See ``docs/data-checks.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlwarden.datacheck.model import CHECKS, CheckResult, DataCheckError, DataCheckReport, DatasetInfo, Rate

if TYPE_CHECKING:
    from mlwarden.datacheck.run import DEFAULT_CHECKS, CheckOptions, check_dataset

_LAZY = frozenset({"DEFAULT_CHECKS", "CheckOptions", "check_dataset"})


def __getattr__(name: str) -> Any:
    # The runner imports pandas and scikit-learn; the CLI parser only needs CHECKS (start-up time).
    if name in _LAZY:
        from mlwarden.datacheck import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHECKS",
    "DEFAULT_CHECKS",
    "CheckOptions",
    "CheckResult",
    "DataCheckError",
    "DataCheckReport",
    "DatasetInfo",
    "Rate",
    "check_dataset",
]

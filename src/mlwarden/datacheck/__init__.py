"""Data checks before approval: label errors and flips, duplicates, outliers, class balance, personal data, backdoors.

``check_dataset(path, CheckOptions(label=...))`` streams a CSV, Parquet, JSON Lines, NPY/NPZ file or an image
folder once and returns a :class:`DataCheckReport` of numbers (rates with Wilson intervals, parameters, seeds,
sizes, run times); ``render`` turns it into text, JSON or HTML and ``manifest_summary`` into the ``pii_scan``
field of a signed dataset manifest. See ``docs/data-checks.md``.
"""

from __future__ import annotations

from mlwarden.datacheck.model import CHECKS, CheckResult, DataCheckError, DataCheckReport, DatasetInfo, Rate
from mlwarden.datacheck.run import DEFAULT_CHECKS, CheckOptions, check_dataset

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

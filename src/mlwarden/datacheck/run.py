"""Run the data checks over one dataset: one streaming pass, then the checks that need a sample in memory.

The pass feeds every chunk to the streaming checks (personal data, duplicates, class balance) and to the
feature sample; confident learning and outliers then run on the sample, and the backdoor check (image folders
with ``model``) on the images themselves. A check that fails is reported with ``status: error`` and its reason —
never dropped, never reported as clean.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlwarden._version import __version__
from mlwarden.core.errors import MlwardenError
from mlwarden.datacheck.duplicates import DuplicateScan
from mlwarden.datacheck.features import FeatureSample
from mlwarden.datacheck.model import CHECKS, CheckResult, DataCheckError, DataCheckReport, DatasetInfo, Rate
from mlwarden.datacheck.pii_scan import PiiScan
from mlwarden.datacheck.readers import open_source

DEFAULT_CHECKS = ("class_balance", "duplicates", "label_issues", "outliers", "pii")
PII_ENGINES = ("builtin", "presidio")


@dataclass(frozen=True, slots=True)
class CheckOptions:
    """What to check and how; every field that changes a number is echoed in the report."""

    label: str | None = None
    sensitive: str | None = None
    checks: tuple[str, ...] = DEFAULT_CHECKS
    seed: int = 0
    chunk_rows: int = 50_000
    folds: int = 5
    max_model_rows: int = 200_000
    near_tolerance: float = 0.05
    image_size: int = 16
    model: str | None = None
    dynamic: bool = True  # the backdoor check's model load: also run the sandboxed dynamic analysis
    pii_engine: str = "builtin"  # "builtin" (the guard's detectors) or "presidio" (the optional extra)
    presidio_spacy_model: str | None = None  # presidio only: a spaCy model for named entities (default: patterns)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.checks) - CHECKS.keys())
        if unknown:
            raise DataCheckError(f"--checks: unknown check(s) {unknown}; known: {sorted(CHECKS)}")
        minimums = (
            ("chunk_rows", self.chunk_rows, 1),
            ("folds", self.folds, 2),
            ("max_model_rows", self.max_model_rows, 10),
            ("image_size", self.image_size, 4),
        )
        for name, value, low in minimums:
            if value < low:
                raise DataCheckError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        if not 0 < self.near_tolerance < 10:
            raise DataCheckError(f"--near-tolerance must be within (0, 10), got {self.near_tolerance}")
        if self.pii_engine not in PII_ENGINES:
            raise DataCheckError(f"--pii-engine must be one of {list(PII_ENGINES)}, got {self.pii_engine!r}")
        if self.presidio_spacy_model and self.pii_engine != "presidio":
            raise DataCheckError("--presidio-spacy-model needs --pii-engine presidio")


def _balance(counts: Counter[str], by_group: dict[str, Counter[str]], seconds: float, label: str) -> CheckResult:
    total = sum(counts.values())
    metrics: dict[str, Any] = {
        "classes": len(counts),
        "by_class": {k: Rate(v, total).to_dict() for k, v in sorted(counts.items())},
    }
    if counts:
        metrics["imbalance_ratio"] = max(counts.values()) / min(counts.values())
        p = np.array(list(counts.values()), dtype=np.float64) / total
        metrics["normalised_entropy"] = float(-(p * np.log(p)).sum() / np.log(len(p))) if len(p) > 1 else 0.0
    if by_group:
        metrics["by_sensitive_group"] = {
            g: {k: Rate(c[k], sum(c.values())).to_dict() for k in sorted(counts)} for g, c in sorted(by_group.items())
        }
        rates = {k: [c[k] / max(sum(c.values()), 1) for c in by_group.values()] for k in counts}
        metrics["max_group_rate_difference"] = {k: max(v) - min(v) for k, v in sorted(rates.items())}
    return CheckResult("class_balance", {"label": label}, None, total, seconds, metrics)


def _pii_scanner(options: CheckOptions, columns: list[str]) -> tuple[PiiScan, dict[str, Any]]:
    """The personal-data scanner ``options`` asks for, and the parameters the report states for it."""
    if options.pii_engine == "presidio":
        from mlwarden.datacheck.presidio import PresidioScan

        scan = PresidioScan(columns, spacy_model=options.presidio_spacy_model)
        return scan, scan.parameters()
    return PiiScan(columns), {"engine": "builtin", "detectors": "all registered"}


def _guarded(check_id: str, run: Callable[[], CheckResult], rows: int) -> CheckResult:
    started = time.perf_counter()
    try:
        return run()
    except MlwardenError as exc:
        reason = str(exc)
    except (ValueError, ArithmeticError, MemoryError, ImportError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    return CheckResult(check_id, {}, None, rows, time.perf_counter() - started, status="error", reason=reason)


def check_dataset(path: Path | str, options: CheckOptions | None = None) -> DataCheckReport:  # noqa: C901
    """Check the dataset at ``path`` (CSV, Parquet, JSON Lines, NPY/NPZ or an image folder).

    Raises:
        DataCheckError: the data cannot be read, or a column or option does not exist.
    """
    from mlwarden.integrity.hashing import hash_model

    options = options or CheckOptions()
    started = time.perf_counter()
    path = Path(path)
    source = open_source(path, options.label, options.image_size)
    label = source.label
    if options.sensitive:
        source.require(options.sensitive, "--sensitive")
    wants = set(options.checks)
    needs_label = wants & {"class_balance", "label_issues"}
    text_columns = [c.name for c in source.columns if c.kind in ("categorical", "text", "identifier")]
    pii, pii_params = _pii_scanner(options, text_columns) if "pii" in wants else (None, {})
    dups = DuplicateScan(source.columns, label, source.scales, tolerance=options.near_tolerance)
    sample = FeatureSample(
        source.columns, options.max_model_rows, options.seed, extra=(label or "", options.sensitive or "")
    )
    counts: Counter[str] = Counter()
    by_group: dict[str, Counter[str]] = {}
    timings: dict[str, float] = dict.fromkeys(("pii", "duplicates", "class_balance", "sample"), 0.0)
    rows = 0
    for chunk in source.chunks(options.chunk_rows):
        rows += len(chunk)
        if pii is not None:
            t = time.perf_counter()
            pii.add(chunk)
            timings["pii"] += time.perf_counter() - t
        if "duplicates" in wants:
            t = time.perf_counter()
            dups.add(chunk)
            timings["duplicates"] += time.perf_counter() - t
        if label and needs_label:
            t = time.perf_counter()
            counts.update(chunk[label].to_numpy().tolist())
            if options.sensitive:
                for group, part in chunk.groupby(options.sensitive, sort=False):
                    by_group.setdefault(str(group), Counter()).update(part[label].to_numpy().tolist())
            timings["class_balance"] += time.perf_counter() - t
        if wants & {"label_issues", "outliers"}:
            t = time.perf_counter()
            sample.add(chunk)
            timings["sample"] += time.perf_counter() - t
    results: list[CheckResult] = []
    if "class_balance" in wants:
        if label:
            results.append(_balance(counts, by_group, timings["class_balance"], label))
        else:
            results.append(CheckResult("class_balance", {}, None, rows, 0.0, status="skipped", reason="no --label"))
    if "duplicates" in wants:
        t = time.perf_counter()
        metrics, samples = dups.metrics(), tuple(dups.samples())
        params = {"tolerance_std": options.near_tolerance, "hash": "pandas.util.hash_pandas_object (64-bit)"}
        seconds = timings["duplicates"] + time.perf_counter() - t
        results.append(CheckResult("duplicates", params, None, rows, seconds, metrics, samples))
    if "label_issues" in wants or "outliers" in wants:
        frame = sample.frame()
        if "label_issues" in wants:
            if label:
                from mlwarden.datacheck.labels import label_issues

                results.append(_guarded("label_issues", lambda: label_issues(
                    frame, sample.features, label, sensitive=options.sensitive, seed=options.seed,
                    folds=options.folds, population=rows), len(frame)))  # fmt: skip
            else:
                results.append(CheckResult("label_issues", {}, None, rows, 0.0, status="skipped", reason="no --label"))
        if "outliers" in wants:
            from mlwarden.datacheck.labels import outliers

            results.append(_guarded("outliers", lambda: outliers(
                frame, sample.features, seed=options.seed, population=rows), len(frame)))  # fmt: skip
    if pii is not None:
        metrics = pii.metrics()
        metrics["mb_per_second"] = metrics["bytes_scanned"] / 1e6 / max(timings["pii"], 1e-9)
        results.append(CheckResult("pii", pii_params, None, rows, timings["pii"], metrics))
    if "backdoor" in wants or options.model:
        from mlwarden.datacheck.poison import backdoor_check

        results.append(_guarded("backdoor", lambda: backdoor_check(
            source, options.model, seed=options.seed, dynamic=options.dynamic), rows))  # fmt: skip
    hashed = hash_model(path)
    info = DatasetInfo(
        path=str(path),
        format=source.format,
        sha256=hashed.digest,
        bytes=sum(f.size for f in hashed.files),
        rows=rows,
        columns=source.columns,
        label=label,
        sensitive=options.sensitive,
    )
    created = datetime.now(UTC).isoformat(timespec="seconds")
    order = {c: i for i, c in enumerate(CHECKS)}
    results.sort(key=lambda r: order[r.id])
    return DataCheckReport(info, tuple(results), options.seed, time.perf_counter() - started, created, __version__)

"""Attach a data-check report to a dataset manifest: the manifest's ``pii_scan`` field, filled and signed.

The dataset-manifest predicate has carried ``pii_scan: {"status": "not_scanned"}`` since its first version as
the place for this; filling it keeps the statement format (and every verifier) unchanged. The summary names the
report by its SHA-256, the data it checked by the digest a manifest records, and copies the headline numbers, so
a training record that cites the manifest says what its data was checked for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlwarden.datacheck.model import SCHEMA_ID, DataCheckError
from mlwarden.integrity.dataset import DatasetManifest

_HEADLINES = {
    "label_issues": ("issues",),
    "outliers": ("outliers",),
    "duplicates": ("exact", "near"),
    "class_balance": ("classes", "imbalance_ratio"),
    "pii": ("matches", "bytes_scanned"),
}


def read_report(path: Path | str) -> tuple[dict[str, Any], str]:
    """The report's JSON and the SHA-256 of its bytes.

    Raises:
        DataCheckError: missing, unreadable, not JSON, or not a data-check report.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        report = json.loads(data)
    except OSError as exc:
        raise DataCheckError(f"--check: cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataCheckError(f"--check: {path} is not JSON: {exc}") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA_ID:
        raise DataCheckError(f"--check: {path} is not a data-check report (schema {SCHEMA_ID})")
    return report, hashlib.sha256(data).hexdigest()


def manifest_summary(report: dict[str, Any], report_sha256: str, manifest: DatasetManifest) -> dict[str, Any]:
    """The ``pii_scan`` value for ``manifest``; the report must be about its data (whole dataset or one file).

    Raises:
        DataCheckError: the report checked other bytes than the manifest lists.
    """
    checked = str(report.get("dataset", {}).get("sha256", ""))
    files = {f.digest: f.path for f in manifest.files}
    if checked == manifest.digest:
        scope = "dataset"
    elif checked in files:
        scope = f"file:{files[checked]}"
    else:
        raise DataCheckError(
            f"--check: the report is about data with sha256:{checked}, not this dataset (sha256:{manifest.digest}) "
            "or one of its files"
        )
    checks: dict[str, Any] = {}
    for check in report.get("checks", []):
        keys = _HEADLINES.get(check.get("id"), ())
        entry = {"status": check.get("status"), "rows": check.get("rows"), "seed": check.get("seed")}
        entry.update({k: check.get("metrics", {}).get(k) for k in keys if k in check.get("metrics", {})})
        checks[str(check.get("id"))] = entry
    pii = next((c for c in report.get("checks", []) if c.get("id") == "pii"), None)
    return {
        "status": "scanned" if pii is not None and pii.get("status") == "ok" else "checked_without_pii_scan",
        "report": {"sha256": report_sha256, "schema": SCHEMA_ID, "created_at": report.get("created_at")},
        "scope": scope,
        "data_sha256": checked,
        "pii_matches": dict(pii.get("metrics", {}).get("matches", {})) if pii else None,
        "checks": checks,
    }

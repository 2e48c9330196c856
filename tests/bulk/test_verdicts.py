"""A bulk scan on Ray gives exactly the verdicts of a local scan, over the picklescan and modelaudit corpora.

Every file of both corpora (214 files, static mode) is scanned by Ray tasks into a SQLite store, then compared
one by one with :func:`mlwarden.scan.engine.scan_file` run here: status, verdict, worst severity, rule IDs,
formats, digest and the findings of the stored FileResult JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlwarden.bulk import BulkOptions, ResultStore, run_bulk
from mlwarden.core.policy import Policy
from mlwarden.report.jsonfmt import file_dict
from mlwarden.scan.engine import expand, scan_file
from mlwarden.scan.suppressions import file_digest
from tests.conftest import CORPUS

CORPORA = ("picklescan", "modelaudit")


def _local(path: Path, policy: Policy) -> dict[str, Any]:
    result = scan_file(path, policy)
    worst = result.max_severity
    failing = any(f.severity >= policy.fail_on for f in result.findings)
    return {
        "status": "failed" if result.error else "done",
        "verdict": "error" if result.error else "fail" if failing else "pass",
        "max_severity": None if worst is None else str(worst),
        "rule_ids": sorted({f.rule_id for f in result.findings}),
        "formats": sorted({fmt for _c, fmt in result.formats}),
        "findings": file_dict(result)["findings"],
    }


def test_same_verdicts_as_local_scan(ray_backend: Any, tmp_path: Path) -> None:
    roots = [CORPUS / name for name in CORPORA]
    if not all(r.is_dir() for r in roots):
        pytest.skip("../shared/corpus is not beside this checkout")
    policy = Policy()
    store = ResultStore.open(str(tmp_path / "r.db"))
    stats = run_bulk([str(r) for r in roots], store, policy, BulkOptions(workers=2), backend=ray_backend)
    files = expand(roots)
    assert stats.counts["done"] + stats.counts["failed"] == len(files) == stats.planned
    rows = {r["source"]: r for r in store.rows()}
    assert set(rows) == {str(f) for f in files}
    verdicts = {"pass": 0, "fail": 0, "error": 0}
    for path in files:
        row, local = rows[str(path)], _local(path, policy)
        stored = store.result(str(path))
        assert len(stored) == 1, path
        got = {k: row[k] for k in ("status", "verdict", "max_severity", "rule_ids", "formats")}
        assert got == {k: v for k, v in local.items() if k != "findings"}, path
        assert stored[0]["findings"] == local["findings"], path
        assert row["digest"] == file_digest(path)
        verdicts[row["verdict"]] += 1
    # both corpora hold malicious and benign files: the comparison covered both verdicts
    assert verdicts["fail"] > 50
    assert verdicts["pass"] > 50
    store.dispose()

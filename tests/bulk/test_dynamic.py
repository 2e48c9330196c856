"""Dynamic mode: a bulk batch runs the sandboxed analysis through the existing warm pool, with the local verdicts.

Three small pickles in one batch (3+ files of one framework: ``scan_paths`` uses the warm pool). Each stored row
must carry the dynamic run (framework, phases) and the same findings as a local ``scan_paths`` in dynamic mode.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwarden.bulk import BulkOptions, ResultStore, run_bulk
from mlwarden.core.policy import Policy
from mlwarden.report.jsonfmt import file_dict
from mlwarden.scan.engine import scan_paths
from tests.bulk.helpers import make_folder


def _strip(findings: list[dict[str, object]]) -> list[tuple[object, object]]:
    return sorted((f["rule_id"], f["severity"]) for f in findings)


def test_dynamic_batch_matches_local_dynamic_scan(tmp_path: Path) -> None:
    from mlwarden.scan.dynamic.sandbox import SandboxUnavailable, check_available_cached

    try:
        check_available_cached()
    except SandboxUnavailable as exc:
        pytest.skip(f"the dynamic sandbox is not available here: {exc}")
    files = make_folder(tmp_path / "m", 3)
    modes = ("static", "dynamic")
    store = ResultStore.open(str(tmp_path / "r.db"))
    stats = run_bulk([str(tmp_path / "m")], store, options=BulkOptions(backend="process", workers=1, modes=modes))
    assert stats.counts["done"] == 3
    local = {r.path: file_dict(r) for r in scan_paths(files, Policy(), jobs=1, modes=modes).files}
    for path in files:
        [stored] = store.result(str(path))
        assert stored["dynamic"] is not None
        assert stored["dynamic"]["framework"] == local[str(path)]["dynamic"]["framework"] == "pickle"
        assert [p["name"] for p in stored["dynamic"]["phases"]] == [
            p["name"] for p in local[str(path)]["dynamic"]["phases"]
        ]
        assert _strip(stored["findings"]) == _strip(local[str(path)]["findings"])
    store.dispose()

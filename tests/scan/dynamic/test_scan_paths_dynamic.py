"""scan_paths in dynamic mode over several files: static pass, then one warm pool per framework."""

from __future__ import annotations

import pickle
from pathlib import Path

from mlwarden.core.findings import Severity
from mlwarden.scan.engine import POOL_MIN_FILES, scan_paths
from tests.scan.dynamic.conftest import assert_contained, needs_sandbox, probe_pickle

pytestmark = needs_sandbox


def test_folder_scan_uses_the_pool_and_keeps_verdicts_apart(tmp_path: Path, canary_dir: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for i in range(POOL_MIN_FILES):
        (folder / f"benign{i}.pkl").write_bytes(pickle.dumps({"weights": [float(i)] * 10, "epoch": i}))
    canary = canary_dir / "pooled.canary"
    probe_pickle(folder, f"open({str(canary)!r}, 'w').write('ran')", name="zz_evil.pkl")

    report = scan_paths([folder], modes=("static", "dynamic"), jobs=1)

    by_name = {Path(r.path).name: r for r in report.files}
    evil = by_name["zz_evil.pkl"]
    assert evil.framework == "pickle"
    assert [p for p, *_ in evil.timeline] == ["import", "deserialize", "instantiate", "infer"]
    dyn = [f for f in evil.findings if f.rule_id.startswith("MLW-DYN") and f.severity >= Severity.MEDIUM]
    assert any(f.location.phase == "deserialize" and str(canary) in f.evidence for f in dyn), dyn
    for i in range(POOL_MIN_FILES):
        benign = by_name[f"benign{i}.pkl"]
        assert benign.framework == "pickle"
        assert all(status == "ok" for _, status, *_ in benign.timeline), benign.timeline
        assert [f for f in benign.findings if f.severity >= Severity.MEDIUM] == []
    assert report.modes == ("static", "dynamic")
    assert report.exit_code() == 1
    assert_contained(canary_dir)

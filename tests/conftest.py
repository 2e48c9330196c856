"""Shared test helpers: scan a path or some bytes and look at the findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlwarden.core.findings import Finding, Severity
from mlwarden.core.policy import Policy
from mlwarden.scan.engine import scan_file
from mlwarden.scan.result import FileResult

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def scan_one(path: Path, policy: Policy | None = None) -> FileResult:
    """Scan one file on disk with the given (or default) policy."""
    return scan_file(Path(path), policy or Policy())


def scan_bytes(tmp_path: Path, data: bytes, name: str = "sample.bin", policy: Policy | None = None) -> FileResult:
    """Write ``data`` under ``tmp_path`` and scan it."""
    p = tmp_path / name
    p.write_bytes(data)
    return scan_one(p, policy)


def rule_ids(result: FileResult | list[Finding] | tuple[Finding, ...]) -> set[str]:
    findings = result.findings if isinstance(result, FileResult) else result
    return {f.rule_id for f in findings}


def failing(result: FileResult, fail_on: Severity = Severity.MEDIUM) -> list[Finding]:
    """Findings at or above the (default) failing severity."""
    return [f for f in result.findings if f.severity >= fail_on]


@pytest.fixture
def corpus() -> Path:
    path = CORPUS / "picklescan"
    if not path.is_dir():
        pytest.skip("../shared/corpus is not beside this checkout")
    return path

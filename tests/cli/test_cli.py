"""The command line as a user and a CI job meet it: exit codes, formats, errors without tracebacks."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from mlwarden.cli.main import main

EVIL = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "sub").mkdir(parents=True)
    (root / "good.pkl").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    (root / "sub" / "unknown.pkl").write_bytes(b"\x80\x02cemail.utils\nformatdate\n)R.")  # medium: unknown
    return root


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlwarden.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "MLWARDEN_DEBUG": ""},
    )


def test_exit_codes_follow_the_failing_severity(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--static-only", "--no-progress", str(models / "good.pkl")]) == 0
    assert main(["scan", "--static-only", "--no-progress", str(models)]) == 1  # unknown global is medium
    assert main(["scan", "--static-only", "--no-progress", "--fail-on", "high", str(models)]) == 0
    (models / "evil.bin").write_bytes(EVIL)
    assert main(["scan", "--static-only", "--no-progress", "--fail-on", "critical", str(models)]) == 1
    capsys.readouterr()


def test_json_report_to_file(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert main(["scan", "--static-only", "-f", "json", "-o", str(out), "--jobs", "2", str(models)]) == 1
    report = json.loads(out.read_text())
    assert report["summary"]["files"] == 2
    rules = [f["rule_id"] for file in report["files"] for f in file["findings"]]
    assert rules == ["MLW-PKL-110"]


def test_sarif_and_html_formats(models: Path, tmp_path: Path) -> None:
    sarif = tmp_path / "r.sarif"
    main(["scan", "--static-only", "-f", "sarif", "-o", str(sarif), str(models)])
    assert json.loads(sarif.read_text())["runs"][0]["results"][0]["ruleId"] == "MLW-PKL-110"
    html = tmp_path / "r.html"
    main(["scan", "--static-only", "-f", "html", "-o", str(html), str(models)])
    assert "MLW-PKL-110" in html.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scan", "/does/not/exist"], "no such file or directory"),
        (["scan", "--fail-on", "severe", "."], "unknown severity"),
        (["scan", "--format", "xml", "."], "invalid choice"),
        (["scan", "--jobs", "0", "."], "must be at least 1"),
        (["scan", "--policy", "/nope.toml", "."], "cannot read policy"),
        (["scan", "-o", "/no/such/dir/r.json", "."], "does not exist"),
        (["scan"], "required"),
        (["frobnicate"], "invalid choice"),
        (["scan", "--dynamic", "--static-only", "."], "not allowed with"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


def test_invalid_policy_names_the_key(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('fail_on = "medium"\n[limits]\nmax_depht = 3\n')
    proc = run("scan", "--static-only", "--policy", str(policy), str(tmp_path))
    assert proc.returncode == 2
    assert "limits.max_depht" in proc.stderr


def test_unscannable_file_exits_2_but_others_are_scanned(models: Path) -> None:
    (models / "dangling").symlink_to(models / "missing-target")
    (models / "evil.bin").write_bytes(EVIL)
    proc = run("scan", "--static-only", "-f", "json", "--no-progress", str(models))
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert any(f["error"] for f in report["files"])
    assert any(f["rule_id"] == "MLW-PKL-100" for file in report["files"] for f in file["findings"])
    assert "dangling" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_policy_file_extends_allowlist(models: Path, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[pickle]\nallow = ["email.utils.formatdate"]\n')
    assert main(["scan", "--static-only", "--policy", str(policy), str(models)]) == 0


def test_text_report_names_the_evidence(tmp_path: Path) -> None:
    (tmp_path / "evil.bin").write_bytes(EVIL)
    proc = run("scan", "--static-only", str(tmp_path / "evil.bin"))
    assert proc.returncode == 1
    assert "MLW-PKL-100" in proc.stdout
    assert "os.system('id')" in proc.stdout
    assert "FAIL" in proc.stdout


def test_rules_listing_covers_every_handler() -> None:
    proc = run("rules", "--format", "json")
    assert proc.returncode == 0
    ids = {r["id"] for r in json.loads(proc.stdout)}
    assert {"MLW-PKL-100", "MLW-PKL-110", "MLW-ARC-001", "MLW-GEN-001", "MLW-NPY-002"} <= ids


def test_parallel_and_serial_scans_agree(tmp_path: Path) -> None:
    from mlwarden.scan.engine import scan_paths

    for i in range(12):
        (tmp_path / f"m{i}.pkl").write_bytes(EVIL if i % 3 == 0 else pickle.dumps([i]))
    serial = scan_paths([tmp_path], jobs=1)
    parallel = scan_paths([tmp_path], jobs=2)
    assert [(r.path, r.findings) for r in serial.files] == [(r.path, r.findings) for r in parallel.files]
    assert sum(1 for r in parallel.files if r.findings) == 4


def test_python_api(tmp_path: Path) -> None:
    import mlwarden

    (tmp_path / "evil.bin").write_bytes(EVIL)
    report = mlwarden.scan(tmp_path)
    assert isinstance(report, mlwarden.ScanReport)
    [finding] = report.findings
    assert isinstance(finding, mlwarden.Finding)
    assert finding.severity is mlwarden.Severity.CRITICAL
    assert report.exit_code() == 1
    with pytest.raises(mlwarden.UsageError):
        mlwarden.scan(tmp_path / "nope")

"""``mlwarden data check`` and ``data manifest --check`` through ``main``: formats, exit codes, signed manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mlwarden.cli.main as cli
from mlwarden.integrity.dataset import read_dataset_manifest
from mlwarden.integrity.keys import generate_key_pair

from .builders import email, flipped_classification


@pytest.fixture
def data(tmp_path: Path) -> Path:
    frame, _ = flipped_classification(n=800, seed=4)
    frame["who"] = [email(i) if i % 10 == 0 else "unknown" for i in range(800)]
    folder = tmp_path / "ds"
    folder.mkdir()
    frame.to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


def test_json_report_follows_the_schema(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert cli.main(["data", "check", str(data), "--label", "label", "--format", "json", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "https://mlwarden.dev/data-check/v1"
    assert [c["id"] for c in report["checks"]] == ["class_balance", "duplicates", "label_issues", "outliers", "pii"]
    for check in report["checks"]:
        assert {"parameters", "seed", "rows", "seconds", "metrics", "status"} <= set(check)
    pii = next(c for c in report["checks"] if c["id"] == "pii")
    assert pii["metrics"]["matches"] == {"email": 80}
    assert "@example.org" not in out.read_text()


def test_text_and_html(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "check", str(data), "--label", "label", "--checks", "pii", "class_balance"]) == 0
    assert "email 80" in capsys.readouterr().out
    html = tmp_path / "r.html"
    assert cli.main(["data", "check", str(data), "--label", "label", "-f", "html", "-o", str(html)]) == 0
    assert "<svg" in html.read_text()
    assert "<script" not in html.read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "check", "missing.csv"], "does not exist"),
        (["data", "check", "{data}", "--label", "nope"], "no column 'nope'"),
        (["data", "check", "{data}", "--sensitive", "nope"], "--sensitive: no column"),
        (["data", "check", "{data}", "--folds", "1"], "--folds must be at least 2"),
        (["data", "check", "{corrupt}"], "not a readable parquet file"),
        (["data", "check", "{data}", "--checks", "bogus"], "invalid choice"),
    ],
)
def test_errors_are_one_line_exit_2(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    corrupt = tmp_path / "c.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    args = [a.format(data=data, corrupt=corrupt) for a in argv]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_manifest_records_the_check_and_stays_verifiable(data: Path, tmp_path: Path) -> None:
    generate_key_pair(tmp_path / "k.key", tmp_path / "k.pub")
    report = tmp_path / "r.json"
    assert cli.main(["data", "check", str(data), "--label", "label", "-f", "json", "-o", str(report)]) == 0
    out = tmp_path / "manifest.json"
    argv = ["data", "manifest", str(data.parent), "--name", "n", "--source", "s", "--license", "MIT",
            "--check", str(report), "--private-key", str(tmp_path / "k.key"), "-o", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    manifest = read_dataset_manifest(out, tmp_path / "k.pub")
    assert manifest.pii_scan["status"] == "scanned"
    assert manifest.pii_scan["scope"] == "file:train.csv"
    assert manifest.pii_scan["pii_matches"] == {"email": 80}
    assert manifest.pii_scan["checks"]["label_issues"]["issues"]["total"] == 800
    assert cli.main(["data", "verify", str(data.parent), "--manifest", str(out), "--public-key",
                     str(tmp_path / "k.pub")]) == 0  # fmt: skip


def test_manifest_refuses_a_report_about_other_data(data: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    assert cli.main(["data", "check", str(data), "--checks", "pii", "-f", "json", "-o", str(report)]) == 0
    data.write_text(data.read_text() + "0,0,0,0,0,0,0,0,0,0,0,0,1,x\n")
    argv = ["data", "manifest", str(data.parent), "--name", "n", "--source", "s", "--license", "MIT",
            "--check", str(report), "--unsigned", "-o", str(tmp_path / "m.json")]  # fmt: skip
    assert cli.main(argv) == 2
    assert not (tmp_path / "m.json").exists()


def test_manifest_without_check_is_unchanged(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    argv = ["data", "manifest", str(data.parent), "--name", "n", "--source", "s", "--license", "MIT",
            "--unsigned", "-o", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads(out.read_text())["predicate"]["pii_scan"] == {"status": "not_scanned"}

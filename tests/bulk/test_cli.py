"""``mlwarden bulk scan|report``: list files, exit codes, the summary report, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlwarden.bulk import expand_sources
from mlwarden.cli.main import main
from tests.bulk.helpers import make_folder
from tests.conftest import CORPUS


def test_list_file_comments_relative_paths_and_dedup(tmp_path: Path) -> None:
    files = make_folder(tmp_path / "m", 4)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# models to scan\n\nm/part0\n{files[1]}  # absolute\nm/part0/m0000.pkl\n", encoding="utf-8")
    items = expand_sources([f"@{listing}"])
    want = sorted({str(f) for f in files if f.parent.name == "part0"} | {str(files[1])})
    assert sorted(i.source for i in items) == want  # part0 has m0000 and m0003; the repeated file counted once
    assert all(i.size == Path(i.source).stat().st_size for i in items)


def test_scan_exit_codes_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    benign, malicious = CORPUS / "picklescan/data/benign0_v3.pkl", CORPUS / "picklescan/data/malicious0.pkl"
    if not malicious.is_file():
        pytest.skip("../shared/corpus is not beside this checkout")
    db = str(tmp_path / "r.db")
    common = ["--results", db, "--backend", "process", "--workers", "1", "-q"]
    assert main(["bulk", "scan", str(benign), *common]) == 0
    listing = tmp_path / "l.txt"
    listing.write_text(f"{benign}\n{malicious}\n", encoding="utf-8")
    assert main(["bulk", "scan", f"@{listing}", *common]) == 1  # the malicious pickle fails the policy
    capsys.readouterr()
    assert main(["bulk", "report", "--results", db, "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["artifacts"] == 2
    assert summary["runs"] == 2
    assert summary["by_verdict"] == {"pass": 1, "fail": 1}
    assert [r["source"] for r in summary["review"]] == [str(malicious)]
    assert summary["review"][0]["max_severity"] == "critical"
    assert summary["by_format"] == {"pickle": 2}
    assert main(["bulk", "report", "--results", db]) == 0
    text = capsys.readouterr().out
    assert "review (1 at medium or above)" in text
    assert str(malicious) in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bulk", "report", "--results", "nope.db"], "no such results database"),
        (["bulk", "scan", "no/such/dir", "--results", "x.db", "--backend", "process"], "no such file or directory"),
        (["bulk", "scan", ".", "--results", "x.db", "--workers", "0"], "--workers"),
        (["bulk", "scan", "@missing.txt", "--results", "x.db", "--backend", "process"], "cannot read list file"),
        (["bulk", "scan", ".", "--results", "bad://", "--backend", "process"], "--results"),
        (["bulk", "scan", ".", "--results", "x.db", "--max-repos", "0"], "--max-repos"),
        (
            ["bulk", "scan", "hf://?sort=downloads", "--results", "x.db", "--backend", "process"],
            "needs an organisation",
        ),
        (["bulk", "scan", "hf://org?colour=red", "--results", "x.db", "--backend", "process"], "unknown query key"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

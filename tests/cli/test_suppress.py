"""Reviewed suppressions from the command line: add/list/check, matching by digest or path, expiry, exit codes."""

from __future__ import annotations

import hashlib
import json
import pickle
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest

import mlwarden
from mlwarden.cli.main import main
from mlwarden.core.suppressions import DEFAULT_FILE, load_suppressions, today

#: Two small benign pickles with different bytes. Scans here use a policy whose max_file_size (8 bytes) they
#: exceed, so each gets one MLW-GEN-001 ("analysis incomplete", medium) finding from the engine itself: a failing
#: finding that does not depend on how the pickle rules judge any particular global.
UNKNOWN = pickle.dumps({"w": [1.0, 2.0]})
OTHER_UNKNOWN = pickle.dumps({"w": [3.0]})
RULE = "MLW-GEN-001"
POLICY = "policy.toml"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout with two flagged pickles (different bytes) and a clean one; the current directory."""
    (tmp_path / "models" / "sub").mkdir(parents=True)
    (tmp_path / "models" / "a.pkl").write_bytes(UNKNOWN)
    (tmp_path / "models" / "sub" / "b.pkl").write_bytes(OTHER_UNKNOWN)
    (tmp_path / POLICY).write_text("[limits]\nmax_file_size = 8\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def later(days: int = 30) -> str:
    return (today() + timedelta(days=days)).isoformat()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; scans (``scan``, ``suppress check``) get the test policy."""
    words = 1 if argv[0] == "scan" else 2 if argv[:2] == ("suppress", "check") else 0
    args = [*argv[:words], *(["--policy", POLICY] if words else []), *argv[words:]]
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def add(capsys: pytest.CaptureFixture[str], *target: str, expires: str | None = None) -> tuple[int, str, str]:
    options = ["--reason", "reviewed: our own Net class", "--reviewer", "alice", "--expires", expires or later()]
    return run(capsys, "suppress", "add", RULE, *target, *options)


def scan_json(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code, out, _ = run(capsys, "scan", "--static-only", "--no-progress", "-f", "json", *extra, "models")
    return code, json.loads(out)


def findings(report: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {f["location"]["path"]: f for file in report["files"] for f in file["findings"]}


# -- add / list / check ------------------------------------------------------------------------------------------------


def test_add_list_and_check(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = add(capsys, "--path", "models/**/*.pkl")
    assert (code, err) == (0, "")
    assert out == f"suppressed {RULE} on path models/**/*.pkl until {later()} ({DEFAULT_FILE}#1)\n"
    digest = sha256(repo / "models" / "a.pkl")
    assert add(capsys, "--digest", digest.upper())[0] == 0  # stored lower-case
    text = (repo / DEFAULT_FILE).read_text()
    assert text.startswith("# Reviewed suppressions")
    assert f'digest = "{digest}"' in text
    entries = load_suppressions(repo / DEFAULT_FILE)
    assert [(s.path, s.digest, s.reviewer) for s in entries] == [
        ("models/**/*.pkl", None, "alice"),
        (None, digest, "alice"),
    ]

    code, out, _ = run(capsys, "suppress", "list")
    assert code == 0
    assert f"{DEFAULT_FILE}#1  {RULE}  path models/**/*.pkl  by alice  expires {later()}  active" in out
    code, out, _ = run(capsys, "suppress", "list", "--format", "json")
    assert [e["digest"] for e in json.loads(out)] == [None, digest]

    code, out, _ = run(capsys, "suppress", "check", "models")
    assert code == 0, out
    assert "2 suppression(s), 0 problem(s)" in out


def test_add_keeps_what_reviewers_wrote(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / DEFAULT_FILE).write_text("# owned by the ML platform team\nversion = 1\n")
    assert add(capsys, "--path", "models/a.pkl")[0] == 0
    assert (repo / DEFAULT_FILE).read_text().startswith("# owned by the ML platform team\nversion = 1\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["MLW-NOPE-999", "--path", "x"], "unknown rule MLW-NOPE-999 (see `mlwarden rules`)"),
        (["nonsense", "--path", "x"], "is not a rule ID"),
        ([RULE, "--digest", "abc123"], "digest must be 64 hexadecimal digits"),
        ([RULE, "--digest", "g" * 64], "digest must be 64 hexadecimal digits"),
        ([RULE, "--path", "x", "--expires", "2001-01-01"], "expires must be a date in the future"),
        ([RULE, "--path", "x", "--expires", "tomorrow"], "expires must be an ISO date"),
        ([RULE, "--path", "x", "--reason", " "], "reason must not be empty"),
        ([RULE, "--path", "x", "--reviewer", ""], "reviewer must not be empty"),
        ([RULE, "--path", "x", "--digest", "a" * 64], "not allowed with argument"),
        ([RULE], "one of the arguments --digest --path is required"),
    ],
)
def test_add_validates_strictly(repo: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    defaults = {"--reason": "r", "--reviewer": "alice", "--expires": later()}
    for flag, value in defaults.items():
        if flag not in argv:
            argv = [*argv, flag, value]
    code, out, err = run(capsys, "suppress", "add", *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("mlwarden: error: ")
    assert message in err
    assert err.count("\n") == 1  # one line, no traceback
    assert not (repo / DEFAULT_FILE).exists()


def test_adding_the_same_entry_twice_is_refused(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert add(capsys, "--path", "models/a.pkl")[0] == 0
    code, _, err = add(capsys, "--path", "models/a.pkl")
    assert code == 2
    assert f"{DEFAULT_FILE}#1 already suppresses {RULE} on path models/a.pkl" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[suppression]]\nrule = "MLW-PKL-110"\npath = "x"\nreviewer = "a"\nexpires = 2030-01-01\n',
            "#1: missing reason",
        ),
        (
            '[[suppression]]\nrule = "MLW-PKL-110"\npath = "x"\ndigest = "' + "a" * 64 + '"\nreason = "r"\n'
            'reviewer = "a"\nexpires = 2030-01-01\n',
            "exactly one of digest or path",
        ),
        (
            '[[suppression]]\nrule = "MLW-PKL-110"\npath = "x"\nreason = "r"\nreviewer = "a"\nexpires = 2030-01-01\n'
            "severity = 1\n",
            "unknown key(s) severity",
        ),
        (
            '[[suppression]]\nrule = "MLW-PKL-110"\npath = "x"\nreason = "r"\nreviewer = "a"\nexpires = "soon"\n',
            "expires must be an ISO date",
        ),
        ("version = 2\n", "version 2 is not supported"),
        ("[[suppression\n", "is not valid TOML"),
    ],
)
def test_an_invalid_file_stops_the_scan(
    repo: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    (repo / DEFAULT_FILE).write_text(text)
    code, out, err = run(capsys, "scan", "--static-only", "--no-progress", "models")
    assert (code, out) == (2, "")
    assert message in err
    assert err.count("\n") == 1


# -- matching and exit codes -------------------------------------------------------------------------------------------


def test_without_suppressions_both_files_fail(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = scan_json(capsys)
    assert code == 1
    assert report["summary"]["failing"] == 2
    assert report["suppressions"] == []


def test_exit_0_when_every_failing_finding_is_suppressed(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, "--path", "models/**/*.pkl")
    code, report = scan_json(capsys)
    assert code == 0
    assert (report["verdict"], report["summary"]["failing"], report["summary"]["suppressed"]) == ("PASS", 0, 2)
    assert report["summary"]["by_severity"]["medium"] == 2  # still reported
    for finding in findings(report).values():
        assert finding["suppressed"] == {
            "rule_id": RULE,
            "digest": None,
            "path": "models/**/*.pkl",
            "reason": "reviewed: our own Net class",
            "reviewer": "alice",
            "expires": later(),
            "source": f"{DEFAULT_FILE}#1",
        }
    assert [(u["status"], u["matched"]) for u in report["suppressions"]] == [("applied", 2)]


def test_digest_matches_only_the_reviewed_bytes(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, "--digest", sha256(repo / "models" / "a.pkl"))
    code, report = scan_json(capsys)
    assert code == 1  # b.pkl is not suppressed
    by_path = findings(report)
    assert by_path["models/a.pkl"]["suppressed"]["digest"] == sha256(repo / "models" / "a.pkl")
    assert by_path["models/sub/b.pkl"]["suppressed"] is None
    # the same bytes under another name are the reviewed bytes; other bytes under the same name are not
    (repo / "models" / "sub" / "b.pkl").write_bytes(UNKNOWN)
    (repo / "models" / "a.pkl").write_bytes(UNKNOWN + b"\n")
    code, report = scan_json(capsys)
    assert code == 1
    by_path = findings(report)
    assert by_path["models/sub/b.pkl"]["suppressed"] is not None
    assert by_path["models/a.pkl"]["suppressed"] is None


def test_path_glob_matches_the_scanned_path(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, "--path", "models/sub/*.pkl")
    code, report = scan_json(capsys)
    assert code == 1
    by_path = findings(report)
    assert by_path["models/sub/b.pkl"]["suppressed"] is not None
    assert by_path["models/a.pkl"]["suppressed"] is None
    # an absolute path below the current directory is matched relative to it
    code, out, _ = run(capsys, "scan", "--static-only", "--no-progress", "-f", "json", str(repo / "models" / "sub"))
    assert code == 0
    assert json.loads(out)["summary"]["suppressed"] == 1


def test_a_suppression_never_hides_another_rule(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = ["--path", "models/**", "--reason", "r", "--reviewer", "a", "--expires", later()]
    assert run(capsys, "suppress", "add", "MLW-PKL-110", *options)[0] == 0
    code, report = scan_json(capsys)
    assert code == 1
    assert {f["rule_id"] for f in findings(report).values()} == {RULE}
    assert all(f["suppressed"] is None for f in findings(report).values())
    assert [u["status"] for u in report["suppressions"]] == ["unused"]


def test_expired_entries_stop_applying_and_are_reported(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / DEFAULT_FILE).write_text(
        "version = 1\n\n[[suppression]]\n"
        f'rule = "{RULE}"\npath = "models/**/*.pkl"\nreason = "was fine"\nreviewer = "alice"\nexpires = 2020-01-01\n'
    )
    code, report = scan_json(capsys)
    assert code == 1
    assert all(f["suppressed"] is None for f in findings(report).values())
    [use] = report["suppressions"]
    assert (use["status"], use["matched"], use["expires"]) == ("expired", 2, "2020-01-01")

    code, out, _ = run(capsys, "scan", "--static-only", "--no-progress", "models")
    assert code == 1
    assert (
        f"warning: suppression {RULE} on path models/**/*.pkl ({DEFAULT_FILE}#1) expired on 2020-01-01: "
        "no longer applies; 2 finding(s) it matched count again"
    ) in out

    code, out, _ = run(capsys, "suppress", "list")
    assert "EXPIRED" in out
    code, out, _ = run(capsys, "suppress", "check")
    assert code == 1
    assert "expired on 2020-01-01" in out


def test_never_matching_entries_are_reported(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, "--path", "models/**/*.pkl")
    add(capsys, "--path", "elsewhere/*.pkl")
    code, report = scan_json(capsys)
    assert code == 0
    assert [u["status"] for u in report["suppressions"]] == ["applied", "unused"]
    code, _, err = run(capsys, "scan", "--static-only", "--no-progress", "-f", "json", "-o", "r.json", "models")
    assert code == 0
    assert f"mlwarden: warning: suppression {RULE} on path elsewhere/*.pkl ({DEFAULT_FILE}#2) matched no finding" in err
    code, out, _ = run(capsys, "suppress", "check", "models")
    assert code == 1
    assert f"problem: suppression {RULE} on path elsewhere/*.pkl" in out
    assert "1 problem(s)" in out


def test_check_reports_unknown_rules(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / DEFAULT_FILE).write_text(
        '[[suppression]]\nrule = "MLW-ZZZ-404"\npath = "x"\nreason = "r"\nreviewer = "a"\nexpires = 2099-01-01\n'
    )
    code, out, _ = run(capsys, "suppress", "check")
    assert code == 1
    assert f"problem: {DEFAULT_FILE}#1: unknown rule MLW-ZZZ-404" in out


def test_suppressions_option_and_opt_out(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ci = repo / "ci" / "accepted.toml"
    ci.parent.mkdir()
    assert (
        run(
            capsys,
            "suppress",
            "add",
            RULE,
            "--path",
            "models/**",
            "--reason",
            "r",
            "--reviewer",
            "a",
            "--expires",
            later(),
            "--file",
            str(ci),
        )[0]
        == 0
    )
    assert not (repo / DEFAULT_FILE).exists()
    assert scan_json(capsys)[0] == 1  # not in the current directory: not used
    assert scan_json(capsys, "--suppressions", str(ci))[0] == 0
    ci.rename(repo / DEFAULT_FILE)
    assert scan_json(capsys)[0] == 0  # found in the current directory
    assert scan_json(capsys, "--no-suppressions")[0] == 1
    code, _, err = run(capsys, "scan", "--suppressions", "missing.toml", "models")
    assert code == 2
    assert "cannot read suppressions file missing.toml" in err


# -- every format ------------------------------------------------------------------------------------------------------


def test_suppressed_findings_are_marked_in_every_format(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, "--digest", sha256(repo / "models" / "a.pkl"))
    code, out, _ = run(capsys, "scan", "--static-only", "--no-progress", "models")
    assert code == 1
    assert "suppressed  by alice until" in out
    assert "Suppressed             1 finding(s) accepted by reviewed suppressions" in out
    assert "medium and above (1 finding(s))" in out

    code, out, _ = run(capsys, "scan", "--static-only", "--no-progress", "-f", "html", "models")
    assert '<span class="supp">suppressed</span> by alice' in out

    code, out, _ = run(capsys, "scan", "--static-only", "--no-progress", "-f", "sarif", "models")
    sarif = json.loads(out)
    schema = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
    errors = list(jsonschema.Draft4Validator(schema).iter_errors(sarif))
    assert not errors, errors[0].message if errors else ""
    by_uri = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]: r for r in sarif["runs"][0]["results"]}
    assert by_uri["models/a.pkl"]["suppressions"] == [
        {
            "kind": "external",
            "status": "accepted",
            "justification": "reviewed: our own Net class",
            "properties": {
                "reviewer": "alice",
                "expires": later(),
                "source": f"{DEFAULT_FILE}#1",
                "digest": sha256(repo / "models" / "a.pkl"),
            },
        }
    ]
    assert by_uri["models/sub/b.pkl"]["suppressions"] == []  # suppression information given: not suppressed
    assert sarif["runs"][0]["invocations"][0]["exitCode"] == 1

    code, report = scan_json(capsys)
    schema = json.loads((ROOT / "docs" / "report-schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = list(validator.iter_errors(report))
    assert not errors, errors[0].message if errors else ""


def test_python_api(repo: Path) -> None:
    (repo / "accepted.toml").write_text(
        f'[[suppression]]\nrule = "{RULE}"\npath = "models/**"\nreason = "r"\nreviewer = "a"\nexpires = {later()}\n'
    )
    assert mlwarden.scan("models", POLICY).exit_code() == 1
    report = mlwarden.scan("models", POLICY, suppressions=repo / "accepted.toml")
    assert report.exit_code() == 0
    assert len(report.suppressed) == 2
    assert all(f.suppressed is not None and f.suppressed.reviewer == "a" for f in report.findings)
    assert [u.status for u in report.suppressions] == ["applied"]

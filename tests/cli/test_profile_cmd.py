"""``mlwarden profile learn`` / ``show``: a learned profile reads back and allows what it was learned from.

Learning runs the models in the real sandbox (framework ``pickle``: well under a second per run); those tests
are skipped where bubblewrap or strace is missing. The benign pickles import modules while loading
(``decimal``, ``fractions``) so that an empty profile (no capabilities) reports deviations; the learned one allows
them by capability (``import.installed``) instead of listing the module names.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fnmatch
import fractions
import json
import pickle
import tomllib
from pathlib import Path

import pytest

from mlwarden.cli.main import main
from mlwarden.scan.dynamic import sandbox
from mlwarden.scan.dynamic.profiles import BASELINE, PROFILE_DIR, load_profile


def _sandbox_ok() -> bool:
    try:
        sandbox.check_available()
    except sandbox.SandboxUnavailable:
        return False
    return True


needs_sandbox = pytest.mark.skipif(not _sandbox_ok(), reason="bubblewrap/strace unavailable here")


@pytest.fixture
def benign(tmp_path: Path) -> Path:
    """Two benign pickles whose loading imports stdlib modules and constructs code (decimal, fractions)."""
    root = tmp_path / "benign"
    root.mkdir()
    (root / "numbers.pkl").write_bytes(pickle.dumps({"d": decimal.Decimal("1.5"), "f": fractions.Fraction(1, 3)}))
    (root / "dates.pkl").write_bytes(pickle.dumps(collections.OrderedDict(t=datetime.date(2020, 1, 1))))
    (root / "notes.txt").write_text("not a model\n")
    return root


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mlwarden: error: ")
    assert "Traceback" not in err
    return lines[0]


def _scan_json(paths: list[Path], profile_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[sandbox]\nprofile_dir = "{profile_dir}"\n')
    code = main(["scan", "--dynamic", "--no-progress", "-f", "json", "--policy", str(policy), *map(str, paths)])
    data: dict = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == code
    return data


def _dyn_failing(data: dict) -> list[str]:
    return [
        f["rule_id"]
        for file in data["files"]
        for f in file["findings"]
        if f["rule_id"].startswith("MLW-DYN") and f["severity"] in ("medium", "high", "critical")
    ]


@needs_sandbox
def test_learned_profile_reads_back_and_allows_its_models(
    benign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without a profile for these effects the dynamic scan reports them ...
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "pickle.toml").write_text('framework = "pickle"\nversion = 1\ndescription = "nothing allowed"\n')
    before = _scan_json([benign / "numbers.pkl"], empty, tmp_path, capsys)
    assert "MLW-DYN-006" in _dyn_failing(before)  # import decimal / fractions while deserialising

    # ... learning from the two benign files ...
    learned = tmp_path / "learned"
    assert main(["profile", "learn", str(benign), "--framework", "pickle", "--profile-dir", str(learned)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    summary = err.strip().splitlines()
    assert len(summary) == 1
    assert "learned pickle profile from 2 run(s) (0 did not complete)" in summary[0]
    assert "deserialize " in summary[0]
    assert str(learned / "pickle.toml") in summary[0]

    profile = load_profile("pickle", learned)
    assert profile.framework == "pickle"
    assert profile.capabilities == ["import.installed"]  # installed modules: a capability, not a list of names
    assert profile.include == ["common"]
    assert not [p for p in profile.phases["deserialize"] if p.startswith("import:")]
    assert "2 benign pickle model(s)" in profile.description

    # ... makes the same scan clean, with the timeline in the report.
    after = _scan_json([benign / "numbers.pkl", benign / "dates.pkl"], learned, tmp_path, capsys)
    assert _dyn_failing(after) == []
    assert after["exit_code"] == 0
    for file in after["files"]:
        assert file["dynamic"]["framework"] == "pickle"
        assert [p["name"] for p in file["dynamic"]["phases"]] == ["import", "deserialize", "instantiate", "infer"]
        assert all(p["status"] == "ok" for p in file["dynamic"]["phases"])


@needs_sandbox
def test_learn_prints_toml_to_stdout_by_default(benign: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "learn", str(benign / "numbers.pkl"), "--framework", "pickle"]) == 0
    out, err = capsys.readouterr()
    data = tomllib.loads(out)
    assert data["framework"] == "pickle"
    assert data["capabilities"]["allow"] == ["import.installed"]
    assert data["include"] == ["common"]
    assert "from 1 run(s)" in err
    assert "wrote" not in err


@needs_sandbox
def test_extend_adds_to_the_destination_profile(
    benign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "custom.toml"
    out.write_text(
        'framework = "pickle"\nversion = 3\ndescription = "team profile"\n'
        '[phases.infer]\nallow = ["file.read:/opt/team/*"]\n'
    )
    args = ["profile", "learn", str(benign / "numbers.pkl"), "--framework", "pickle", "-o", str(out), "--extend"]
    assert main(args) == 0
    assert f"extended {out}" in capsys.readouterr().err
    data = tomllib.loads(out.read_text())
    assert data["version"] == 3
    assert data["description"].startswith("team profile; extended with 1 model(s)")
    # kept; what the new model did is covered by the capability the extended profile now declares
    assert data["phases"]["infer"]["allow"] == ["file.read:/opt/team/*"]
    assert data["capabilities"]["allow"] == ["import.installed"]


@needs_sandbox
def test_extend_without_a_destination_starts_from_the_shipped_profile(
    benign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    learned = tmp_path / "learned"
    args = ["profile", "learn", str(benign / "numbers.pkl"), "--framework", "pickle", "--profile-dir", str(learned)]
    assert main([*args, "--extend"]) == 0
    assert str(PROFILE_DIR / "pickle.toml") in capsys.readouterr().err
    shipped, extended = load_profile("pickle"), load_profile("pickle", learned)
    for phase, patterns in shipped.phases.items():
        allowed = (*BASELINE, *extended.phases[phase])
        missing = [p for p in patterns if not any(p == q or fnmatch.fnmatchcase(p, q) for q in allowed)]
        assert not missing, (phase, missing[:5])  # nothing the shipped profile allowed is lost
    assert extended.capabilities == shipped.capabilities
    assert sorted(extended.machinery) == sorted(shipped.machinery)
    assert extended.include == ["common"]


def test_show_prints_the_shipped_torch_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "show", "torch"]) == 0
    out = capsys.readouterr().out
    assert out == (PROFILE_DIR / "torch.toml").read_text(encoding="utf-8")
    assert tomllib.loads(out)["framework"] == "torch"


def test_show_as_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keras.toml").write_text(
        'framework = "keras"\nversion = 2\ndescription = "mine"\n'
        '[phases.deserialize]\nallow = ["import:h5py", "file.read:/opt/k/*"]\n'
    )
    assert main(["profile", "show", "keras", "--profile-dir", str(tmp_path), "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"profile keras (version 2) from {tmp_path / 'keras.toml'}"
    assert lines[1] == "  mine"
    rows = [ln.split() for ln in lines if ln.startswith(("import ", "deserialize ", "instantiate ", "infer "))]
    assert rows == [
        ["import", "-", "(nothing", "beyond", "the", "baseline)"],
        ["deserialize", "file.read", "/opt/k/*"],
        ["deserialize", "import", "h5py"],
        ["instantiate", "-", "(nothing", "beyond", "the", "baseline)"],
        ["infer", "-", "(nothing", "beyond", "the", "baseline)"],
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "learn", "{benign}", "--framework", "tensorflow"], "unknown framework 'tensorflow'"),
        (["profile", "show", "nope"], "unknown framework 'nope'"),
        (["profile", "learn", "{tmp}/missing", "--framework", "pickle"], "no such file or directory"),
        (["profile", "show", "torch", "--profile-dir", "{tmp}"], "no profile for framework 'torch'"),
        (["profile", "learn", "{benign}", "--framework", "pickle", "-o", "{tmp}/no/dir/p.toml"], "does not exist"),
        (["profile", "learn", "{benign}", "--framework"], "expected one argument"),
        (["profile"], "choose an action"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, benign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(benign=benign, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    assert message in _one_error_line(capsys.readouterr().err)


@needs_sandbox
def test_no_files_of_the_framework(benign: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "learn", str(benign), "--framework", "torch"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"no torch files found under {benign}" in _one_error_line(err)


def test_sandbox_unavailable_is_a_clear_error(
    benign: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sandbox, "_AVAILABLE", [])
    monkeypatch.setattr(sandbox.shutil, "which", lambda *_a, **_k: None)
    out_file = tmp_path / "p.toml"
    assert main(["profile", "learn", str(benign), "--framework", "pickle", "-o", str(out_file)]) == 2
    assert "bwrap is not installed" in _one_error_line(capsys.readouterr().err)
    assert not out_file.exists()  # nothing written, nothing run

"""Training records: what they capture, what they are about, and that a forged or mis-keyed one is refused."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mlwarden.core.errors import UsageError
from mlwarden.integrity import record as record_module
from mlwarden.integrity.dataset import build_dataset_manifest, dataset_statement, sign_dataset_manifest
from mlwarden.integrity.envelope import write_bundle
from mlwarden.integrity.errors import VerificationError
from mlwarden.integrity.keys import generate_key_pair
from mlwarden.integrity.record import (
    PREDICATE_TYPE,
    build_training_record,
    config_digest,
    detect_git,
    read_training_record,
    sign_training_record,
    training_statement,
)

PACKAGES = {"torch": "2.3.0", "numpy": "1.26.4"}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_key_pair(tmp_path / "signer.key", tmp_path / "signer.pub")
    return tmp_path / "signer.key", tmp_path / "signer.pub"


@pytest.fixture
def dataset_manifest(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_bytes(b"a,b\n1,2\n")
    manifest = build_dataset_manifest(data, name="train", source="s3://bucket/train", license="MIT")
    out = tmp_path / "train.manifest.json"
    write_bundle(sign_dataset_manifest(manifest, keys[0]), out)
    return out


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x01" * 4096)
    (folder / "config.json").write_bytes(b'{"layers": 3}')
    return folder


def record(**overrides: object) -> record_module.TrainingRecord:
    args: dict[str, object] = {"command": "python train.py --epochs 3", "packages": PACKAGES}
    args.update(overrides)
    return build_training_record(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("config.json", '{"lr": 0.01, "layers": [64, 32], "name": "run-1"}'),
        ("config.toml", 'lr = 0.01\nlayers = [64, 32]\nname = "run-1"\n'),
        ("config.yaml", "lr: 0.01\nlayers: [64, 32]\nname: run-1\n"),
    ],
)
def test_config_file_is_parsed_and_digested(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = record(config=path)
    assert dict(result.config) == {"lr": 0.01, "layers": [64, 32], "name": "run-1"}
    assert result.config_file == (name, hashlib.sha256(text.encode()).hexdigest())
    assert training_statement(result)["predicate"]["config_file"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("config.ini", "[a]\nb=1\n", "unknown format '.ini'"),
        ("config.json", "[1, 2]", "top level must be a mapping"),
        ("config.json", '{"lr": ', "cannot be parsed"),
        ("config.toml", "lr = = 1", "cannot be parsed"),
    ],
)
def test_bad_config_files_are_refused(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        record(config=path)


def test_oversized_config_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_module, "MAX_CONFIG_BYTES", 10)
    path = tmp_path / "config.json"
    path.write_text('{"a": "0123456789"}')
    with pytest.raises(UsageError, match="larger than 10 bytes"):
        record(config=path)


def test_command_is_split_with_shell_rules_or_joined() -> None:
    assert record(command="python train.py --name 'my run'").argv == ("python", "train.py", "--name", "my run")
    assert record(command=["python", "train.py", "--name", "my run"]).command == "python train.py --name 'my run'"
    with pytest.raises(UsageError, match="cannot be split"):
        record(command="python 'unterminated")
    with pytest.raises(UsageError, match="needs the command"):
        record(command="   ")


def test_packages_default_to_the_installed_distributions() -> None:
    packages = record(packages=None).packages
    assert packages["mlwarden"] == importlib.metadata.version("mlwarden")
    assert packages["cyclonedx-python-lib"] == importlib.metadata.version("cyclonedx-python-lib")


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "code"
    repo.mkdir()
    (repo / "train.py").write_text("print('train')\n")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
            cwd=repo,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    git("add", "train.py")
    git("commit", "-q", "-m", "initial")
    return repo


def test_git_commit_is_detected_and_dirtiness_reported(git_repo: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=git_repo, capture_output=True, text=True, check=True)
    clean = record(git_dir=git_repo / ".")
    assert (clean.git_commit, clean.git_dirty) == (head.stdout.strip(), False)
    (git_repo / "train.py").write_text("print('changed')\n")
    assert detect_git(git_repo) == (head.stdout.strip(), True)


def test_not_a_repository_records_no_commit_without_failing(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    result = record(git_dir=tmp_path / "plain")
    assert (result.git_commit, result.git_dirty) == (None, None)
    assert detect_git(tmp_path / "does-not-exist") == (None, None)


def test_missing_git_binary_records_no_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    assert detect_git(tmp_path) == (None, None)


def test_malformed_git_commit_is_refused() -> None:
    with pytest.raises(UsageError, match="not a full hex commit id"):
        record(git_commit="abc123")


def test_dataset_links_carry_the_manifest_and_dataset_digests(dataset_manifest: Path, keys: tuple[Path, Path]) -> None:
    result = record(dataset_manifests=[dataset_manifest], dataset_public_key=keys[1])
    (link,) = result.datasets
    listing = hashlib.sha256(b"a,b\n1,2\n").hexdigest() + "  train.csv\n"
    assert link.name == "train"
    assert link.digest == hashlib.sha256(listing.encode()).hexdigest()
    assert link.manifest_sha256 == hashlib.sha256(dataset_manifest.read_bytes()).hexdigest()
    assert link.signed is True


def test_dataset_manifest_signed_by_another_key_is_refused(tmp_path: Path, dataset_manifest: Path) -> None:
    generate_key_pair(tmp_path / "x.key", tmp_path / "x.pub")
    with pytest.raises(VerificationError, match="wrong key"):
        record(dataset_manifests=[dataset_manifest], dataset_public_key=tmp_path / "x.pub")


def test_subjects_are_the_model_files_when_a_model_is_given(model: Path, dataset_manifest: Path) -> None:
    statement = training_statement(record(model_path=model, dataset_manifests=[dataset_manifest]))
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["predicate"]["subject_kind"] == "model-files"
    assert {s["name"]: s["digest"]["sha256"] for s in statement["subject"]} == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model.iterdir()
    }


def test_subjects_fall_back_to_datasets_then_config(dataset_manifest: Path) -> None:
    with_data = training_statement(record(dataset_manifests=[dataset_manifest]))
    assert with_data["predicate"]["subject_kind"] == "datasets"
    assert with_data["subject"] == [
        {"name": "train", "digest": {"sha256": with_data["predicate"]["datasets"][0]["digest"]["sha256"]}}
    ]
    config_only = training_statement(record(config={"lr": 0.1}))
    expected = hashlib.sha256(json.dumps({"lr": 0.1}, separators=(",", ":")).encode()).hexdigest()
    assert config_only["subject"] == [{"name": "config", "digest": {"sha256": expected}}]
    assert config_digest({"lr": 0.1}) == expected


def test_model_digest_must_match_the_model(model: Path) -> None:
    with pytest.raises(UsageError, match="does not match"):
        record(model_path=model, model_digest="0" * 64)
    assert record(model_digest="sha256:" + "AB" * 32).model_digest == "ab" * 32


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "0.9"])
def test_metrics_must_be_finite_numbers(value: object) -> None:
    with pytest.raises(UsageError, match="not a finite number"):
        record(metrics={"accuracy": value})


def test_finish_before_start_is_refused() -> None:
    with pytest.raises(UsageError, match="before started_at"):
        record(started_at="2024-05-02T10:00:00+00:00", finished_at="2024-05-02T09:00:00+00:00")


def full_record(model: Path, dataset_manifest: Path, tmp_path: Path) -> record_module.TrainingRecord:
    config = tmp_path / "config.json"
    config.write_text('{"lr": 0.001}')
    return record(
        config=config,
        git_commit="a" * 40,
        dataset_manifests=[dataset_manifest],
        metrics={"accuracy": 0.93, "loss": 0.21},
        model_path=model,
        started_at="2024-05-02T08:00:00+00:00",
        finished_at="2024-05-02T09:30:00+00:00",
    )


@pytest.mark.parametrize("signed", [True, False])
def test_record_round_trips_through_a_file(
    model: Path, dataset_manifest: Path, tmp_path: Path, keys: tuple[Path, Path], signed: bool
) -> None:
    original = full_record(model, dataset_manifest, tmp_path)
    out = tmp_path / "record.json"
    write_bundle(sign_training_record(original, keys[0]) if signed else training_statement(original), out)
    read = read_training_record(out, keys[1] if signed else None)
    assert read == original
    assert read.metrics["accuracy"] == 0.93
    assert read.packages == PACKAGES


def test_record_signed_by_another_key_is_refused(model: Path, dataset_manifest: Path, tmp_path: Path, keys) -> None:
    generate_key_pair(tmp_path / "x.key", tmp_path / "x.pub")
    out = tmp_path / "record.json"
    write_bundle(sign_training_record(full_record(model, dataset_manifest, tmp_path), keys[0]), out)
    with pytest.raises(VerificationError, match="wrong key"):
        read_training_record(out, tmp_path / "x.pub")


def test_unsigned_record_is_refused_when_a_key_is_given(
    model: Path, dataset_manifest: Path, tmp_path: Path, keys
) -> None:
    out = tmp_path / "record.json"
    write_bundle(training_statement(full_record(model, dataset_manifest, tmp_path)), out)
    with pytest.raises(VerificationError, match="unsigned"):
        read_training_record(out, keys[1])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["subject"][0]["digest"].update(sha256="1" * 64), "model digest does not match"),
        (lambda s: s["predicate"].update(subject_kind="datasets"), "subjects do not match"),
        (lambda s: s["predicate"]["metrics"].update(accuracy="high"), "metrics must be numbers"),
        (lambda s: s["predicate"].pop("command"), "field 'command' is missing"),
        (lambda s: s["predicate"]["datasets"][0]["manifest"].update(sha256="xyz"), "manifest digest is not a SHA-256"),
    ],
)
def test_hand_edited_record_is_refused(model: Path, dataset_manifest: Path, tmp_path: Path, edit, message: str) -> None:
    statement = training_statement(full_record(model, dataset_manifest, tmp_path))
    edit(statement)
    out = tmp_path / "record.json"
    out.write_text(json.dumps(statement))
    with pytest.raises(VerificationError, match=message):
        read_training_record(out)


def test_dataset_manifest_is_not_a_training_record(dataset_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="predicate type"):
        read_training_record(dataset_manifest)
    data = tmp_path / "data"
    unsigned = tmp_path / "unsigned.json"
    write_bundle(dataset_statement(build_dataset_manifest(data, name="d", source="s", license="MIT")), unsigned)
    assert record(dataset_manifests=[unsigned]).datasets[0].signed is False

"""``mlwarden data manifest|verify``, ``record`` and ``bom`` through ``main``: files, exit codes, messages."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

import mlwarden.cli.main as cli
from mlwarden.integrity.dataset import read_dataset_manifest
from mlwarden.integrity.keys import generate_key_pair
from mlwarden.integrity.record import read_training_record


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_key_pair(tmp_path / "signer.key", tmp_path / "signer.pub")
    return tmp_path / "signer.key", tmp_path / "signer.pub"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "part").mkdir(parents=True)
    (folder / "train.csv").write_bytes(b"a,b\n1,2\n")
    (folder / "part" / "test.csv").write_bytes(b"a,b\n3,4\n")
    return folder


def manifest_args(dataset: Path, output: Path, *signing: str) -> list[str]:
    return [
        "data", "manifest", str(dataset), "--name", "tiny", "--source", "https://example.org/tiny",
        "--license", "MIT", "--collected-at", "2024-05-01", "--output", str(output), *signing,
    ]  # fmt: skip


def test_data_manifest_then_verify(dataset: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = dataset / "MANIFEST.json"  # inside the folder: it must not list itself
    assert cli.main(manifest_args(dataset, out, "--private-key", str(keys[0]))) == 0
    manifest = read_dataset_manifest(out, keys[1])
    assert {f.path: f.digest for f in manifest.files} == {
        "train.csv": hashlib.sha256(b"a,b\n1,2\n").hexdigest(),
        "part/test.csv": hashlib.sha256(b"a,b\n3,4\n").hexdigest(),
    }
    assert (manifest.source, manifest.license, manifest.collected_at) == (
        "https://example.org/tiny",
        "MIT",
        "2024-05-01",
    )
    assert f"sha256:{manifest.digest}" in capsys.readouterr().out

    assert cli.main(["data", "verify", str(dataset), "--manifest", str(out), "--public-key", str(keys[1])]) == 0
    assert "signature verified" in capsys.readouterr().out


def test_tampered_dataset_fails_verification_with_exit_1(
    dataset: Path, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    assert cli.main(manifest_args(dataset, out, "--private-key", str(keys[0]))) == 0
    (dataset / "train.csv").write_bytes(b"a,b\n1,999\n")
    (dataset / "extra.csv").write_bytes(b"new")
    capsys.readouterr()
    assert cli.main(["data", "verify", str(dataset), "--manifest", str(out), "--public-key", str(keys[1])]) == 1
    err = capsys.readouterr().err
    assert "file changed: train.csv" in err
    assert "file added: extra.csv" in err


def test_wrong_key_fails_verification(
    dataset: Path, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    generate_key_pair(tmp_path / "other.key", tmp_path / "other.pub")
    out = tmp_path / "m.json"
    assert cli.main(manifest_args(dataset, out, "--private-key", str(keys[0]))) == 0
    assert (
        cli.main(["data", "verify", str(dataset), "--manifest", str(out), "--public-key", str(tmp_path / "other.pub")])
        == 1
    )
    assert "wrong key" in capsys.readouterr().err


def test_unsigned_manifest_verifies_files_but_says_the_signature_was_not_checked(
    dataset: Path, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    assert cli.main(manifest_args(dataset, out, "--unsigned")) == 0
    assert "dsseEnvelope" not in json.loads(out.read_text())
    assert cli.main(["data", "verify", str(dataset), "--manifest", str(out)]) == 0
    assert "NOT checked" in capsys.readouterr().out
    assert cli.main(["data", "verify", str(dataset), "--manifest", str(out), "--public-key", str(keys[1])]) == 1
    assert "unsigned" in capsys.readouterr().err


def test_ignore_paths_are_given_as_seen_from_the_current_folder(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    assert cli.main([*manifest_args(dataset, out, "--unsigned"), "--ignore-paths", str(dataset / "part")]) == 0
    manifest = read_dataset_manifest(out)
    assert [f.path for f in manifest.files] == ["train.csv"]
    (dataset / "part" / "test.csv").write_bytes(b"changed, but ignored")
    assert cli.main(["data", "verify", str(dataset), "--manifest", str(out)]) == 0
    assert cli.main([*manifest_args(dataset, out, "--unsigned"), "--ignore-paths", str(tmp_path)]) == 2
    assert "is not inside the dataset folder" in capsys.readouterr().err


MANIFEST = ["data", "manifest", "--name", "n", "--source", "s", "--license", "l", "--output", "o"]
RECORD = ["record", "--command", "x", "--output", "o"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data"], "required: ACTION"),
        ([*MANIFEST, "DIR"], "--private-key"),
        ([*MANIFEST, "missing", "--unsigned"], "no such file or folder"),
        ([*RECORD, "--metric", "acc", "--unsigned"], "expected NAME=VALUE"),
        ([*RECORD, "--metric", "a=1", "--metric", "a=2", "--unsigned"], "given twice"),
        ([*RECORD, "--private-key", "nokey.pem"], "nokey.pem"),
        (["bom", "missing-model", "--name", "m", "--version", "1"], "no such file or folder"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert err.startswith("mlwarden: error:")


def test_record_writes_a_signed_training_record(
    dataset: Path, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.json"
    assert cli.main(manifest_args(dataset, manifest, "--private-key", str(keys[0]))) == 0
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00weights")
    config = tmp_path / "train.toml"
    config.write_text("epochs = 3\n")
    out = tmp_path / "record.json"
    argv = [
        "record", "--command", "python train.py --epochs 3", "--config", str(config), "--git-dir", str(tmp_path),
        "--dataset-manifest", str(manifest), "--metric", "accuracy=0.91", "--metric", "loss=0.2",
        "--model", str(model), "--private-key", str(keys[0]), "--output", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    record = read_training_record(out, keys[1])
    assert record.argv == ("python", "train.py", "--epochs", "3")
    assert dict(record.config) == {"epochs": 3}
    assert dict(record.metrics) == {"accuracy": 0.91, "loss": 0.2}
    assert record.model_digest == hashlib.sha256(b"\x00weights").hexdigest()
    assert record.datasets[0].manifest_sha256 == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert "signed training record" in capsys.readouterr().out


def test_bom_to_stdout_and_to_a_file(
    dataset: Path, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.json"
    assert cli.main(manifest_args(dataset, manifest, "--unsigned")) == 0
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    capsys.readouterr()
    assert cli.main(["bom", str(model), "--name", "llm", "--version", "7", "--dataset-manifest", str(manifest)]) == 0
    text = capsys.readouterr().out
    out = tmp_path / "bom.json"
    assert cli.main(["bom", str(model), "--name", "llm", "--version", "7", "--output", str(out)]) == 0
    for document in (text, out.read_text()):
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(document) is None
        bom = json.loads(document)
        assert bom["metadata"]["component"]["hashes"][0]["content"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert any(c["type"] == "framework" and c["name"] == "gguf" for c in bom["components"])
    assert any(c["type"] == "data" and c["name"] == "tiny" for c in json.loads(text)["components"])

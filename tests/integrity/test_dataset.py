"""Dataset manifests: digests equal to hashlib's, a predicate that says what the issue asks, refusals named."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlwarden.core.errors import UsageError
from mlwarden.integrity.dataset import (
    PREDICATE_TYPE,
    build_dataset_manifest,
    dataset_statement,
    read_dataset_manifest,
    sign_dataset_manifest,
    verify_dataset,
)
from mlwarden.integrity.envelope import STATEMENT_TYPE, write_bundle
from mlwarden.integrity.errors import ModelPathError, VerificationError
from mlwarden.integrity.keys import generate_key_pair

FILES = {
    "train.csv": b"x,y\n1,2\n3,4\n",
    "test.csv": b"x,y\n5,6\n",
    "images/cat.png": os.urandom(3 * (1 << 20) + 17),  # several 1 MiB chunks
    "images/nested/dog.png": b"\x89PNG fake",
}


def make_dataset(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def listing_digest(files: dict[str, bytes]) -> str:
    """The overall digest computed independently: sha256 over `sha256sum`-style lines sorted by path."""
    lines = "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "signer.key", tmp_path / "keys" / "signer.pub"
    private.parent.mkdir()
    generate_key_pair(private, public)
    return private, public


@pytest.fixture
def other_public_key(tmp_path: Path) -> Path:
    generate_key_pair(tmp_path / "other.key", tmp_path / "other.pub")
    return tmp_path / "other.pub"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def build(path: Path, **overrides: object):
    args: dict[str, object] = {
        "name": "reviews",
        "source": "https://example.org/reviews",
        "license": "CC-BY-4.0",
        "collected_at": "2024-05-01",
        "description": "product reviews",
    }
    args.update(overrides)
    return build_dataset_manifest(path, **args)  # type: ignore[arg-type]


def test_statement_lists_every_file_with_hashlib_digest_and_the_predicate(dataset: Path) -> None:
    statement = dataset_statement(build(dataset))

    assert statement["_type"] == STATEMENT_TYPE
    assert statement["predicateType"] == PREDICATE_TYPE
    subjects = {s["name"]: s for s in statement["subject"]}
    assert set(subjects) == set(FILES)
    for rel, data in FILES.items():
        assert subjects[rel]["digest"] == {"sha256": hashlib.sha256(data).hexdigest()}
        assert subjects[rel]["annotations"] == {"size": len(data)}
    predicate = statement["predicate"]
    assert predicate["name"] == "reviews"
    assert predicate["source"] == "https://example.org/reviews"
    assert predicate["license"] == "CC-BY-4.0"
    assert predicate["collected_at"] == "2024-05-01"
    assert predicate["description"] == "product reviews"
    assert predicate["file_count"] == len(FILES)
    assert predicate["total_size"] == sum(len(d) for d in FILES.values())
    assert predicate["digest"] == {"sha256": listing_digest(FILES)}
    assert predicate["pii_scan"] == {"status": "not_scanned"}


@pytest.mark.parametrize("signed", [True, False])
def test_manifest_round_trips_through_a_file(
    dataset: Path, tmp_path: Path, keys: tuple[Path, Path], signed: bool
) -> None:
    manifest = build(dataset)
    out = tmp_path / "manifest.json"
    write_bundle(sign_dataset_manifest(manifest, keys[0]) if signed else dataset_statement(manifest), out)

    assert read_dataset_manifest(out, keys[1] if signed else None) == manifest
    assert read_dataset_manifest(out) == manifest  # reading without a key works for both


def test_signed_manifest_is_a_dsse_bundle_over_the_statement(dataset: Path, keys: tuple[Path, Path]) -> None:
    manifest = build(dataset)
    bundle = sign_dataset_manifest(manifest, keys[0])
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert bundle["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    assert payload == dataset_statement(manifest)


def test_wrong_key_is_rejected(dataset: Path, tmp_path: Path, keys: tuple[Path, Path], other_public_key: Path) -> None:
    out = tmp_path / "m.json"
    write_bundle(sign_dataset_manifest(build(dataset), keys[0]), out)
    with pytest.raises(VerificationError, match="wrong key"):
        read_dataset_manifest(out, other_public_key)


def test_altered_payload_does_not_verify(dataset: Path, tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bundle = sign_dataset_manifest(build(dataset), keys[0])
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["license"] = "proprietary"
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    out = tmp_path / "m.json"
    write_bundle(bundle, out)
    with pytest.raises(VerificationError, match="does not verify"):
        read_dataset_manifest(out, keys[1])


def test_unsigned_manifest_is_refused_when_a_key_is_given(
    dataset: Path, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    out = tmp_path / "m.json"
    write_bundle(dataset_statement(build(dataset)), out)
    with pytest.raises(VerificationError, match="unsigned"):
        read_dataset_manifest(out, keys[1])


@pytest.mark.parametrize("keep", [0, 1, 100, -1])
def test_truncated_manifest_is_refused(dataset: Path, tmp_path: Path, keys: tuple[Path, Path], keep: int) -> None:
    out = tmp_path / "m.json"
    write_bundle(sign_dataset_manifest(build(dataset), keys[0]), out)
    data = out.read_bytes()
    out.write_bytes(data[:keep] if keep >= 0 else data[: len(data) // 2])
    with pytest.raises(VerificationError, match=r"m\.json is truncated or not JSON"):
        read_dataset_manifest(out, keys[1])


def test_missing_manifest_is_named(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match=r"dataset manifest .*nothing\.json does not exist"):
        read_dataset_manifest(tmp_path / "nothing.json")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"hello": "world"}, "neither a signed bundle nor an in-toto statement"),
        ([1, 2], "not a JSON object"),
        ({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}, "no dsseEnvelope"),
    ],
)
def test_documents_that_are_not_manifests_are_refused(tmp_path: Path, document: object, message: str) -> None:
    out = tmp_path / "m.json"
    out.write_text(json.dumps(document))
    with pytest.raises(VerificationError, match=message):
        read_dataset_manifest(out)


def test_statement_of_another_kind_is_refused(dataset: Path, tmp_path: Path) -> None:
    statement = dataset_statement(build(dataset))
    statement["predicateType"] = "https://model_signing/signature/v1.0"
    out = tmp_path / "m.json"
    out.write_text(json.dumps(statement))
    with pytest.raises(VerificationError, match="predicate type"):
        read_dataset_manifest(out)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["predicate"].update(file_count=99), "file_count says 99"),
        (lambda s: s["predicate"].update(total_size=1), "total_size says 1"),
        (lambda s: s["subject"][0]["digest"].update(sha256="0" * 64), "digest says"),
        (lambda s: s["predicate"].pop("license"), "field 'license' is missing"),
        (lambda s: s["predicate"].update(file_count=True), "field 'file_count' is missing or not an integer"),
        (lambda s: s["subject"][0].pop("annotations"), "no valid size annotation"),
        (lambda s: s["subject"].append(dict(s["subject"][0])), "listed twice"),
    ],
)
def test_inconsistent_hand_edited_manifest_is_refused(dataset: Path, tmp_path: Path, edit, message: str) -> None:
    statement = dataset_statement(build(dataset))
    edit(statement)
    out = tmp_path / "m.json"
    out.write_text(json.dumps(statement))
    with pytest.raises(VerificationError, match=message):
        read_dataset_manifest(out)


def test_untouched_dataset_verifies(dataset: Path) -> None:
    assert verify_dataset(dataset, build(dataset)) == []


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda d: (d / "train.csv").write_bytes(b"x,y\n1,3\n3,4\n"), [("changed", "train.csv")]),
        (lambda d: (d / "images" / "extra.png").write_bytes(b"new"), [("added", "images/extra.png")]),
        (lambda d: (d / "images" / "nested" / "dog.png").unlink(), [("removed", "images/nested/dog.png")]),
        (lambda d: (d / "test.csv").rename(d / "test2.csv"), [("removed", "test.csv"), ("added", "test2.csv")]),
    ],
)
def test_tampered_dataset_is_detected(dataset: Path, tamper, expected: list[tuple[str, str]]) -> None:
    manifest = build(dataset)
    tamper(dataset)
    differences = verify_dataset(dataset, manifest)
    assert sorted((d.kind, d.path) for d in differences) == sorted(expected)
    changed = [d for d in differences if d.kind == "changed"]
    if changed:
        assert hashlib.sha256(b"x,y\n1,3\n3,4\n").hexdigest() in str(changed[0])


def test_ignore_paths_are_recorded_and_honoured_on_verification(dataset: Path, tmp_path: Path) -> None:
    manifest = build(dataset, ignore_paths=["images"])
    assert {f.path for f in manifest.files} == {"train.csv", "test.csv"}
    assert manifest.ignore_paths == ("images",)
    out = tmp_path / "m.json"
    write_bundle(dataset_statement(manifest), out)
    read = read_dataset_manifest(out)
    (dataset / "images" / "cat.png").write_bytes(b"changed but ignored")
    assert verify_dataset(dataset, read) == []


def test_single_file_dataset(tmp_path: Path) -> None:
    file = tmp_path / "corpus.jsonl"
    file.write_bytes(b'{"text": "hi"}\n')
    manifest = build(file)
    assert manifest.digest == hashlib.sha256(file.read_bytes()).hexdigest()
    out = tmp_path / "m.json"
    write_bundle(dataset_statement(manifest), out)
    assert read_dataset_manifest(out) == manifest
    file.write_bytes(b"other")
    assert [d.kind for d in verify_dataset(file, manifest)] == ["changed"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2024-05-01", "2024-05-01"),
        ("2024-05-01T10:20:30+02:00", "2024-05-01T10:20:30+02:00"),
        (datetime(2024, 5, 1, 8, 0, tzinfo=UTC), "2024-05-01T08:00:00+00:00"),
    ],
)
def test_collected_at_is_iso_8601(dataset: Path, given: object, expected: str) -> None:
    assert build(dataset, collected_at=given).collected_at == expected


def test_collected_at_defaults_to_now(dataset: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = datetime.fromisoformat(build(dataset, collected_at=None).collected_at)
    assert before <= stamp <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"collected_at": "last tuesday"}, "not an ISO 8601 date"),
        ({"name": "  "}, "non-empty name"),
        ({"license": ""}, "non-empty license"),
    ],
)
def test_bad_arguments_are_refused(dataset: Path, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build(dataset, **overrides)


def test_empty_dataset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="has no files"):
        build(tmp_path / "empty")


def test_symlink_inside_the_dataset_is_refused(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    (dataset / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(ModelPathError, match="symbolic link"):
        build(dataset)

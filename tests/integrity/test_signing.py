from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from mlwarden.integrity.envelope import read_bundle, sign_statement, write_bundle
from mlwarden.integrity.errors import KeyFileError, ModelPathError, VerificationError
from mlwarden.integrity.hashing import hash_model
from mlwarden.integrity.signing import (
    PREDICATE_TYPE,
    build_statement,
    sign_model,
    sign_model_certificate,
    verify_model,
    verify_model_certificate,
)
from tests.integrity.signing_helpers import LAYOUTS, build_model, build_pki, write_key_pair


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_key_pair(tmp_path / "keys")


def _statement(signature: Path) -> dict[str, Any]:
    return json.loads(base64.b64decode(read_bundle(signature)["dsseEnvelope"]["payload"]))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sign_then_verify(tmp_path: Path, keys: tuple[Path, Path], layout: str) -> None:
    model = build_model(tmp_path / "m", layout)
    signed = sign_model(model, keys[0], tmp_path / "model.sig")
    result = verify_model(model, tmp_path / "model.sig", keys[1])
    assert result.manifest == signed
    assert result.signer.startswith("key sha256:")
    assert len(result.signed.resources) == len(LAYOUTS[layout])


def test_statement_layout_is_model_signings(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = build_model(tmp_path, "nested-folder")
    manifest = sign_model(model, keys[0], tmp_path / "model.sig", ignore_paths=["README.md"])
    statement = _statement(tmp_path / "model.sig")
    assert list(statement) == ["_type", "subject", "predicateType", "predicate"]
    assert statement["predicateType"] == PREDICATE_TYPE
    root = hashlib.sha256(b"".join(bytes.fromhex(f.digest) for f in manifest.files)).hexdigest()
    assert statement["subject"] == [{"name": "model", "digest": {"sha256": root}}]
    assert statement["predicate"]["serialization"] == {
        "method": "files",
        "hash_type": "sha256",
        "allow_symlinks": False,
        "ignore_paths": sorted(["README.md", ".git", ".gitattributes", ".github", ".gitignore"]),
    }
    assert statement["predicate"]["resources"] == [
        {"name": f.path, "algorithm": "sha256", "digest": f.digest} for f in manifest.files
    ]


def test_single_file_resource_is_dot(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = build_model(tmp_path, "single-file")
    sign_model(model, keys[0], tmp_path / "s.sig")
    assert [r["name"] for r in _statement(tmp_path / "s.sig")["predicate"]["resources"]] == ["."]
    renamed = model.rename(tmp_path / "renamed.bin")  # renaming a single file keeps the signature valid
    assert verify_model(renamed, tmp_path / "s.sig", keys[1]).manifest.files[0].path == "renamed.bin"


def test_added_removed_changed_are_all_named(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = build_model(tmp_path, "nested-folder")
    before = sign_model(model, keys[0], tmp_path / "m.sig")
    (model / "config.json").unlink()
    (model / "weights" / "part-2.bin").write_bytes(b"tampered")
    (model / "weights" / "backdoor.pkl").write_bytes(b"x")
    with pytest.raises(VerificationError) as info:
        verify_model(model, tmp_path / "m.sig", keys[1])
    old = before.get("weights/part-2.bin")
    assert old is not None
    assert info.value.problems == (
        "file removed: config.json",
        "file added: weights/backdoor.pkl",
        f"file changed: weights/part-2.bin (sha256 expected {old.digest} got {hashlib.sha256(b'tampered').hexdigest()})",  # noqa: E501
    )


def test_wrong_key(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = build_model(tmp_path, "nested-folder")
    sign_model(model, keys[0], tmp_path / "m.sig")
    _, other = write_key_pair(tmp_path / "other")
    with pytest.raises(VerificationError, match=r"signature does not verify with this key \(wrong key\?\)"):
        verify_model(model, tmp_path / "m.sig", other)


def test_truncated_bundle(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = build_model(tmp_path, "nested-folder")
    sign_model(model, keys[0], tmp_path / "m.sig")
    data = (tmp_path / "m.sig").read_bytes()
    (tmp_path / "m.sig").write_bytes(data[:-40])
    with pytest.raises(VerificationError, match="not a valid signature bundle"):
        verify_model(model, tmp_path / "m.sig", keys[1])


def test_missing_model_and_missing_key(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = build_model(tmp_path, "nested-folder")
    sign_model(model, keys[0], tmp_path / "m.sig")
    with pytest.raises(ModelPathError, match="no such file or folder"):
        verify_model(tmp_path / "gone", tmp_path / "m.sig", keys[1])
    with pytest.raises(KeyFileError, match="does not exist"):
        sign_model(model, tmp_path / "nokey.pem", tmp_path / "m2.sig")
    assert not (tmp_path / "m2.sig").exists()


def test_kind_mismatch_is_named(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    folder = build_model(tmp_path / "f", "nested-folder")
    sign_model(folder / "config.json", keys[0], tmp_path / "one.sig")
    with pytest.raises(VerificationError, match="covers a single file but .* is a folder"):
        verify_model(folder, tmp_path / "one.sig", keys[1])


def test_ignore_paths_are_recorded_and_honoured(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = build_model(tmp_path, "nested-folder")
    sign_model(model, keys[0], tmp_path / "m.sig", ignore_paths=["README.md", "tokenizer"])
    (model / "README.md").write_text("edited")
    (model / "tokenizer" / "merges.txt").write_text("new")
    assert verify_model(model, tmp_path / "m.sig", keys[1]).manifest.get("README.md") is None
    (model / "config.json").write_text("{}")
    with pytest.raises(VerificationError, match="file changed: config.json"):
        verify_model(model, tmp_path / "m.sig", keys[1])
    # a verifier leaving out a signed file does not make it optional: it is reported missing (as model_signing)
    with pytest.raises(VerificationError, match="file removed: config.json"):
        verify_model(model, tmp_path / "m.sig", keys[1], ignore_paths=["config.json"])


def test_signature_inside_the_model_is_left_out(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = build_model(tmp_path, "nested-folder")
    sign_model(model, keys[0], model / "model.sig")
    assert "model.sig" in _statement(model / "model.sig")["predicate"]["serialization"]["ignore_paths"]
    assert verify_model(model, model / "model.sig", keys[1]).manifest.get("model.sig") is None


def _resign(signature: Path, key: Path, change: Any) -> None:
    statement = _statement(signature)
    change(statement)
    write_bundle(sign_statement(statement, key), signature)


def test_root_digest_must_match_resources(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = build_model(tmp_path, "nested-folder")
    sign_model(model, keys[0], tmp_path / "m.sig")
    _resign(tmp_path / "m.sig", keys[0], lambda s: s["predicate"]["resources"][0].update(digest="00" * 32))
    with pytest.raises(VerificationError, match="root digest .* does not match its resources"):
        verify_model(model, tmp_path / "m.sig", keys[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["predicate"]["serialization"].update(method="shards", shard_size=1000), "unsupported"),
        (lambda s: s["predicate"]["serialization"].update(hash_type="blake3"), "unsupported"),
        (lambda s: s.update(predicateType="https://example.com/other"), "not a model signature"),
        (lambda s: s["predicate"].update(resources=[]), "lists no file"),
        (lambda s: s["predicate"]["serialization"].update(ignore_paths=["../../etc"]), "malformed"),
    ],
)
def test_statements_mlwarden_cannot_check_are_refused(
    tmp_path: Path, keys: tuple[Path, Path], change: Any, message: str
) -> None:
    model = build_model(tmp_path, "nested-folder")
    sign_model(model, keys[0], tmp_path / "m.sig")
    _resign(tmp_path / "m.sig", keys[0], change)
    with pytest.raises(VerificationError, match=message):
        verify_model(model, tmp_path / "m.sig", keys[1])


def test_build_statement_matches_hash(tmp_path: Path) -> None:
    manifest = hash_model(build_model(tmp_path, "nested-folder"))
    names = [r["name"] for r in build_statement(manifest)["predicate"]["resources"]]
    assert names == [f.path for f in manifest.files]


def test_certificate_sign_and_verify(tmp_path: Path) -> None:
    pki = build_pki(tmp_path / "pki")
    model = build_model(tmp_path, "nested-folder")
    sign_model_certificate(
        model, pki.leaf_key, pki.leaf_cert, tmp_path / "c.sig", certificate_chain_paths=[pki.intermediate_cert]
    )
    result = verify_model_certificate(model, tmp_path / "c.sig", [pki.root_cert])
    assert result.signer == "O=mlwarden tests,CN=ca signer"
    chain = read_bundle(tmp_path / "c.sig")["verificationMaterial"]["x509CertificateChain"]["certificates"]
    assert len(chain) == 2
    (model / "config.json").write_text("{}")
    with pytest.raises(VerificationError, match="file changed: config.json"):
        verify_model_certificate(model, tmp_path / "c.sig", [pki.root_cert])


def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    pki, stranger = build_pki(tmp_path / "pki"), build_pki(tmp_path / "other", name="other")
    model = build_model(tmp_path, "nested-folder")
    sign_model_certificate(
        model, pki.leaf_key, pki.leaf_cert, tmp_path / "c.sig", certificate_chain_paths=[pki.intermediate_cert]
    )
    with pytest.raises(VerificationError, match="does not chain to a trusted root"):
        verify_model_certificate(model, tmp_path / "c.sig", [stranger.root_cert])


def test_certificate_that_may_not_sign_is_refused(tmp_path: Path) -> None:
    pki = build_pki(tmp_path / "pki", leaf_usage="tls")
    model = build_model(tmp_path, "nested-folder")
    sign_model_certificate(
        model, pki.leaf_key, pki.leaf_cert, tmp_path / "c.sig", certificate_chain_paths=[pki.intermediate_cert]
    )
    with pytest.raises(VerificationError, match="may not sign"):
        verify_model_certificate(model, tmp_path / "c.sig", [pki.root_cert])


def test_certificate_must_match_the_key(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    pki = build_pki(tmp_path / "pki")
    with pytest.raises(KeyFileError, match="is not the certificate of"):
        sign_model_certificate(build_model(tmp_path, "nested-folder"), keys[0], pki.leaf_cert, tmp_path / "c.sig")


def test_key_bundle_checked_as_certificate_bundle(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    pki = build_pki(tmp_path / "pki")
    model = build_model(tmp_path, "nested-folder")
    sign_model(model, keys[0], tmp_path / "k.sig")
    with pytest.raises(VerificationError, match="carries no certificate"):
        verify_model_certificate(model, tmp_path / "k.sig", [pki.root_cert])

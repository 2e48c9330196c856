"""Bundles are interchangeable with OpenSSF model_signing 1.x, both ways (the issue's acceptance test).

model_signing is a test dependency (it needs ``pyopenssl`` for its certificate verifier).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlwarden.integrity.errors import VerificationError
from mlwarden.integrity.hashing import hash_model
from mlwarden.integrity.signing import sign_model, sign_model_certificate, verify_model, verify_model_certificate
from tests.integrity.signing_helpers import LAYOUTS, build_model, build_pki, write_key_pair

model_signing = pytest.importorskip("model_signing")

IGNORED = {"single-file": [], "nested-folder": ["README.md", "weights/deeper"]}


def tamper(model: Path) -> None:
    target = model if model.is_file() else model / "weights" / "part-1.bin"
    target.write_bytes(target.read_bytes() + b"!")


def their_hashing(ignore: list[str]) -> object:
    return model_signing.hashing.Config().set_ignored_paths(paths=ignore)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_key_pair(tmp_path / "keys")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_manifests_are_identical(tmp_path: Path, layout: str) -> None:
    model = build_model(tmp_path, layout)
    if model.is_dir():
        (model / ".git").mkdir()
        (model / ".git" / "HEAD").write_text("ref")
        (model / ".hidden").write_text("dotfiles are signed")
    ours = hash_model(model, ignore_paths=IGNORED[layout])
    theirs = their_hashing(IGNORED[layout]).hash(model)  # type: ignore[attr-defined]
    pairs = [(r.identifier, r.digest.digest_hex) for r in theirs.resource_descriptors()]
    expected = [("." if ours.is_file else f.path, f.digest) for f in ours.files]
    assert pairs == expected


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_model_signing_verifies_mlwarden(tmp_path: Path, keys: tuple[Path, Path], layout: str) -> None:
    model = build_model(tmp_path / "m", layout)
    sign_model(model, keys[0], tmp_path / "ours.sig", ignore_paths=IGNORED[layout])
    verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys[1])
    verifier.verify(model, tmp_path / "ours.sig")
    if model.is_dir():  # the recorded ignore paths reach model_signing: ignored files may change
        (model / "README.md").write_text("edited after signing")
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys[1]).verify(
            model, tmp_path / "ours.sig"
        )
    tamper(model)
    with pytest.raises(ValueError, match="Signature mismatch"):
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys[1]).verify(
            model, tmp_path / "ours.sig"
        )


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_mlwarden_verifies_model_signing(tmp_path: Path, keys: tuple[Path, Path], layout: str) -> None:
    model = build_model(tmp_path / "m", layout)
    (
        model_signing.signing.Config()
        .use_elliptic_key_signer(private_key=keys[0])
        .set_hashing_config(their_hashing(IGNORED[layout]))
        .sign(model, tmp_path / "theirs.sig")
    )
    result = verify_model(model, tmp_path / "theirs.sig", keys[1])
    assert result.manifest == hash_model(model, ignore_paths=IGNORED[layout])
    if model.is_dir():
        (model / "weights" / "deeper" / "extra.bin").write_bytes(b"ignored when signed, so ignored now")
        verify_model(model, tmp_path / "theirs.sig", keys[1])
    tamper(model)
    with pytest.raises(VerificationError, match="file changed: "):
        verify_model(model, tmp_path / "theirs.sig", keys[1])


def test_wrong_key_fails_both_ways(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    model = build_model(tmp_path / "m", "nested-folder")
    _, other = write_key_pair(tmp_path / "other")
    sign_model(model, keys[0], tmp_path / "ours.sig")
    with pytest.raises(ValueError, match="Key mismatch"):
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=other).verify(
            model, tmp_path / "ours.sig"
        )
    model_signing.signing.Config().use_elliptic_key_signer(private_key=keys[0]).sign(model, tmp_path / "theirs.sig")
    with pytest.raises(VerificationError, match=r"wrong key\?"):
        verify_model(model, tmp_path / "theirs.sig", other)


def test_certificates_interoperate_both_ways(tmp_path: Path) -> None:
    pki = build_pki(tmp_path / "pki")
    model = build_model(tmp_path / "m", "nested-folder")
    sign_model_certificate(
        model, pki.leaf_key, pki.leaf_cert, tmp_path / "ours.sig", certificate_chain_paths=[pki.intermediate_cert]
    )
    model_signing.verifying.Config().use_certificate_verifier(certificate_chain=[pki.root_cert]).verify(
        model, tmp_path / "ours.sig"
    )
    (
        model_signing.signing.Config()
        .use_certificate_signer(
            private_key=pki.leaf_key, signing_certificate=pki.leaf_cert, certificate_chain=[pki.intermediate_cert]
        )
        .sign(model, tmp_path / "theirs.sig")
    )
    assert verify_model_certificate(model, tmp_path / "theirs.sig", [pki.root_cert]).signer.endswith("CN=ca signer")
    tamper(model)
    with pytest.raises(ValueError, match="Signature mismatch"):
        model_signing.verifying.Config().use_certificate_verifier(certificate_chain=[pki.root_cert]).verify(
            model, tmp_path / "ours.sig"
        )
    with pytest.raises(VerificationError, match="file changed: weights/part-1.bin"):
        verify_model_certificate(model, tmp_path / "theirs.sig", [pki.root_cert])


def test_clis_interoperate(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """mlwarden's CLI signs (ignore paths as seen from the cwd, like model_signing's); model_signing's CLI verifies."""
    model = build_model(tmp_path, "nested-folder")
    shim = "import sys; from mlwarden.cli import main as m; sys.exit(m.main(sys.argv[1:]))"
    signed = subprocess.run(
        [
            sys.executable,
            "-c",
            shim,
            "sign",
            "key",
            "model",
            "--private-key",
            str(keys[0]),
            "--signature",
            "model/model.sig",
            "--ignore-paths",
            "model/README.md",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert signed.returncode == 0, signed.stderr
    (model / "README.md").write_text("changed, but ignored")
    cli = Path(sys.executable).parent / "model_signing"
    verified = subprocess.run(
        [str(cli), "verify", "key", "model", "--signature", "model/model.sig", "--public_key", str(keys[1])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Verification succeeded" in verified.stdout

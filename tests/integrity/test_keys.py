from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mlwarden.integrity.errors import KeyFileError
from mlwarden.integrity.keys import generate_key_pair, key_hint, load_certificates, load_private_key, load_public_key
from tests.integrity.signing_helpers import build_pki, write_key_pair


def _pem(key: object, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
def test_generate_key_pair(tmp_path: Path, curve: str) -> None:
    public = generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub", curve=curve)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert load_private_key(tmp_path / "k.pem").public_key() == public
    assert key_hint(load_public_key(tmp_path / "k.pub")) == key_hint(public)
    assert public.curve.key_size == int(curve[2:])


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("precious")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub")
    assert (tmp_path / "k.pem").read_text() == "precious"
    assert not (tmp_path / "k.pub").exists()


def test_password_protected_key(tmp_path: Path) -> None:
    generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub", password=b"s3cret")
    assert b"ENCRYPTED" in (tmp_path / "k.pem").read_bytes()
    assert load_private_key(tmp_path / "k.pem", b"s3cret").public_key() == load_public_key(tmp_path / "k.pub")
    with pytest.raises(KeyFileError, match="wrong password"):
        load_private_key(tmp_path / "k.pem", b"guess")
    with pytest.raises(KeyFileError, match="is encrypted: give its password"):
        load_private_key(tmp_path / "k.pem")


def test_password_given_for_a_plain_key(tmp_path: Path) -> None:
    private, _ = write_key_pair(tmp_path)
    with pytest.raises(KeyFileError, match="not encrypted"):
        load_private_key(private, b"pw")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"just some text", "not a PEM file"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "corrupt"),
    ],
)
def test_unusable_private_key_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KeyFileError, match=message):
        load_private_key(path)


def test_public_and_private_keys_swapped(tmp_path: Path) -> None:
    private, public = write_key_pair(tmp_path)
    with pytest.raises(KeyFileError, match="holds a public key"):
        load_private_key(public)
    with pytest.raises(KeyFileError, match="holds a private key"):
        load_public_key(private)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA"),
        (ed25519.Ed25519PrivateKey.generate, "Ed25519"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
    ],
)
def test_unsupported_key_types(tmp_path: Path, make: object, kind: str) -> None:
    key = make()  # type: ignore[operator]
    (tmp_path / "k.pem").write_bytes(_pem(key))
    (tmp_path / "k.pub").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match=f"{kind}.*(only|supported)"):
        load_private_key(tmp_path / "k.pem")
    with pytest.raises(KeyFileError, match=kind):
        load_public_key(tmp_path / "k.pub")


def test_certificates_load_in_order(tmp_path: Path) -> None:
    pki = build_pki(tmp_path)
    both = tmp_path / "chain.pem"
    both.write_bytes(pki.leaf_cert.read_bytes() + pki.intermediate_cert.read_bytes())
    certs = load_certificates([both, pki.root_cert])
    assert [c.subject.rfc4514_string() for c in certs] == [
        "O=mlwarden tests,CN=ca signer",
        "O=mlwarden tests,CN=ca intermediate",
        "O=mlwarden tests,CN=ca root",
    ]
    garbage = tmp_path / "bad.crt"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(KeyFileError, match="no valid PEM certificate"):
        load_certificates([garbage])

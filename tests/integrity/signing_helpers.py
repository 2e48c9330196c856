"""Builders shared by the signing tests: key pairs, small models, a throw-away certificate authority."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LAYOUTS = {
    "single-file": {"model.safetensors": b"\x00weights" * 1000},
    "nested-folder": {
        "config.json": b'{"layers": 2}',
        "weights/part-1.bin": b"\x01" * 5000,
        "weights/part-2.bin": b"\x02" * 7000,
        "weights/deeper/extra.bin": b"extra",
        "tokenizer/vocab.txt": b"a\nb\nc\n",
        "README.md": b"# a model\n",
        "a-b": b"sorts differently by string and by path component",
        "a/b": b"nested",
    },
}


def build_model(root: Path, layout: str) -> Path:
    """Write LAYOUTS[layout] under ``root``; return the model path (the file itself for a single file)."""
    files = LAYOUTS[layout]
    if layout == "single-file":
        root.mkdir(parents=True, exist_ok=True)
        ((name, data),) = files.items()
        (root / name).write_bytes(data)
        return root / name
    model = root / "model"
    for rel, data in files.items():
        path = model / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return model


def write_key_pair(folder: Path, name: str = "key", curve: ec.EllipticCurve | None = None) -> tuple[Path, Path]:
    """An unencrypted PEM key pair written with cryptography directly (independent of mlwarden's writer)."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    folder.mkdir(parents=True, exist_ok=True)
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@dataclass(frozen=True)
class Pki:
    """A root CA, an intermediate and a signing leaf, as PEM files."""

    root_cert: Path
    intermediate_cert: Path
    leaf_key: Path
    leaf_cert: Path


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mlwarden tests"),
        ]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    leaf_usage: str = "code-signing",
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        usage = dict.fromkeys(
            (
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "encipher_only",
                "decipher_only",
            ),
            False,
        )
        builder = builder.add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), critical=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        signing = leaf_usage == "code-signing"
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=signing,
                content_commitment=False,
                key_encipherment=not signing,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        eku = ExtendedKeyUsageOID.CODE_SIGNING if signing else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def build_pki(folder: Path, *, leaf_usage: str = "code-signing", name: str = "ca") -> Pki:
    """A fresh root -> intermediate -> leaf chain. ``leaf_usage="tls"`` makes a leaf that may not sign."""
    folder.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _cert(f"{name} root", root_key, None, root_key, ca=True)
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid = _cert(f"{name} intermediate", mid_key, root, root_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(f"{name} signer", leaf_key, mid, mid_key, ca=False, leaf_usage=leaf_usage)
    key_path = folder / f"{name}-leaf.pem"
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Pki(
        root_cert=_pem(folder / f"{name}-root.crt", root),
        intermediate_cert=_pem(folder / f"{name}-intermediate.crt", mid),
        leaf_key=key_path,
        leaf_cert=_pem(folder / f"{name}-leaf.crt", leaf),
    )

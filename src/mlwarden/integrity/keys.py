"""Load and create the keys and certificates signatures are made and checked with.

Only ECDSA keys on P-256, P-384 and P-521 are accepted: those are what OpenSSF ``model_signing`` 1.x signs
and verifies with (its key and certificate methods refuse RSA and Ed25519), and a bundle made with any other
key would not be interchangeable. The digest paired with each curve is the one Sigstore's specs and
``model_signing`` use: SHA-256, SHA-384, SHA-512 respectively.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mlwarden.integrity.errors import KeyFileError

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey

#: Curve names accepted by :func:`generate_key_pair`, with the name ``cryptography`` gives each curve.
CURVES: dict[str, str] = {"P-256": "secp256r1", "P-384": "secp384r1", "P-521": "secp521r1"}
_CURVE_CLASSES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
_MAX_KEY_FILE = 1 << 20  # a PEM key or certificate chain is a few KiB; refuse to slurp a model by mistake


def _read(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > _MAX_KEY_FILE:
            raise KeyFileError(f"{what} {path} is {size} bytes: too large to be a PEM file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} {path} is a folder, not a PEM file") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise KeyFileError(f"{what} {path} is not a PEM file (no '-----BEGIN' line)")
    return data


def _check_curve(key: object, path: Path, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        kind = type(key).__name__.lstrip("_").removesuffix("PrivateKey").removesuffix("PublicKey") or "unknown"
        raise KeyFileError(
            f"{what} {path} holds a {kind} key: only ECDSA P-256/P-384/P-521 keys are supported "
            "(the keys OpenSSF model_signing accepts)"
        )
    if key.curve.name not in CURVES.values():
        raise KeyFileError(f"{what} {path} uses curve {key.curve.name}: only P-256, P-384 and P-521 are supported")


def load_private_key(path: Path | str, password: bytes | None = None) -> PrivateKey:
    """Load a PEM private key (PKCS#8 or SEC1), decrypting it with ``password`` when it is encrypted.

    Raises:
        KeyFileError: missing or unreadable file, not PEM, password missing or wrong, not an ECDSA key on a
            supported curve.
    """
    path = Path(path)
    data = _read(path, "private key")
    if b"PRIVATE KEY-----" not in data:
        hint = " (it holds a public key or certificate)" if b"PUBLIC KEY-----" in data or b"CERTIFICATE" in data else ""
        raise KeyFileError(f"private key {path} is not a PEM private key{hint}")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:
        if password is None:
            raise KeyFileError(f"private key {path} is encrypted: give its password") from None
        if "not encrypted" in str(exc):
            raise KeyFileError(f"private key {path} is not encrypted, but a password was given") from None
        raise KeyFileError(f"private key {path} cannot be loaded: {exc}") from None
    except ValueError as exc:
        if password is not None and ("decrypt" in str(exc).lower() or "password" in str(exc).lower()):
            raise KeyFileError(f"wrong password for private key {path}") from None
        raise KeyFileError(f"private key {path} is corrupt or not a supported key: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - cryptography raises several types for unsupported key formats
        raise KeyFileError(f"private key {path} cannot be loaded: {exc}") from None
    _check_curve(key, path, "private key")
    if not (isinstance(key, ec.EllipticCurvePrivateKey)):  # _check_curve refused anything else
        raise RuntimeError("internal invariant broken: isinstance(key, ec.EllipticCurvePrivateKey)")
    return key


def load_public_key(path: Path | str) -> PublicKey:
    """Load a PEM public key (SubjectPublicKeyInfo).

    Raises:
        KeyFileError: missing or unreadable file, not a PEM public key, not ECDSA on a supported curve.
    """
    path = Path(path)
    data = _read(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(f"public key {path} holds a private key: give the public key (never share the private)")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as exc:  # noqa: BLE001 - cryptography raises several types for unsupported key formats
        raise KeyFileError(f"public key {path} is corrupt or not a PEM public key: {exc}") from None
    _check_curve(key, path, "public key")
    if not (isinstance(key, ec.EllipticCurvePublicKey)):
        raise RuntimeError("internal invariant broken: isinstance(key, ec.EllipticCurvePublicKey)")
    return key


def load_certificates(paths: Iterable[Path | str], what: str = "certificate file") -> list[x509.Certificate]:
    """Load every PEM certificate from ``paths`` (a file may hold several), in order.

    Raises:
        KeyFileError: a file is missing, unreadable, not PEM, holds no certificate or a corrupt one.
    """
    out: list[x509.Certificate] = []
    for raw in paths:
        path = Path(raw)
        data = _read(path, what)
        try:
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise KeyFileError(f"{what} {path} holds no valid PEM certificate: {exc}") from None
        out.extend(certificates)
    return out


def hash_for(key: PublicKey | PrivateKey) -> hashes.HashAlgorithm:
    """The digest ECDSA uses with this key's curve (SHA-256 / SHA-384 / SHA-512 for P-256 / P-384 / P-521)."""
    size = key.curve.key_size
    if size == 256:
        return hashes.SHA256()
    if size == 384:
        return hashes.SHA384()
    if size == 521:
        return hashes.SHA512()
    raise KeyFileError(f"unsupported curve {key.curve.name}")


def public_pem(key: PublicKey) -> bytes:
    """The key as PEM SubjectPublicKeyInfo bytes."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_hint(key: PublicKey) -> str:
    """The public-key hint written in bundles: SHA-256 (hex) of the PEM public key, as ``model_signing`` does."""
    return hashlib.sha256(public_pem(key)).hexdigest()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` and write ``data``; never replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists: refusing to overwrite a key (move it away first)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(path, mode)  # the umask may have removed bits we wanted (never added any)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write {path}: {exc.strerror or exc}") from None


def generate_key_pair(
    private_path: Path | str, public_path: Path | str, *, curve: str = "P-256", password: bytes | None = None
) -> PublicKey:
    """Create an ECDSA key pair: the private key (PKCS#8 PEM, mode 0600) and its public key (PEM, 0644).

    Args:
        private_path: where the private key goes; must not exist.
        public_path: where the public key goes; must not exist.
        curve: ``P-256`` (default), ``P-384`` or ``P-521``.
        password: encrypt the private key with it (recommended outside tests).

    Raises:
        KeyFileError: a destination exists or cannot be written, or the curve is unknown.
    """
    if curve not in CURVES:
        raise KeyFileError(f"unknown curve {curve!r} (expected one of: {', '.join(CURVES)})")
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise KeyFileError("the private and public key paths must differ")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise KeyFileError(f"{path} already exists: refusing to overwrite a key (move it away first)")
    key = ec.generate_private_key(_CURVE_CLASSES[curve]())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem(key.public_key()), 0o644)
    except KeyFileError:
        private_path.unlink(missing_ok=True)  # no half-made pair left behind
        raise
    return key.public_key()

"""Signed checkpoints (tree heads) and the Ed25519 keys that sign them.

A checkpoint body is a short text, in the spirit of the C2SP ``tlog-checkpoint`` note, one field per line::

    mlwarden.audit/v1
    <tree size>
    <root hash, base64>
    <time, RFC 3339 UTC>
    <key id>

The signature is Ed25519 over those exact bytes (``cryptography``). The key id is the first 16 hex digits of the
SHA-256 of the raw public key, so a verifier can tell "signed by another key" from "signature does not match".
Private keys are PKCS#8 PEM files created with mode 0600, never overwritten, and refused when group- or
world-readable (as ssh does), because whoever reads the key can forge checkpoints.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mlwarden.registry.audit.errors import AuditKeyError
from mlwarden.registry.audit.events import format_timestamp

ORIGIN = "mlwarden.audit/v1"


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the log had ``tree_size`` entries with Merkle root ``root_hash`` at ``timestamp``."""

    tree_size: int
    root_hash: bytes
    timestamp: datetime
    key_id: str
    signature: bytes

    def body(self) -> bytes:
        """The exact bytes that were signed."""
        return checkpoint_body(self.tree_size, self.root_hash, self.timestamp, self.key_id)

    def signature_valid(self, public_key: Ed25519PublicKey) -> bool:
        """True when ``public_key`` signed this body (a different key id is simply False)."""
        if self.key_id != key_id(public_key):
            return False
        try:
            public_key.verify(self.signature, self.body())
        except InvalidSignature:
            return False
        return True

    def to_text(self) -> str:
        """The body followed by a signature line (``— <key id> <base64 signature>``), for export and display."""
        return self.body().decode() + f"\n\u2014 {self.key_id} {base64.b64encode(self.signature).decode()}\n"


def checkpoint_body(tree_size: int, root_hash: bytes, timestamp: datetime, key: str) -> bytes:
    """Canonical checkpoint body (see the module docstring)."""
    root = base64.b64encode(root_hash).decode()
    return f"{ORIGIN}\n{tree_size}\n{root}\n{format_timestamp(timestamp)}\n{key}\n".encode()


class CheckpointSigner:
    """An Ed25519 private key that signs checkpoint bodies."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        """Wrap a private key (see :meth:`load` and :meth:`generate` for key files)."""
        self._key = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def __repr__(self) -> str:
        return f"CheckpointSigner(key_id={self.key_id!r})"

    def sign(self, body: bytes) -> bytes:
        """Ed25519 signature of ``body``."""
        return self._key.sign(body)

    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM (what ``mlwarden audit verify --public-key`` reads)."""
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def generate(cls, path: Path | str, public_path: Path | str | None = None) -> CheckpointSigner:
        """Create a new key at ``path`` (mode 0600) and its public key at ``public_path`` (default ``.pub``).

        Raises:
            AuditKeyError: either file exists already (keys are never overwritten), or cannot be written.
        """
        path = Path(path)
        public = Path(public_path) if public_path is not None else path.with_suffix(".pub")
        for target in (path, public):
            if target.exists():
                raise AuditKeyError(f"{target} exists already; refusing to overwrite a key (move it away first)")
        signer = cls(Ed25519PrivateKey.generate())
        pem = signer._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            public.parent.mkdir(parents=True, exist_ok=True)
            with public.open("xb") as handle:
                handle.write(signer.public_pem())
        except FileExistsError as exc:
            raise AuditKeyError(f"{exc.filename} appeared while the key was being written; not overwritten") from None
        except OSError as exc:
            raise AuditKeyError(f"cannot write audit key {exc.filename or path}: {exc.strerror or exc}") from None
        return signer

    @classmethod
    def load(cls, path: Path | str) -> CheckpointSigner:
        """Read an unencrypted PKCS#8 PEM Ed25519 private key.

        Raises:
            AuditKeyError: missing or unreadable file, readable by group or others, not PEM, or not Ed25519.
        """
        path = Path(path)
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except FileNotFoundError:
            raise AuditKeyError(f"audit signing key {path} does not exist") from None
        except OSError as exc:
            raise AuditKeyError(f"cannot read audit signing key {path}: {exc.strerror or exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditKeyError(f"audit signing key {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise AuditKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditKeyError(f"{path} holds a {type(key).__name__}; audit checkpoints need an Ed25519 key")
        return cls(key)


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM SubjectPublicKeyInfo, or a PEM private key, whose public half is used).

    Raises:
        AuditKeyError: missing or unreadable file, not PEM, or not Ed25519.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AuditKeyError(f"audit public key {path} does not exist") from None
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit public key {path}: {exc.strerror or exc}") from None
    try:
        key: object = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise AuditKeyError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{path} holds a {type(key).__name__}; audit checkpoints are signed with Ed25519")
    return key
